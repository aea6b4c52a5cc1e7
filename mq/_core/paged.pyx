# cython: language_level=3
"""Records of messages that a queue paged out of memory (mq/store/paging.py).

They live in scratch files that the same process writes and reads back, so there is no
checksum and integers are in host byte order:

    u32 size (of the rest) | f64 expires_at | u8 flags | i64 store_id |
    u32 body_size | [u8+exchange | u8+routing_key | u32+props | body]   (full records only)

flags: 1 = redelivered, 2 = reference: a message stored in the queue's log, so only its
id is paged out (body_size still counts its body, for the queue's byte totals).
"""
from libc.string cimport memcpy
from libc.stdint cimport uint32_t, int64_t

from cpython.bytes cimport PyBytes_AS_STRING
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_Resize

from mq._core.message cimport Message

DEF FIXED = 4 + 8 + 1 + 8 + 4
DEF REDELIVERED = 1
DEF REFERENCE = 2


cdef inline void _put32(bytearray out, uint32_t v):
    out += (<char *>&v)[:4]


def append(bytearray out, Message msg, double expires_at, bint redelivered, bint ref) -> None:
    """Append one record for msg to out: only its store id when ref (the queue's log holds
    the message), else the whole message."""
    cdef bytes ex = b"" if ref else msg.exchange.encode("utf-8", "surrogateescape")
    cdef bytes rk = b"" if ref else msg.routing_key.encode("utf-8", "surrogateescape")
    cdef Py_ssize_t body_size = len(msg.body)
    cdef Py_ssize_t size = FIXED - 4
    cdef unsigned char flags = (REDELIVERED if redelivered else 0) | (REFERENCE if ref else 0)
    cdef int64_t store_id = msg.store_id
    if not ref:
        size += 1 + len(ex) + 1 + len(rk) + 4 + len(msg.props) + body_size
    _put32(out, <uint32_t>size)
    out += (<char *>&expires_at)[:8]
    out += (<char *>&flags)[:1]
    out += (<char *>&store_id)[:8]
    _put32(out, <uint32_t>body_size)
    if not ref:
        out.append(len(ex))
        out += ex
        out.append(len(rk))
        out += rk
        _put32(out, <uint32_t>len(msg.props))
        out += msg.props
        out += msg.body


def append_refs(bytearray out, const long long[:] ids, const double[:] expiries,
                const unsigned char[:] redelivered, const unsigned char[:] priorities,
                const unsigned int[:] sizes, Py_ssize_t start, Py_ssize_t stop, int level,
                int max_priority) -> tuple:
    """Append reference records for the stored messages ids[start:stop] whose level
    (min(priority, max_priority); all of them when max_priority is 0) is `level`, as append()
    would one by one. Returns (records appended, their body bytes)."""
    cdef Py_ssize_t i, count = 0, body_bytes = 0, at = len(out)
    cdef uint32_t size = FIXED - 4, body_size
    cdef unsigned char *rec
    cdef int64_t store_id
    cdef double expires_at
    for i in range(start, stop):
        if not max_priority or min(<int>priorities[i], max_priority) == level:
            count += 1
    PyByteArray_Resize(out, at + count * FIXED)
    rec = <unsigned char *>PyByteArray_AS_STRING(out) + at
    for i in range(start, stop):
        if max_priority and min(<int>priorities[i], max_priority) != level:
            continue
        store_id, expires_at, body_size = ids[i], expiries[i], sizes[i]
        memcpy(rec, &size, 4)
        memcpy(rec + 4, &expires_at, 8)
        rec[12] = REFERENCE | (REDELIVERED if redelivered[i] else 0)
        memcpy(rec + 13, &store_id, 8)
        memcpy(rec + 21, &body_size, 4)
        rec += FIXED
        body_bytes += body_size
    return count, body_bytes


def decode(bytes data) -> tuple:
    """Records from data up to the last complete one. Returns (records, end), each
    record (message or None for a reference, store_id, expires_at, redelivered, body_size)."""
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = len(data), off = 0, end, pos, ln
    cdef uint32_t size, body_size, props_size
    cdef double expires_at
    cdef unsigned char flags
    cdef int64_t store_id
    cdef list out = []
    cdef object msg
    cdef str ex, rk
    while off + 4 <= n:
        memcpy(&size, p + off, 4)
        end = off + 4 + size
        if end > n:
            break
        memcpy(&expires_at, p + off + 4, 8)
        flags = p[off + 12]
        memcpy(&store_id, p + off + 13, 8)
        memcpy(&body_size, p + off + 21, 4)
        if flags & REFERENCE:
            msg = None
        else:
            pos = off + FIXED
            ln = p[pos]
            ex = (<const char *>p)[pos + 1:pos + 1 + ln].decode("utf-8", "surrogateescape")
            pos += 1 + ln
            ln = p[pos]
            rk = (<const char *>p)[pos + 1:pos + 1 + ln].decode("utf-8", "surrogateescape")
            pos += 1 + ln
            memcpy(&props_size, p + pos, 4)
            pos += 4
            msg = Message(ex, rk, data[pos:pos + props_size], data[pos + props_size:end])
            (<Message>msg).store_id = store_id
        out.append((msg, store_id, expires_at, bool(flags & REDELIVERED), body_size))
        off = end
    return out, off
