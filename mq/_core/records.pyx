# cython: language_level=3
"""Store records: the byte layout of the append-only log, and a scanner that reads it back.

Every record is framed as

    u32 length | u32 crc32 | u8 type | payload          (length and crc cover type+payload)

so a reader can tell a complete, intact record from a torn or corrupt one. Integers are
big-endian. Record types and their payloads:

    MSG       u64 msg_id, u8+exchange, u8+routing_key, u32+props, body (the rest)
    ENQ       u64 queue_id, u64 msg_id, f64 expires_at (wall clock seconds, 0 = none)
    DLV       u64 queue_id, u64 msg_id            (delivered at least once: redelivered)
    ACK       u64 queue_id, u64 msg_id            (gone from the queue)
    QUEUE     topology: u64 id, u8 flags, 2 strings (vhost, name), arguments table
    EXCHANGE  topology: u64 id, u8 flags, 3 strings (vhost, name, type), arguments table
    BINDING   topology: u64 id, u8 flags, 4 strings (vhost, source, destination, key), table
    DELETE    u64 id of a QUEUE, EXCHANGE or BINDING record's object

Topology strings are u16-length prefixed UTF-8; the arguments table is the AMQP field
table encoding (the caller encodes and decodes it).
"""
from libc.string cimport memcpy
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

HEADER_SIZE = 8
DEF HDR = 8

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


cdef bytes _frame(bytes record):
    """Prefix type+payload with its length and CRC."""
    cdef Py_ssize_t n = len(record)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, n + HDR)
    cdef unsigned char *p = <unsigned char *>PyBytes_AS_STRING(out)
    _put32(p, n)
    _put32(p + 4, crc32(record))
    memcpy(p + HDR, PyBytes_AS_STRING(record), n)
    return out


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
    _put32(base, n)
    _put32(base + 4, crc32(memoryview(out)[HDR:]))
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


def scan(bytes data, Py_ssize_t start=0, bint bodies=True):
    """Read records from data[start:] until the end or the first bad one (without copying
    message bodies out when bodies is false: MSG records then carry b"").

    Returns (records, end, error): records is a list of (offset, size, fields) where size
    counts the frame header; end is where the intact part stops; error is None when
    everything up to len(data) was intact, else why reading stopped at `end`.
    """
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(data)
    cdef Py_ssize_t size = len(data)
    cdef Py_ssize_t off = start
    cdef Py_ssize_t n
    cdef list out = []
    cdef object view = memoryview(data)
    while off < size:
        if off + HDR > size:
            return out, off, "truncated record header"
        n = <Py_ssize_t>_get32(p + off)
        if n < 1 or off + HDR + n > size:
            return out, off, "truncated record" if n >= 1 else "zero-length record"
        if crc32(view[off + HDR:off + HDR + n]) != _get32(p + off + 4):
            return out, off, "checksum mismatch"
        try:
            fields = _decode(p + off + HDR, n, bodies)
        except ValueError as exc:
            return out, off, f"malformed record: {exc}"
        out.append((off, HDR + n, fields))
        off += HDR + n
    return out, off, None
