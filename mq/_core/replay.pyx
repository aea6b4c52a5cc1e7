# cython: language_level=3
"""Replay of the store's log at start, in C (mq/store/recovery.py drives it).

A restart with a million messages reads two million records; turning each into a tuple of
fields and handling it in Python took seconds. Here each intact record is checked (magic,
length, CRC) and applied to the replay's tables directly: IdMaps (mq._core.idmap), so no
object is made per record, and a million messages cost tens of MB rather than hundreds.
What it does not handle itself it hands back: topology records (few) are decoded by
mq._core.records, and a segment with a bad record is left to the caller to repair
(records.scan knows where the damage is) before it is applied.

The tables follow the log's semantics (see records.pyx for the layout): a later record of
the same message or queue entry (a compaction copy) replaces an earlier one; an ACK removes
an entry, a DELETE a topology object, and each becomes a tombstone when what it cancels lies
in another segment.
"""
from array import array

from cpython.bytes cimport PyBytes_AS_STRING
from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport qsort
from libc.string cimport memcpy

from mq._core import records as R
from mq._core.idmap cimport IdMap

cdef extern from "zlib.h":
    unsigned long crc32(unsigned long crc, const unsigned char *buf, unsigned int len) nogil

DEF HDR = 12
DEF MSG = 1
DEF ENQ = 2
DEF DLV = 3
DEF ACK = 4
DEF DELETE = 8
DEF F_CONTENT_TYPE = 0x8000
DEF F_CONTENT_ENCODING = 0x4000
DEF F_HEADERS = 0x2000
DEF F_DELIVERY_MODE = 0x1000
DEF F_PRIORITY = 0x0800


cdef inline unsigned long long _get32(const unsigned char *p) noexcept:
    return (<unsigned long long>p[0] << 24) | (<unsigned long long>p[1] << 16) | \
        (<unsigned long long>p[2] << 8) | p[3]


cdef inline unsigned long long _get64(const unsigned char *p) noexcept:
    return (_get32(p) << 32) | _get32(p + 4)


cdef inline bint _magic_at(const unsigned char *p) noexcept:
    return p[0] == 0xFE and p[1] == 0xED and p[2] == 0x6D and p[3] == 0x71


cdef int _priority(const unsigned char *p, Py_ssize_t n) noexcept:
    """The priority property in encoded properties p[:n] (0 when absent or unreadable)."""
    cdef unsigned int flags
    cdef Py_ssize_t off = 2
    if n < 2:
        return 0
    flags = (p[0] << 8) | p[1]
    if not flags & F_PRIORITY:
        return 0
    if flags & F_CONTENT_TYPE:
        if off >= n:
            return 0
        off += 1 + p[off]
    if flags & F_CONTENT_ENCODING:
        if off >= n:
            return 0
        off += 1 + p[off]
    if flags & F_HEADERS:
        if off + 4 > n:
            return 0
        off += 4 + <Py_ssize_t>_get32(p + off)
    if flags & F_DELIVERY_MODE:
        off += 1
    return p[off] if off < n else 0


cdef class Replay:
    """The log's records, segment by segment, reduced to what is live at the end."""

    cdef readonly IdMap msgs     # msg id -> location << 32 | record size (the index's own)
    cdef readonly IdMap info     # msg id -> body size << 8 | priority: what a queue needs of
                                 # a message it pages out
    cdef readonly dict enqs      # queue id -> IdMap msg id -> ENQ location
    cdef readonly dict expires   # queue id -> IdMap msg id -> expiry (a double's bits), only
                                 # where there is one
    cdef readonly dict dlvs      # queue id -> IdMap msg id -> DLV location
    cdef readonly dict topo      # object id -> (location, size, fields)
    cdef readonly list tombs     # (location, size, segment number of what it cancels)
    cdef readonly unsigned long long max_id
    cdef readonly Py_ssize_t lost       # queue entries whose message record was damaged
    cdef unsigned long long _last_qid   # ENQs come in runs for one queue: its table, cached
    cdef IdMap _last_enqs

    def __cinit__(self):
        self.msgs = IdMap(wide=True)
        self.info = IdMap()
        self.enqs = {}
        self.expires = {}
        self.dlvs = {}
        self.topo = {}
        self.tombs = []
        self.max_id = 0
        self.lost = 0

    def feed(self, bytes data, unsigned long long number) -> bint:
        """Apply the records of segment `number` (its whole file in data). When any part of
        it is not an intact record, nothing is applied and the result is False: the caller
        repairs the segment (records.scan finds the damage) and feeds it again."""
        if not self._walk(data, number, True):
            return False
        self._walk(data, number, False)
        return True

    cdef bint _walk(self, bytes data, unsigned long long number, bint check) except -1:
        """Check (check: true) or apply every record of data; False at the first bad one."""
        cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(data)
        cdef Py_ssize_t size = len(data), off = 0, n
        cdef unsigned long long base = number << 32
        while off < size:
            if size - off < HDR or not _magic_at(p + off):
                return False
            n = <Py_ssize_t>_get32(p + off + 4)
            if check:
                if n < 1 or n > size - off - HDR or \
                        crc32(0, p + off + HDR, <unsigned int>n) != _get32(p + off + 8):
                    return False
            if not self._apply(p + off + HDR, n, base | <unsigned long long>off, data, off,
                               check):
                return False
            off += HDR + n
        return True

    cdef bint _apply(self, const unsigned char *p, Py_ssize_t n, unsigned long long loc,
                     bytes data, Py_ssize_t off, bint check) except -1:
        """One intact record (p: its type byte; n: type + payload). False when its payload
        does not match its type (then it counts as damaged). With check, only that."""
        cdef int rtype = p[0]
        cdef unsigned long long a, b, info, size = HDR + n
        cdef Py_ssize_t pos, props_len
        cdef double when
        cdef unsigned long long bits
        cdef IdMap entries
        cdef Py_ssize_t i
        if rtype == MSG:
            if n < 11:
                return False
            a = _get64(p + 1)
            pos = 9
            pos += 1 + p[pos]                     # exchange
            if pos >= n:
                return False
            pos += 1 + p[pos]                     # routing key
            if pos + 4 > n:
                return False
            props_len = <Py_ssize_t>_get32(p + pos)
            pos += 4
            if pos + props_len > n:
                return False
            if check:
                return True
            info = <unsigned long long>(n - pos - props_len) << 8 | _priority(p + pos, props_len)
            self.msgs.put(a, <int64_t>loc, <unsigned int>size)
            self.info.put(a, <int64_t>info, 0)
            self._saw(a)
            return True
        if rtype == ENQ or rtype == DLV or rtype == ACK:
            if n != (25 if rtype == ENQ else 17):
                return False
            if check:
                return True
            a, b = _get64(p + 1), _get64(p + 9)
            self._saw(a)
            self._saw(b)
            if rtype == ENQ:
                if self._last_enqs is not None and self._last_qid == a:
                    entries = self._last_enqs
                else:
                    entries = self.enqs.get(a)
                    if entries is None:
                        entries = self.enqs[a] = IdMap()
                    self._last_qid, self._last_enqs = a, entries
                entries.put(b, <int64_t>loc, 0)
                bits = _get64(p + 17)
                memcpy(&when, &bits, 8)
                if when:
                    entries = self.expires.get(a)
                    if entries is None:
                        entries = self.expires[a] = IdMap()
                    entries.put(b, <int64_t>bits, 0)
            elif rtype == DLV:
                entries = self.dlvs.get(a)
                if entries is None:
                    entries = self.dlvs[a] = IdMap()
                entries.put(b, <int64_t>loc, 0)
            else:
                entries = self.enqs.get(a)
                i = entries.find(b) if entries is not None else -1
                if i >= 0:
                    target = <unsigned long long>entries.slots[i].value
                    entries.delete_at(i)
                    if target >> 32 != loc >> 32:
                        self.tombs.append((loc, size, target >> 32))
            return True
        if rtype == DELETE:
            if n != 9:
                return False
            if check:
                return True
            a = _get64(p + 1)
            self._saw(a)
            put = self.topo.pop(a, None)
            if put is not None and (<unsigned long long>put[0]) >> 32 != loc >> 32:
                self.tombs.append((loc, size, (<unsigned long long>put[0]) >> 32))
            return True
        # Topology: decoded by the records module (it knows their strings and tables).
        found = R.scan(data[off:off + HDR + n])[0]
        if not found:
            return False
        if check:
            return True
        fields = found[0][2]
        self._saw(fields[1])
        self.topo[fields[1]] = (loc, size, fields)
        return True

    cdef inline void _saw(self, unsigned long long an_id) noexcept:
        if an_id > self.max_id:
            self.max_id = an_id

    def queue(self, unsigned long long qid, IdMap msgs, IdMap shared, long long[:] counts,
              unsigned long long first) -> tuple:
        """The live entries of queue qid in message-id (arrival) order. Enters its messages
        in the index's msgs and shared tables and counts every live record in counts (live
        records and bytes per segment, segment k at [2 * (k - first)] and [2 * (k - first) + 1]).
        Returns (entries: msg id -> ENQ location, delivered: msg id -> DLV location, ids,
        expiries, redelivered flags, priorities, body sizes), the last five as arrays."""
        cdef IdMap enq = self.enqs.get(qid) or IdMap()
        cdef IdMap dlv = self.dlvs.get(qid)
        cdef IdMap exp = self.expires.get(qid)
        cdef IdMap seen = self.msgs, info = self.info
        cdef IdMap delivered = IdMap()
        cdef Py_ssize_t total = len(enq), j, k = 0, i, m
        ids, when = array("q", bytes(8 * total)), array("d", bytes(8 * total))
        redelivered, priorities = array("B", bytes(total)), array("B", bytes(total))
        sizes = array("I", bytes(4 * total))
        cdef long long[:] ids_v = ids
        cdef double[:] when_v = when
        cdef unsigned char[:] red_v = redelivered, pri_v = priorities
        cdef unsigned int[:] size_v = sizes
        cdef unsigned long long mid, location, bits
        cdef size_t s
        # The ids, sorted in ids itself; the loop below packs the kept ones to its front.
        for s in range(enq.mask + 1 if total else 0):
            if enq.slots[s].key:
                ids_v[k] = <long long>enq.slots[s].key
                k += 1
        if total:
            qsort(&ids_v[0], total, sizeof(long long), _compare)
        missing = []
        k = 0
        for j in range(total):
            mid = <unsigned long long>ids_v[j]
            m = seen.find(mid)
            if m < 0:
                missing.append(mid)  # its message record was damaged
                continue
            location = <unsigned long long>seen.slots[m].value
            if msgs.find(mid) >= 0:
                i = shared.find(mid)
                shared.put(mid, (shared.slots[i].value if i >= 0 else 1) + 1, 0)
            else:
                msgs.put(mid, <int64_t>location, seen.low[m])
                _count(counts, (location >> 32) - first, seen.low[m])
            _count(counts, (<unsigned long long>enq.slots[enq.find(mid)].value >> 32) - first,
                   HDR + 25)
            i = dlv.find(mid) if dlv is not None else -1
            if i >= 0:
                delivered.put(mid, dlv.slots[i].value, 0)
                _count(counts, (<unsigned long long>dlv.slots[i].value >> 32) - first, HDR + 17)
                red_v[k] = 1
            ids_v[k] = <long long>mid
            i = exp.find(mid) if exp is not None else -1
            if i >= 0:
                bits = <unsigned long long>exp.slots[i].value
                memcpy(&when_v[k], &bits, 8)
            i = info.find(mid)
            pri_v[k] = info.slots[i].value & 0xFF
            size_v[k] = <unsigned int>(info.slots[i].value >> 8)
            k += 1
        for mid in missing:
            enq.delete_at(enq.find(mid))
        self.lost += len(missing)
        if k < total:  # (copies: the arrays are still exported to the views above)
            ids, when, redelivered = ids[:k], when[:k], redelivered[:k]
            priorities, sizes = priorities[:k], sizes[:k]
        return enq, delivered, ids, when, redelivered, priorities, sizes


cdef int _compare(const void *a, const void *b) noexcept nogil:
    cdef long long x = (<const long long *>a)[0], y = (<const long long *>b)[0]
    return (x > y) - (x < y)


cdef inline void _count(long long[:] counts, unsigned long long k, unsigned long long size):
    counts[2 * k] += 1
    counts[2 * k + 1] += size
