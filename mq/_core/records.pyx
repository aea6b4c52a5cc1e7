# cython: language_level=3
"""Store records: the byte layout of the append-only log, and a scanner that reads it back.

Every record (data format 2) is framed as

    u32 magic 0xFEED6D71 | u32 length | u32 crc32 | u8 type | payload
                                       (length and crc cover type+payload)

so a reader can tell a complete, intact record from a torn or corrupt one (B-DUR-6), and can
find the next record again after a damaged one (B-DUR-7): the magic marks where records may
start, and a candidate counts as a record only when its length fits, its CRC holds and it
decodes, so the magic turning up inside a message body is not mistaken for one. The magic's
bytes FE ED 'm' 'q' never occur in UTF-8 text (FE is no UTF-8 byte). Integers are big-endian.
Record types and their payloads:

    MSG       u64 msg_id, u8+exchange, u8+routing_key, u32+props, body (the rest)
    ENQ       u64 queue_id, u64 msg_id, f64 expires_at (wall clock seconds, 0 = none)
    DLV       u64 queue_id, u64 msg_id            (delivered at least once: redelivered)
    ACK       u64 queue_id, u64 msg_id            (gone from the queue)
    QUEUE     topology: u64 id, u8 flags, 2 strings (vhost, name), arguments table
    EXCHANGE  topology: u64 id, u8 flags, 3 strings (vhost, name, type), arguments table
    BINDING   topology: u64 id, u8 flags, 4 strings (vhost, source, destination, key), table
    DELETE    u64 id of a QUEUE, EXCHANGE or BINDING record's object

Topology strings are u16-length prefixed UTF-8; the arguments table is the AMQP field
table encoding (the caller encodes and decodes it: mq/store/arguments.py).

Data format 1 framed records as `u32 length | u32 crc32 | u8 type | payload` (no magic) with
the same payloads, except that arguments were pickled; scan_v1 reads that framing for the
migration to format 2 (mq/store/migration.py) and nothing else.

Scanning is a C loop over the frames; only after a bad record does it search, with memchr
for the magic's first byte, for the next intact record.
"""
from libc.string cimport memchr, memcpy
from zlib import crc32

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize

MSG = 1
ENQ = 2
DLV = 3
ACK = 4
QUEUE = 5
EXCHANGE = 6
BINDING = 7
DELETE = 8

MAGIC = b"\xfe\xedmq"
HEADER_SIZE = 12
V1_HEADER_SIZE = 8
DEF HDR = 12
DEF HDR1 = 8
DEF M0 = 0xFE
DEF M1 = 0xED
DEF M2 = 0x6D
DEF M3 = 0x71

# How many strings each topology record carries.
cdef dict _TOPO_STRINGS = {5: 2, 6: 3, 7: 4}


cdef inline void _put32(unsigned char *p, unsigned long long v) noexcept:
    p[0] = (v >> 24) & 0xFF
    p[1] = (v >> 16) & 0xFF
    p[2] = (v >> 8) & 0xFF
    p[3] = v & 0xFF


cdef inline void _put64(unsigned char *p, unsigned long long v) noexcept:
    _put32(p, v >> 32)
    _put32(p + 4, v & 0xFFFFFFFF)


cdef inline unsigned long long _get32(const unsigned char *p) noexcept:
    return (<unsigned long long>p[0] << 24) | (<unsigned long long>p[1] << 16) | \
        (<unsigned long long>p[2] << 8) | p[3]


cdef inline unsigned long long _get64(const unsigned char *p) noexcept:
    return (_get32(p) << 32) | _get32(p + 4)


cdef inline void _put_magic(unsigned char *p) noexcept:
    p[0] = M0
    p[1] = M1
    p[2] = M2
    p[3] = M3


cdef inline bint _magic_at(const unsigned char *p) noexcept:
    return p[0] == M0 and p[1] == M1 and p[2] == M2 and p[3] == M3


cdef bytes _frame(bytes record):
    """Prefix type+payload with the magic, its length and CRC."""
    cdef Py_ssize_t n = len(record)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, n + HDR)
    cdef unsigned char *p = <unsigned char *>PyBytes_AS_STRING(out)
    _put_magic(p)
    _put32(p + 4, n)
    _put32(p + 8, crc32(record))
    memcpy(p + HDR, PyBytes_AS_STRING(record), n)
    return out


def frame(bytes record) -> bytes:
    """A record (type byte + payload) framed for the log: the migration reframes format-1
    records with it (their CRC is the same)."""
    if not record:
        raise ValueError("a record has at least its type byte")
    return _frame(record)


def message_record(unsigned long long msg_id, str exchange, str routing_key, bytes props,
                   body) -> bytes:
    """A MSG record: the message itself, written once however many queues hold it."""
    cdef bytes ex = exchange.encode("utf-8", "surrogateescape")
    cdef bytes rk = routing_key.encode("utf-8", "surrogateescape")
    cdef bytes b = bytes(body)
    cdef Py_ssize_t n = 1 + 8 + 1 + len(ex) + 1 + len(rk) + 4 + len(props) + len(b)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, n + HDR)
    cdef unsigned char *base = <unsigned char *>PyBytes_AS_STRING(out)
    cdef unsigned char *p = base + HDR
    if len(ex) > 255 or len(rk) > 255:
        raise ValueError("exchange and routing key are short strings")
    p[0] = MSG
    _put64(p + 1, msg_id)
    p += 9
    p[0] = len(ex)
    memcpy(p + 1, PyBytes_AS_STRING(ex), len(ex))
    p += 1 + len(ex)
    p[0] = len(rk)
    memcpy(p + 1, PyBytes_AS_STRING(rk), len(rk))
    p += 1 + len(rk)
    _put32(p, len(props))
    memcpy(p + 4, PyBytes_AS_STRING(props), len(props))
    p += 4 + len(props)
    memcpy(p, PyBytes_AS_STRING(b), len(b))
    _put_magic(base)
    _put32(base + 4, n)
    _put32(base + 8, crc32(memoryview(out)[HDR:]))
    return out


def ref_record(int rtype, unsigned long long queue_id, unsigned long long msg_id) -> bytes:
    """A DLV or ACK record."""
    cdef bytes rec = PyBytes_FromStringAndSize(NULL, 17)
    cdef unsigned char *p = <unsigned char *>PyBytes_AS_STRING(rec)
    p[0] = rtype
    _put64(p + 1, queue_id)
    _put64(p + 9, msg_id)
    return _frame(rec)


def enqueue_record(unsigned long long queue_id, unsigned long long msg_id,
                   double expires_at) -> bytes:
    """An ENQ record: msg_id is in queue_id, with an absolute expiry (0: none)."""
    cdef bytes rec = PyBytes_FromStringAndSize(NULL, 25)
    cdef unsigned char *p = <unsigned char *>PyBytes_AS_STRING(rec)
    cdef unsigned long long bits
    p[0] = ENQ
    _put64(p + 1, queue_id)
    _put64(p + 9, msg_id)
    memcpy(&bits, &expires_at, 8)
    _put64(p + 17, bits)
    return _frame(rec)


def delete_record(unsigned long long obj_id) -> bytes:
    cdef bytes rec = PyBytes_FromStringAndSize(NULL, 9)
    cdef unsigned char *p = <unsigned char *>PyBytes_AS_STRING(rec)
    p[0] = DELETE
    _put64(p + 1, obj_id)
    return _frame(rec)


def topology_record(int rtype, unsigned long long obj_id, int flags, tuple strings,
                    bytes arguments) -> bytes:
    """A QUEUE, EXCHANGE or BINDING record."""
    if _TOPO_STRINGS.get(rtype) != len(strings):
        raise ValueError(f"record type {rtype} takes {_TOPO_STRINGS.get(rtype)} strings")
    parts = [bytes((rtype,)), obj_id.to_bytes(8, "big"), bytes((flags,))]
    for s in strings:
        b = (<str>s).encode("utf-8", "surrogateescape")
        if len(b) > 0xFFFF:
            raise ValueError("name too long for the store")
        parts.append(len(b).to_bytes(2, "big"))
        parts.append(b)
    parts.append(arguments)
    return _frame(b"".join(parts))


cdef str _str(const unsigned char *p, Py_ssize_t n):
    return (<const char *>p)[:n].decode("utf-8", "surrogateescape")


cdef tuple _decode(const unsigned char *p, Py_ssize_t n, bint bodies):
    """Fields of one verified record (p points at its type byte, n bytes long)."""
    cdef int rtype = p[0]
    cdef Py_ssize_t off, k, i, nstr
    cdef double expires
    cdef unsigned long long bits
    if rtype == MSG:
        off = 9
        if off + 1 > n:
            raise ValueError("short MSG")
        k = p[off]
        if off + 1 + k + 1 > n:
            raise ValueError("short MSG")
        exchange = _str(p + off + 1, k)
        off += 1 + k
        k = p[off]
        if off + 1 + k + 4 > n:
            raise ValueError("short MSG")
        routing_key = _str(p + off + 1, k)
        off += 1 + k
        k = <Py_ssize_t>_get32(p + off)
        if off + 4 + k > n:
            raise ValueError("short MSG")
        props = (<const char *>p)[off + 4:off + 4 + k]
        off += 4 + k
        body = (<const char *>p)[off:n] if bodies else b""
        return (MSG, _get64(p + 1), exchange, routing_key, props, body)
    if rtype == ENQ:
        if n != 25:
            raise ValueError("bad ENQ")
        bits = _get64(p + 17)
        memcpy(&expires, &bits, 8)
        return (ENQ, _get64(p + 1), _get64(p + 9), expires)
    if rtype == DLV or rtype == ACK:
        if n != 17:
            raise ValueError("bad ref record")
        return (rtype, _get64(p + 1), _get64(p + 9))
    if rtype == DELETE:
        if n != 9:
            raise ValueError("bad DELETE")
        return (DELETE, _get64(p + 1))
    nstr = _TOPO_STRINGS.get(rtype, -1)
    if nstr < 0:
        raise ValueError(f"unknown record type {rtype}")
    if n < 10:
        raise ValueError("short topology record")
    fields = [rtype, _get64(p + 1), p[9]]
    off = 10
    for i in range(nstr):
        if off + 2 > n:
            raise ValueError("short topology record")
        k = (p[off] << 8) | p[off + 1]
        if off + 2 + k > n:
            raise ValueError("short topology record")
        fields.append(_str(p + off + 2, k))
        off += 2 + k
    fields.append((<const char *>p)[off:n])
    return tuple(fields)


cdef class _Reader:
    """One buffer being scanned, in the framing of format 2 (magic) or format 1."""
    cdef bytes data
    cdef const unsigned char *p
    cdef Py_ssize_t size
    cdef object view
    cdef bint v1
    cdef Py_ssize_t hdr
    cdef bint bodies
    cdef Py_ssize_t n       # length (type+payload) of the record at() last returned
    cdef str why            # why at() last returned None

    def __cinit__(self, bytes data, bint bodies, bint v1):
        self.data = data
        self.p = <const unsigned char *>PyBytes_AS_STRING(data)
        self.size = len(data)
        self.view = memoryview(data)
        self.v1 = v1
        self.hdr = HDR1 if v1 else HDR
        self.bodies = bodies
        self.n = 0
        self.why = None

    cdef Py_ssize_t claimed(self, Py_ssize_t off) noexcept:
        """The length the header at off gives its record, or -1 when it cannot be one."""
        cdef Py_ssize_t n
        if self.size - off < self.hdr:
            return -1
        n = <Py_ssize_t>_get32(self.p + off + (0 if self.v1 else 4))
        if n < 1 or n > self.size - off - self.hdr:
            return -1
        return n

    cdef unsigned long long stored_crc(self, Py_ssize_t off) noexcept:
        return _get32(self.p + off + (4 if self.v1 else 8))

    cdef object at(self, Py_ssize_t off):
        """The fields of the intact record at off (its length in self.n), or None (why in
        self.why)."""
        cdef const unsigned char *q = self.p + off
        cdef Py_ssize_t n, hdr = self.hdr
        if self.size - off < hdr:
            self.why = "truncated record header"
            return None
        if self.v1:
            n = <Py_ssize_t>_get32(q)
        else:
            if not _magic_at(q):
                self.why = "no record marker"
                return None
            n = <Py_ssize_t>_get32(q + 4)
        if n < 1:
            self.why = "zero-length record"
            return None
        if n > self.size - off - hdr:
            self.why = "truncated record"
            return None
        if crc32(self.view[off + hdr:off + hdr + n]) != self.stored_crc(off):
            self.why = "checksum mismatch"
            return None
        try:
            fields = _decode(q + hdr, n, self.bodies)
        except ValueError as exc:
            self.why = f"malformed record: {exc}"
            return None
        self.n = n
        return fields

    cdef Py_ssize_t search(self, Py_ssize_t off) except -1:
        """Where the first intact record at or after off starts, or the end of the data."""
        cdef const unsigned char *p = self.p
        cdef const unsigned char *hit
        cdef Py_ssize_t last = self.size - self.hdr - 1  # the last offset a record fits at
        if self.v1:  # no magic: try every offset, the length and type byte first
            while off <= last:
                if self.claimed(off) > 0 and 1 <= p[off + HDR1] <= 8 and \
                        self.at(off) is not None:
                    return off
                off += 1
            return self.size
        while off <= last:
            hit = <const unsigned char *>memchr(p + off, M0, last + 1 - off)
            if hit == NULL:
                break
            off = hit - p
            if _magic_at(hit) and self.at(off) is not None:
                return off
            off += 1
        return self.size

    cdef tuple skip(self, Py_ssize_t x):
        """The record at x is bad: (where reading resumes, 1 when what lies between is that
        one record, else None: how many records it held is not known)."""
        cdef Py_ssize_t n = self.claimed(x)
        cdef Py_ssize_t y = self.search(x + 1)
        cdef Py_ssize_t c
        if n > 0:
            c = x + self.hdr + n
            if y == c:      # the usual case: damage inside one record, its length intact
                return c, 1
            if y < c:       # an intact record inside the bad one's extent
                if y > x + self.hdr and \
                        crc32(self.view[x + self.hdr:y]) == self.stored_crc(x):
                    return y, 1  # only the bad record's length was hit
                if c < self.size and self.at(c) is not None:
                    return c, 1  # y lies in the bad record's body (a record in a message)
        return y, None


cdef tuple _scan(bytes data, Py_ssize_t start, bint bodies, bint v1):
    cdef _Reader r = _Reader(data, bodies, v1)
    cdef Py_ssize_t off = start, size = r.size, hdr = r.hdr, nxt
    cdef list out = []
    cdef list damaged = []
    while off < size:
        fields = r.at(off)
        if fields is not None:
            out.append((off, hdr + r.n, fields))
            off += hdr + r.n
            continue
        why = r.why
        nxt, count = r.skip(off)
        damaged.append((off, nxt - off, count, why))
        off = nxt
    return out, damaged


def scan(bytes data, Py_ssize_t start=0, bint bodies=True):
    """Read the records of data[start:] (without copying message bodies out when bodies is
    false: MSG records then carry b""), skipping damaged ones.

    Returns (records, damaged). records is a list of (offset, size, fields), size counting
    the frame header. damaged lists the byte ranges that held no intact record, in order, as
    (offset, length, records, reason): records is 1 when the range is exactly one bad record
    (its header was intact, or the next record was found where its length said), None when
    how many records it held is not known; reason says what was wrong at offset. A range
    that ends at len(data) has no intact record after it: at the end of the log, that is a
    torn tail. Reading resumes at the first offset past the bad one that holds a magic, a
    length that fits, a matching CRC and a record that decodes.
    """
    return _scan(data, start, bodies, False)


def scan_v1(bytes data, bint bodies=True):
    """scan() for the framing of data format 1 (no magic; the migration's reader). After a
    bad record the next one is looked for at every following offset."""
    return _scan(data, 0, bodies, True)
