"""The message store: an append-only log of checksummed records in segment files.

The pieces, one concern each: segments.py (the files), index.py (what is live and where),
flusher.py (group commit, failed writes), recovery.py (replay and repair at start; the C
part is mq/_core/replay.pyx), compaction.py (reclaiming disk), arguments.py (how topology
arguments are kept), format.py and migration.py (the directory's format and its upgrade),
shutdown.py (whether the last run ended cleanly). This module joins them: the store's API
for the broker (messages and topology) and the upkeep of segments.
"""
from __future__ import annotations

import fcntl
import heapq
import itertools
import logging
import os
import time
from collections import deque
from typing import Any, Callable, Iterable, Iterator, Sequence

from mq._core import records as R
from mq._core.idmap import IdMap
from mq._core.message import Message
from mq._core.storecore import LogCore
from mq.store.arguments import encode_arguments
from mq.store.compaction import compact, copy_live, scan_piece
from mq.store.flusher import Flusher
from mq.store.format import StoreError, check_format
from mq.store.index import Index
from mq.store.recovery import Recovered, replay
from mq.store.segments import Segment, Tomb, segment_path
from mq.store.shutdown import leave_clean_marker, take_clean_marker

log = logging.getLogger("mq.store")

DEFAULT_SEGMENT_SIZE = 32 * 1024 * 1024
# A head segment that is nearly all dead is sealed early (and so compacted), so that a
# drained queue returns to (almost) no disk use without waiting for the segment to fill:
# at this size when the log is idle, at the larger one while records keep coming (fewer
# segment files and copies under load).
ROLL_HEAD_IDLE = 64 * 1024
ROLL_HEAD_BUSY = 4 * 1024 * 1024
ROLL_HEAD_RATIO = 1 / 16
COMPACT_RATIO = 0.25  # compact a sealed segment when less than this share of it is live
# With the flusher thread (a broker), compaction never holds the event loop for long
# (B-DUR-9): the segment is read in a worker thread, then its records are scanned and the
# live ones copied on the loop in slices of about this many seconds, a piece
# (compaction.PIECE bytes) at a time. A slice runs once per loop turn, so under load it
# takes slice / (slice + the turn's other work) of the loop: 4 ms took about 40 % of a busy
# loop for the ~0.3 s a 32 MB segment takes, and publishers fell behind (DL1 p99 lateness
# 155-215 ms at 13k delayed msg/s; 21-39 ms with 1 ms).
COMPACT_SLICE = 0.001
# Compaction starts this long after a segment is found mostly dead: messages still in
# flight when it was sealed are settled by then, and a segment that became all dead is
# removed without reading and copying it (under a steady load with acks, every one).
COMPACT_DELAY = 1.0
# Paged-out messages are read back with one pread per run of records this long at most,
# skipping over at most READ_GAP bytes of other records between two of them.
READ_RUN = 1024 * 1024
READ_GAP = 64 * 1024
# Work too big for one loop turn (letting a deleted queue's messages go, and the tombstones
# a removed segment kept live; writing a purge's acks) runs this many µs of it a turn, by the
# costs below (measured: deleting a queue or delayed exchange that held 1M held the loop for
# 0.8 s in one go, a purge of 1M 3 s). Small, as compaction's slice: DL1 at 13k msg/s had
# p99 lateness 9.6-10.7 ms with 5 ms slices, 5.0-6.1 ms with 2 ms.
SLICE_US = 2_000
DROP_US = 1         # a deleted queue's message let go (about 0.8 µs)
UNPIN_US = 1        # a tombstone a removed segment kept live, let go (about 1 µs)
ACK_US = 3          # an ack written (about 2.7 µs)
READ_BACK_US = 2_500  # a chunk (1 MiB) of a purged queue's paged-out ids read back


class Store(LogCore):
    """The log in `directory`. Call open() (returns what was recovered), then start(loop)
    for the background flusher, or sync() to flush synchronously (tests, tools).

    Nothing here blocks the event loop on the disk (B-DUR-9): appends go to the flusher's
    memory, and what must wait for the disk (confirms, tx.commit-ok, declare-ok) asks
    when_durable() or sits in `waiters`. A failed write (B-DUR-8) sets `failed` until a write
    succeeds again: waiters are failed at once and on_failure(error) / on_failure(None) tell
    the broker (its disk alarm)."""

    def __init__(self, directory: str, segment_size: int = DEFAULT_SEGMENT_SIZE) -> None:
        self.directory = directory
        self.segment_size = segment_size
        self.durable_seq = 0   # every record up to this one may be confirmed
        self.local_seq = 0     # every record up to this one is on this disk (fsynced)
        # In a cluster's leader (mq.cluster.leader.Replicator): the stream to the followers,
        # and how far they have fsynced; a record is durable once it is here and there.
        self.replication: Any = None
        # Objects with store_durable(seq) -> still waiting, and store_failed(error).
        self.waiters: set[Any] = set()
        # Objects told durable(seq) at every advance, for as long as they exist (streams'
        # logs: their readers see what is durable).
        self._watchers: list[Any] = []
        # Called first by close(): small files with a save pending write it (KeptFile).
        self.closing: set[Callable[[], None]] = set()
        self.topo_seq = 0      # sequence of the last topology record (declare, bind, delete)
        # The last write failed with this error (the flusher retries); None: writes work.
        self.failed: BaseException | None = None
        self.on_failure: Callable[[BaseException | None], None] | None = None
        self._durable_waits: list[tuple[int, int, Callable]] = []  # heap: (seq, n, callback)
        self._wait_ids = itertools.count()
        self._loop: Any = None
        self._compact_queue: deque[Segment] = deque()
        self._compaction: _Compaction | None = None
        self._compaction_timer: Any = None  # COMPACT_DELAY before the queue is worked on
        self._dropping = 0  # deleted queues whose messages are still being let go
        self._acking: list[Iterator[int]] = []  # purges' acks being written (close() ends them)
        self._index = Index()
        self._flusher = Flusher()
        self._head: Segment | None = None
        self._next_id = 1
        self._lock_fd: int | None = None

    # ---- opening ------------------------------------------------------------------------

    def open(self) -> Recovered:
        os.makedirs(self.directory, exist_ok=True)
        check_format(self.directory)
        self._lock()
        seg_dir = os.path.join(self.directory, "log")
        os.makedirs(seg_dir, exist_ok=True)
        numbers = sorted(int(n[:-4]) for n in os.listdir(seg_dir)
                         if n.endswith(".seg") and n[:-4].isdigit())
        clean = take_clean_marker(self.directory)
        # Bodies stay on disk: queues read back those they keep in memory (read_message).
        recovered = replay(self.directory, numbers, self._index, self.read_message, clean)
        self._next_id = recovered.next_id
        segments = self._index.segments
        last = max(segments, default=0)
        if last and segments[last].size < self.segment_size:
            self._head = segments[last]
        else:
            self._head = self._new_segment(last + 1)
        return recovered

    def _lock(self) -> None:
        self._lock_fd = os.open(os.path.join(self.directory, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise StoreError(f"data directory {self.directory} is in use by another mq") from None

    def _new_segment(self, number: int) -> Segment:
        seg = Segment(number, segment_path(self.directory, number))
        self._index.segments[number] = seg
        return seg

    # ---- appending ----------------------------------------------------------------------

    # ---- messages (enqueue, delivered, ack: LogCore's) ---------------------------------

    def read_message(self, mid: int) -> Message:
        """A stored message, with its body, read back from the log (for a queue that kept
        only its id in memory)."""
        return self.read_messages([mid])[0]

    def read_messages(self, mids: list[int]) -> list[Message]:
        """Stored messages read back from the log, in the order asked. Records that lie
        close together in one segment (a backlog's, written in turn) are read with one
        pread per run of up to READ_RUN bytes, not one per message."""
        msgs = self._index.msgs
        places = []
        for mid in mids:
            m = msgs[mid]
            places.append((m >> 32, m & 0xFFFFFFFF, mid))
        out: dict[int, Message] = {}
        order = sorted(places)
        i = 0
        while i < len(order):
            location, size, _ = order[i]
            seg_no, start = location >> 32, location & 0xFFFFFFFF
            end, j = start + size, i + 1
            while j < len(order) and order[j][0] >> 32 == seg_no:
                off = order[j][0] & 0xFFFFFFFF
                if off + order[j][1] - start > READ_RUN or off - end > READ_GAP:
                    break
                end = max(end, off + order[j][1])
                j += 1
            seg = self._index.segments[seg_no]
            # (rare: wanted before it was fsynced: each record from the flusher's memory)
            data = seg.read(end - start, start) if end <= seg.flushed else None
            for location, size, mid in order[i:j]:
                off = location & 0xFFFFFFFF
                if data is None:
                    record = self._flusher.pending(seg, off, size) or seg.read(size, off)
                else:
                    record = data[off - start:off - start + size]
                f = R.scan(record)[0][0][2]
                full = Message(f[2], f[3], f[4], f[5])
                full.store_id = mid
                out[mid] = full
            i = j
        return [out[mid] for mid in mids]

    # ---- topology -----------------------------------------------------------------------

    def _declare(self, rtype: int, key: tuple, flags: int, strings: tuple, arguments: Any) -> int:
        self._forget(key)
        obj_id = self._new_id()
        data = R.topology_record(rtype, obj_id, flags, strings, encode_arguments(arguments))
        seg, off = self._append(data)
        self._index.put_topo(obj_id, key, seg, off, len(data))
        self._topology_written()
        return obj_id

    def _forget(self, key: tuple) -> None:
        """Delete a topology object (a queue with its messages) if the store has it."""
        index = self._index
        obj_id = index.ids.pop(key, None)
        if obj_id is None:
            return
        location, size, _ = index.topo.pop(obj_id)
        index.dead(location, size)
        self._tombstone(R.delete_record(obj_id), location)
        # Compaction waits meanwhile (_dropping): the records are not live, but still
        # counted so until they are let go.
        self._dropping += 1
        self._in_slices(self._drops(obj_id, index.queues.pop(obj_id, None) or {}),
                        lambda later: self._dropped(obj_id, later))
        self._topology_written()

    def _drops(self, qid: int, entries: Any) -> Iterator[int]:
        for mid, enq_loc in entries.items():
            self._index.drop_entry(qid, mid, enq_loc)
            yield DROP_US

    def _dropped(self, qid: int, later: bool) -> None:
        """A deleted queue's messages are all let go. If that took more than this turn,
        what is all dead now goes (no flush may come to do it)."""
        self._index.dlvs.pop(qid, None)
        self._dropping -= 1
        if later:
            self._maintain()

    def ack_all(self, qid: int, chunks: Iterable[Sequence[int]]) -> None:
        """Many messages left queue qid at once (a purge), their ids given in chunks (each
        taken when it is reached): the acks are written a slice at a time, the rest at
        close()."""
        acks = self._acks(qid, chunks)
        self._acking.append(acks)
        self._in_slices(acks, lambda later: self._acking.remove(acks))

    def _acks(self, qid: int, chunks: Iterable[Sequence[int]]) -> Iterator[int]:
        try:
            for chunk in chunks:
                yield READ_BACK_US
                for mid in chunk:
                    self.ack(qid, mid)
                    yield ACK_US
        except OSError as exc:  # paged-out ids that cannot be read back
            log.warning("store: a purge of queue %d could not read all its messages back "
                        "(%s); those come back after a restart", qid, exc)

    def _in_slices(self, work: Iterator[int], then: Callable[[bool], None] | None = None,
                   later: bool = False) -> None:
        """Run work too big for one loop turn (B-DUR-9): each step of the iterator does a
        piece and yields what it cost in µs; SLICE_US of it runs a loop turn (all of it at
        once without a loop), then then(later) is called (later: not in the first turn)."""
        if self._lock_fd is None:
            return  # closed: close() ended what had to be ended
        spent = 0
        for cost in work:
            spent += cost
            if spent >= SLICE_US and self._loop is not None:
                self._loop.call_soon(self._in_slices, work, then, True)
                return
        if then is not None:
            then(later)

    def _topology_written(self) -> None:
        """A topology record was appended. With the flusher thread the caller waits with
        when_durable() before it answers; without it (tools, unit tests) it is made durable
        now, as a declare-ok would need."""
        self.topo_seq = self.seq
        if not self._flusher.running:
            self.sync()

    def declare_queue(self, vhost: str, name: str, auto_delete: bool, arguments: dict) -> int:
        """Record a durable queue; returns its queue id for enqueue/ack."""
        qid = self._declare(R.QUEUE, ("q", vhost, name), int(auto_delete), (vhost, name),
                            arguments)
        self._index.queues[qid] = IdMap()
        return qid

    def delete_queue(self, vhost: str, name: str) -> None:
        self._forget(("q", vhost, name))

    def declare_exchange(self, vhost: str, name: str, type_: str, auto_delete: bool,
                         internal: bool, arguments: dict) -> None:
        self._declare(R.EXCHANGE, ("x", vhost, name), int(auto_delete) | int(internal) << 1,
                      (vhost, name, type_), arguments)

    def delete_exchange(self, vhost: str, name: str) -> None:
        self._forget(("x", vhost, name))

    @staticmethod
    def _binding_key(vhost: str, source: str, to_exchange: bool, destination: str,
                     routing_key: str, arguments: dict | None) -> tuple:
        return ("b", vhost, source, to_exchange, destination, routing_key,
                encode_arguments(arguments))

    def bind(self, vhost: str, source: str, to_exchange: bool, destination: str,
             routing_key: str, arguments: dict | None) -> None:
        key = self._binding_key(vhost, source, to_exchange, destination, routing_key, arguments)
        if key not in self._index.ids:
            self._declare(R.BINDING, key, int(to_exchange),
                          (vhost, source, destination, routing_key), arguments)

    def unbind(self, vhost: str, source: str, to_exchange: bool, destination: str,
               routing_key: str, arguments: dict | None) -> None:
        self._forget(self._binding_key(vhost, source, to_exchange, destination, routing_key,
                                       arguments))

    # ---- flushing -----------------------------------------------------------------------

    def start(self, loop: Any) -> None:
        """Run the flusher thread; completions and failures are reported on `loop`."""
        self._loop = loop
        self._flusher.replica = self.replication
        self._flusher.start(loop, self._flushed, self._failure)

    def when_durable(self, callback: Callable[[BaseException | None], None],
                     seq: int | None = None) -> None:
        """callback(None) once every record up to seq (default: everything appended so far)
        is on disk, or callback(error) if a write fails first (B-DUR-8). Never blocks the
        loop (B-DUR-9): with the flusher thread it is called on the loop when the flusher
        reports, or right now when seq is durable already or writes are failing; without
        the thread (Store.sync() mode) the log is flushed now and it is called right now."""
        if seq is None:
            seq = self.seq
        if seq <= self.durable_seq:
            callback(None)
        elif not self._flusher.running:
            try:
                self.sync()
            except OSError as exc:
                callback(exc)
            else:
                callback(None)
        elif self.failed is not None:
            callback(self.failed)
        else:
            heapq.heappush(self._durable_waits, (seq, next(self._wait_ids), callback))

    def sync(self) -> None:
        """Write and fsync everything appended so far, in the caller's thread (no flusher)."""
        self._flushed(self._flusher.sync())

    def _flushed(self, seq: int) -> None:
        """On the loop: records up to seq are on disk. Tell waiters, then tidy segments."""
        if seq > self.local_seq:
            self.local_seq = seq
        self.release()
        if self.seq == self.local_seq and self._head is not None:
            self._index.dirty.add(self._head)  # idle: a mostly dead head may be sealed now
        self.caught_up()
        self._maintain()

    def release(self) -> None:
        """Tell those waiting what is durable now: on this disk, and in a cluster on every
        in-sync follower's too (the replication calls this when they ack)."""
        seq = self.local_seq
        if self.replication is not None:
            seq = self.replication.confirmable(seq)
        if seq <= self.durable_seq:
            return
        self.durable_seq = seq
        for waiter in list(self.waiters):
            if not waiter.store_durable(seq):
                self.waiters.discard(waiter)
        waits = self._durable_waits
        while waits and waits[0][0] <= seq:
            _call(heapq.heappop(waits)[2], None)
        for watcher in self._watchers:
            watcher.durable(seq)

    def watch(self, watcher: Any) -> None:
        self._watchers.append(watcher)

    def unwatch(self, watcher: Any) -> None:
        self._watchers.remove(watcher)

    def append_to(self, seg: Segment, off: int, data: bytes) -> None:
        """Append data at off (its end) to a segment other than the log's (a stream's),
        in the log's group commit: durable at the store sequence it gets (`seq`)."""
        self._flusher.submit(seg, off, data)

    def remove_file(self, seg: Segment) -> None:
        """Remove such a segment once everything appended before is durable."""
        self._flusher.unlink(seg)

    def file_written(self, relpath: str, data: bytes, callback: Callable[[], None]) -> None:
        """A small file of the data directory (access.json) was written anew: callback()
        once it is durable, here (already) and on the in-sync followers."""
        if self.replication is None:
            callback()
        else:
            self.replication.when_replicated(self.replication.replaced(relpath, data),
                                             callback)

    def _failure(self, exc: BaseException | None) -> None:
        """On the loop: a write failed (B-DUR-8; the flusher keeps the records and retries),
        or, with None, writes work again. Whatever waits for the disk is failed now:
        publishes are nacked, commits and declares get the error."""
        if exc is None:
            if self.failed is None:
                return
            self.failed = None
        else:
            first = self.failed is None
            self.failed = exc
            for waiter in list(self.waiters):
                _call(waiter.store_failed, exc)
            self.waiters.clear()
            waits, self._durable_waits = self._durable_waits, []
            for _, _, callback in sorted(waits):
                _call(callback, exc)
            if not first:
                return
        if self.on_failure is not None:
            self.on_failure(exc)

    def close(self) -> None:
        """Flush everything, stop the flusher, release the directory."""
        for save in list(self.closing):
            save()
        if self._lock_fd is not None:
            for acks in self._acking:
                for _ in acks:
                    pass
        self._compaction = None
        self._compact_queue.clear()
        if self._compaction_timer is not None:
            self._compaction_timer.cancel()
            self._compaction_timer = None
        self.local_seq = max(self.local_seq, self._flusher.close())
        if self.replication is None:
            self.durable_seq = self.local_seq
        for seg in self._index.segments.values():
            seg.close()
            seg.tombs.clear()  # (a tombstone holds its segment, untracked by the collector)
        self._index.segments.clear()
        if self._flusher.failed is None and self._lock_fd is not None:
            leave_clean_marker(self.directory)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # ---- reclaiming disk ----------------------------------------------------------------

    def _maintain(self) -> None:
        """Remove segments with nothing live; compact sealed ones that are mostly dead."""
        index = self._index
        waiting = []
        while index.dirty:
            seg = index.dirty.pop()
            if index.segments.get(seg.number) is not seg or seg.compacting:
                continue
            if seg.last_seq > self.local_seq:
                waiting.append(seg)  # not all on disk yet: look again after the next flush
                continue
            if seg is self._head:
                limit = ROLL_HEAD_IDLE if self.seq == self.local_seq else ROLL_HEAD_BUSY
                if seg.size < limit or seg.live_bytes > seg.size * ROLL_HEAD_RATIO:
                    continue
                self._head = self._new_segment(seg.number + 1)
            if seg.live_count and seg.live_bytes < seg.size * COMPACT_RATIO:
                if self._loop is not None:
                    self._compact_later(seg)
                    continue
                compact(seg, _read_file(seg.path), index, self._append)
                if seg.live_count:
                    self._keep_damaged(seg)
                    continue
            if not seg.live_count:
                self._remove(seg)
        index.dirty.update(waiting)

    def _remove(self, seg: Segment) -> None:
        del self._index.segments[seg.number]
        self._index.dirty.discard(seg)
        self._flusher.unlink(seg)
        # A drained segment may pin hundreds of thousands of acks.
        pins, seg.pins = seg.pins, []
        self._in_slices(self._unpins(pins))

    def _unpins(self, pins: list[Tomb]) -> Iterator[int]:
        for tomb in pins:
            self._index.unpin(tomb)
            yield UNPIN_US

    # Compaction on the loop (B-DUR-9). One segment at a time; a segment queued or being
    # compacted is marked (Segment.compacting) so that it is neither removed nor compacted
    # twice meanwhile. Between slices the index changes (acks, deletes, other removals), so
    # each record is judged live when its slice runs (compaction.copy_live).

    def _compact_later(self, seg: Segment) -> None:
        seg.compacting = True
        self._compact_queue.append(seg)
        if self._compaction is None and self._compaction_timer is None:
            self._compaction_timer = self._loop.call_later(COMPACT_DELAY, self._start_compaction)

    def _start_compaction(self) -> None:
        self._compaction_timer = None
        if self._compaction is None and self._lock_fd is not None:
            self._next_compaction()

    def _next_compaction(self) -> None:
        self._compaction = None
        if self._dropping and self._compact_queue:  # live counts not final: look later
            self._compaction_timer = self._loop.call_later(COMPACT_DELAY,
                                                           self._start_compaction)
            return
        while self._compact_queue:
            seg = self._compact_queue.popleft()
            if self._index.segments.get(seg.number) is not seg:
                seg.compacting = False
                continue
            if not seg.live_count:  # all dead while it waited
                seg.compacting = False
                self._remove(seg)
                continue
            job = self._compaction = _Compaction(seg)
            future = self._loop.run_in_executor(None, _read_file, seg.path)
            future.add_done_callback(lambda f, job=job: self._compaction_read(job, f))
            return

    def _compaction_read(self, job: _Compaction, future: Any) -> None:
        if self._compaction is not job:
            return  # the store closed meanwhile
        try:
            job.data = future.result()
        except Exception as exc:
            log.warning("store: compaction of %s skipped: %s", job.seg.path, exc)
            job.seg.compacting = False
            self._index.dirty.add(job.seg)
            self._next_compaction()
            return
        self._compaction_step(job)

    def _compaction_step(self, job: _Compaction) -> None:
        """Scan and copy for about COMPACT_SLICE seconds, then yield to the loop."""
        if self._compaction is not job:
            return
        deadline = time.perf_counter() + COMPACT_SLICE
        data, seg = job.data, job.seg
        while job.pos < len(data):
            entries, job.pos = scan_piece(data, job.pos)
            copy_live(seg, data, entries, self._index, self._append)
            if time.perf_counter() >= deadline and job.pos < len(data):
                self._loop.call_soon(self._compaction_step, job)
                return
        if self._dropping:  # a queue deleted meanwhile: its records still count as live
            self._loop.call_later(COMPACT_SLICE * 10, self._compaction_step, job)
            return
        if seg.live_count:
            self._keep_damaged(seg)
        else:
            seg.compacting = False
            self._remove(seg)
        self._next_compaction()

    def _keep_damaged(self, seg: Segment) -> None:
        """Compaction read all of seg and missed live records: they were damaged on disk after
        they were written. Removing seg would lose them; it stays (not compacted again) until
        the next start repairs it (recovery.py)."""
        seg.compacting = True
        log.error("store: %d live records of %s (%d bytes) were not found when it was read back "
                  "for compaction: the file was damaged after it was written. It is kept; the "
                  "next start repairs it and logs what was lost", seg.live_count, seg.path,
                  seg.live_bytes)

    # ---- inspection ---------------------------------------------------------------------

    def disk_usage(self) -> int:
        """Bytes in segment files (as appended; the flusher may still be writing some)."""
        return sum(seg.size for seg in self._index.segments.values())


class _Compaction:
    """A segment being compacted: its bytes (once read) and how far the scan got."""

    __slots__ = ("seg", "data", "pos")

    def __init__(self, seg: Segment) -> None:
        self.seg = seg
        self.data = b""
        self.pos = 0


def _read_file(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def _call(callback: Callable[[BaseException | None], None], arg: BaseException | None) -> None:
    """Tell a waiter; its failure is its own (logged), never the store's."""
    try:
        callback(arg)
    except Exception:
        log.exception("store: a durability callback failed")
