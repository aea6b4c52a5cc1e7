# cython: language_level=3
"""The ready-message structure of a queue: one FIFO per priority level.

Publish is O(1); pop looks at the levels from the highest non-empty one down, so it is
O(levels) at worst and O(1) for a plain queue (one level). A requeued message goes back to
its level at its original place (entries carry a publish sequence number).
"""
cimport cython
from collections import deque
from heapq import heapify, heappop, heappush

from mq._core.message cimport Message


@cython.no_gc  # holds a Message and numbers: never in a cycle (see message.pyx)
cdef class Entry:
    """A message as held by one queue: the per-queue state around a shared Message."""

    def __cinit__(self, Message msg, long long seq, int level, double expires_at):
        self.msg = msg
        self.seq = seq
        self.level = level
        self.expires_at = expires_at
        self.redelivered = False
        self.removed = False
        self.delivery_count = 0


cdef class MessageQueue:
    """Ready messages of one queue, by priority level, each level in publish order."""

    def __cinit__(self, int max_priority=0):
        if max_priority < 0 or max_priority > 255:
            raise ValueError("max_priority must be within 0..255")
        self.max_priority = max_priority
        self._levels = [deque() for _ in range(max_priority + 1)]
        self._top = 0
        self._seq = 0
        self._deadlines = []
        self._holes = 0
        self.count = 0
        self.bytes = 0

    def __len__(self) -> int:
        return self.count

    cdef inline int _level_of(self, Message msg):
        return msg.priority if msg.priority < self.max_priority else self.max_priority

    cpdef Entry push(self, Message msg, double expires_at=0.0):
        """Append a newly published message; returns its entry."""
        cdef int level = self._level_of(msg) if self.max_priority else 0
        self._seq += 1
        cdef Entry e = Entry(msg, self._seq, level, expires_at)
        (<object>self._levels[level]).append(e)
        if level > self._top:
            self._top = level
        self.count += 1
        self.bytes += len(msg.body)
        if expires_at:
            self._track(e)
        return e

    cdef void _track(self, Entry e):
        """Remember an entry's deadline. Entries delivered since are left in the heap (lazy)
        and requeues add duplicates: once the heap is over twice the ready count they are
        swept out, so a long TTL never keeps delivered messages alive (amortised O(1))."""
        heappush(self._deadlines, (e.expires_at, e.seq, e))
        if len(self._deadlines) > 2 * self.count + 64:
            self._compact()

    cdef void _compact(self):
        cdef list live = []
        cdef set seen = set()
        cdef Entry e
        for item in self._deadlines:
            e = item[2]
            if not e.removed and e.seq not in seen:
                seen.add(e.seq)
                live.append(item)
        heapify(live)
        self._deadlines = live

    cdef Entry _take_first(self, object q):
        """Pop the first live entry of one level (skipping lazily removed ones), or None."""
        cdef Entry e
        while q:
            e = q.popleft()
            if e.removed:
                self._holes -= 1
                continue
            e.removed = True
            self.count -= 1
            self.bytes -= len(e.msg.body)
            return e
        return None

    cpdef Entry pop(self):
        """Remove and return the next message to deliver, or None."""
        cdef Entry e
        while self._top >= 0:
            e = self._take_first(self._levels[self._top])
            if e is not None:
                return e
            if self._top == 0:
                break
            self._top -= 1
        return None

    cpdef Entry peek(self):
        """The next message to deliver without removing it, or None."""
        cdef Entry e
        cdef int level = self._top
        cdef object q
        while level >= 0:
            q = self._levels[level]
            while q:
                e = q[0]
                if not e.removed:
                    return e
                q.popleft()
                self._holes -= 1
            level -= 1
        return None

    cpdef void remove(self, Entry e):
        """Take a ready entry out in O(1); its slot is skipped lazily later, and the slots
        are swept once they outnumber the ready entries (an expired message far from the
        head must not stay in memory until the head reaches it)."""
        if not e.removed:
            e.removed = True
            self.count -= 1
            self.bytes -= len(e.msg.body)
            self._holes += 1
            if self._holes > self.count + 64:
                self._sweep_levels()

    cdef void _sweep_levels(self):
        cdef Py_ssize_t i
        for i in range(len(self._levels)):
            self._levels[i] = deque([e for e in self._levels[i] if not (<Entry>e).removed])
        self._holes = 0

    def requeue(self, entries) -> None:
        """Put delivered entries back at their original places, marked redelivered."""
        cdef Entry e, head
        cdef object q
        cdef Py_ssize_t lo, hi, mid
        for e in sorted(entries, key=_seq_key, reverse=True):
            e.redelivered = True
            e.removed = False
            q = self._levels[e.level]
            if not q or (<Entry>q[0]).seq > e.seq:
                q.appendleft(e)
            else:
                # Rare: newer-than-head entry (e.g. requeued while older ones wait). Keep
                # the level ordered by sequence with a binary search.
                lo, hi = 0, len(q)
                while lo < hi:
                    mid = (lo + hi) // 2
                    if (<Entry>q[mid]).seq < e.seq:
                        lo = mid + 1
                    else:
                        hi = mid
                q.insert(lo, e)
            if e.level > self._top:
                self._top = e.level
            self.count += 1
            self.bytes += len(e.msg.body)
            if e.expires_at:
                self._track(e)

    def purge(self) -> list:
        """Remove every ready message; returns the removed entries."""
        cdef list out = []
        cdef Entry e
        for q in self._levels:
            for e in q:
                if not e.removed:
                    e.removed = True
                    out.append(e)
            q.clear()
        self._deadlines = []
        self._holes = 0
        self._top = 0
        self.count = 0
        self.bytes = 0
        return out

    def expire_due(self, double now) -> list:
        """Remove and return every ready entry whose deadline is at or before now."""
        cdef list out = []
        cdef Entry e
        while self._deadlines and self._deadlines[0][0] <= now:
            e = heappop(self._deadlines)[2]
            if not e.removed:
                self.remove(e)
                out.append(e)
        return out

    def next_deadline(self) -> float:
        """The earliest deadline of a ready entry, or 0.0 when none has one."""
        while self._deadlines and (<Entry>self._deadlines[0][2]).removed:
            heappop(self._deadlines)
        return self._deadlines[0][0] if self._deadlines else 0.0

    def __iter__(self):
        """Ready entries in delivery order (for inspection and persistence, not the hot path)."""
        cdef int level
        for level in range(self.max_priority, -1, -1):
            for e in self._levels[level]:
                if not (<Entry>e).removed:
                    yield e


def _seq_key(Entry e):
    return e.seq
