# cython: language_level=3
"""The message record: routing info, raw property bytes and body, shared by every queue.

Properties stay in their wire encoding so a delivery copies them untouched; the few fields
the broker needs (delivery mode, priority, expiration, reply-to, user-id, headers) are
located once, when the record is made.
"""
cimport cython
from cpython.bytes cimport PyBytes_AS_STRING
from libc.string cimport memcmp

# Property flag bits, in wire order (AMQP 0-9-1 basic class).
DEF F_CONTENT_TYPE = 0x8000
DEF F_CONTENT_ENCODING = 0x4000
DEF F_HEADERS = 0x2000
DEF F_DELIVERY_MODE = 0x1000
DEF F_PRIORITY = 0x0800
DEF F_CORRELATION_ID = 0x0400
DEF F_REPLY_TO = 0x0200
DEF F_EXPIRATION = 0x0100
DEF F_MESSAGE_ID = 0x0080
DEF F_TIMESTAMP = 0x0040
DEF F_TYPE = 0x0020
DEF F_USER_ID = 0x0010
DEF F_APP_ID = 0x0008
DEF F_CLUSTER_ID = 0x0004


cdef inline unsigned long _u32(const unsigned char *p) noexcept:
    return (<unsigned long>p[0] << 24) | (<unsigned long>p[1] << 16) | (<unsigned long>p[2] << 8) | p[3]


cdef inline Py_ssize_t _value_size(const unsigned char *p, Py_ssize_t off,
                                   Py_ssize_t end) noexcept:
    """The size of the field value whose type byte is at p[off], type byte included; -1: an
    unknown type or a value past end."""
    cdef Py_ssize_t size
    cdef unsigned char kind = p[off]
    if kind == b'S' or kind == b'x' or kind == b'A' or kind == b'F':
        if off + 5 > end:
            return -1
        size = 5 + <Py_ssize_t>_u32(p + off + 1)
    elif kind == b't' or kind == b'b' or kind == b'B':
        size = 2
    elif kind == b's' or kind == b'u':
        size = 3
    elif kind == b'I' or kind == b'i' or kind == b'f':
        size = 5
    elif kind == b'l' or kind == b'L' or kind == b'd' or kind == b'T':
        size = 9
    elif kind == b'D':
        size = 6
    elif kind == b'V':
        size = 1
    else:
        return -1
    return size if off + size <= end else -1


# Never part of a reference cycle (its fields are strings, bytes and decoded headers), so
# the cyclic GC need not track it: a queue holding many messages no longer makes each full
# collection walk them all (~40 ms per 200k messages, a loop stall).
@cython.no_gc
cdef class Message:
    """One published message. Immutable once routed, except for its store id."""

    def __cinit__(self, str exchange, str routing_key, bytes props, body):
        self.exchange = exchange
        self.routing_key = routing_key
        self.props = props
        self.body = body
        self._hdr_start = -1
        self._hdr_end = -1
        self._headers = None
        self.store_id = 0
        self.bcc = None
        self._scan()

    cdef str _shortstr(self, const unsigned char *p, Py_ssize_t *off, Py_ssize_t end):
        cdef Py_ssize_t n
        if off[0] >= end:
            raise ValueError("truncated content header properties")
        n = p[off[0]]
        if off[0] + 1 + n > end:
            raise ValueError("truncated content header properties")
        s = (<const char *>p)[off[0] + 1:off[0] + 1 + n].decode("utf-8", "surrogateescape")
        off[0] += 1 + n
        return s

    cdef void _need(self, Py_ssize_t off, Py_ssize_t n, Py_ssize_t end) except *:
        if off + n > end:
            raise ValueError("truncated content header properties")

    cdef void _scan(self) except *:
        cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(self.props)
        cdef Py_ssize_t end = len(self.props)
        cdef Py_ssize_t off = 2
        cdef unsigned int flags
        self._need(0, 2, end)
        flags = (p[0] << 8) | p[1]
        if flags & 1:
            raise ValueError("property flag continuation is not used by the basic class")
        if flags & F_CONTENT_TYPE:
            self._shortstr(p, &off, end)
        if flags & F_CONTENT_ENCODING:
            self._shortstr(p, &off, end)
        if flags & F_HEADERS:
            self._need(off, 4, end)
            self._hdr_start = off
            off += 4 + _u32(p + off)
            self._need(off, 0, end)
            self._hdr_end = off
        if flags & F_DELIVERY_MODE:
            self._need(off, 1, end)
            self.delivery_mode = p[off]
            off += 1
        if flags & F_PRIORITY:
            self._need(off, 1, end)
            self.priority = p[off]
            off += 1
        if flags & F_CORRELATION_ID:
            self._shortstr(p, &off, end)
        if flags & F_REPLY_TO:
            self.reply_to = self._shortstr(p, &off, end)
        if flags & F_EXPIRATION:
            self.expiration = self._shortstr(p, &off, end)
        if flags & F_MESSAGE_ID:
            self._shortstr(p, &off, end)
        if flags & F_TIMESTAMP:
            self._need(off, 8, end)
            off += 8
        if flags & F_TYPE:
            self._shortstr(p, &off, end)
        if flags & F_USER_ID:
            self.user_id = self._shortstr(p, &off, end)
        if flags & F_APP_ID:
            self._shortstr(p, &off, end)
        if flags & F_CLUSTER_ID:
            self._shortstr(p, &off, end)
        if off != end:
            raise ValueError("content header properties longer than their flags say")

    cdef Py_ssize_t field(self, const char *key, Py_ssize_t key_size) noexcept:
        """Where the header `key` (a top-level field of the headers table) is: the offset
        of its type byte in props. -1: not there; -2: the table cannot be walked (malformed:
        the full decode says what is wrong). Nothing is decoded."""
        if self._hdr_start < 0:
            return -1
        cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(self.props)
        cdef Py_ssize_t off = self._hdr_start + 4, end = self._hdr_end, name, size
        while off < end:
            name = p[off]
            if off + 2 + name > end:
                return -2
            off += 1 + name
            size = _value_size(p, off, end)
            if size < 0:
                return -2
            if name == key_size and memcmp(p + off - name, key, name) == 0:
                return off
            off += size
        return -1 if off == end else -2

    cpdef object integer_header(self, bytes name):
        """The header `name` when it is an integer of any width, read from the property
        bytes without decoding the table; None when it is absent or of another type (the
        decoded headers tell what it is)."""
        cdef Py_ssize_t at = self.field(name, len(name))
        value = self.scalar_at(at) if at >= 0 else None
        return value if type(value) is int else None

    cdef object scalar_at(self, Py_ssize_t at):
        """The value whose type byte is at props[at] (a place field() found): an int for
        the integer types, bytes for a long string or byte array, None for any other type."""
        cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(self.props) + at
        cdef unsigned char kind = p[0]
        if kind == b'S' or kind == b'x':
            return (<const char *>p)[5:5 + _u32(p + 1)]
        if kind == b'b':
            return <signed char>p[1]
        if kind == b'B':
            return p[1]
        if kind == b's':
            return <short>((p[1] << 8) | p[2])
        if kind == b'u':
            return (p[1] << 8) | p[2]
        if kind == b'I':
            return <int>_u32(p + 1)
        if kind == b'i':
            return _u32(p + 1)
        if kind == b'l':
            return <long long>((<unsigned long long>_u32(p + 1) << 32) | _u32(p + 5))
        if kind == b'L':
            return (<unsigned long long>_u32(p + 1) << 32) | _u32(p + 5)
        return None

    @property
    def persistent(self) -> bool:
        return self.delivery_mode == 2

    @property
    def body_size(self) -> int:
        return len(self.body)

    @property
    def headers(self):
        """The headers table as a dict (decoded on first use), or None."""
        if self._headers is None and self._hdr_start >= 0:
            from mq._core.fieldtable import decode_table
            self._headers = decode_table(self.props[self._hdr_start:self._hdr_end])
        return self._headers

    def with_route(self, str exchange, str routing_key, bytes props=None) -> Message:
        """A copy routed anew (dead lettering, e2e forwarding), optionally with new props."""
        return Message(exchange, routing_key, self.props if props is None else props, self.body)
