# cython: language_level=3
"""AMQP 0-9-1 frame codec: cuts frames out of a byte stream and encodes the hot methods.

Everything on the per-message path lives here: reading frames, decoding basic.publish,
basic.ack and content headers, and encoding basic.deliver / get-ok / return with their
content frames. Rarer methods go through pamqp in the Python layer.
"""
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.string cimport memcmp, memcpy
from cpython.pyport cimport PY_SSIZE_T_MAX

DEF FRAME_METHOD = 1
DEF FRAME_HEADER = 2
DEF FRAME_BODY = 3
DEF FRAME_HEARTBEAT = 8
DEF FRAME_END = 0xCE


class FrameError(Exception):
    """A malformed frame: carries the AMQP connection-level reply code."""

    def __init__(self, int reply_code, str text):
        super().__init__(text)
        self.reply_code = reply_code
        self.text = text


cdef inline unsigned int _u16(const unsigned char *p) noexcept:
    return (p[0] << 8) | p[1]


cdef inline unsigned long _u32(const unsigned char *p) noexcept:
    return (<unsigned long>p[0] << 24) | (<unsigned long>p[1] << 16) | (<unsigned long>p[2] << 8) | p[3]


cdef inline unsigned long long _u64(const unsigned char *p) noexcept:
    return (<unsigned long long>_u32(p) << 32) | _u32(p + 4)


cdef class FrameReader:
    """Accumulates bytes and yields complete frames as (type, channel, payload)."""

    cdef bytearray _buf
    cdef Py_ssize_t _pos
    cdef public unsigned long frame_max
    # The last publish's exchange, routing key (raw and decoded) and properties: a
    # publisher usually repeats them, and the next message then shares these objects (an
    # allocation and ~50-100 B per queued message saved).
    cdef bytes _ex_raw, _rk_raw, _props
    cdef str _ex, _rk

    def __cinit__(self, unsigned long frame_max=131072):
        self._buf = bytearray()
        self._pos = 0
        self.frame_max = frame_max
        self._ex_raw = self._rk_raw = self._props = b""
        self._ex = self._rk = ""

    def feed(self, data) -> None:
        if self._pos:
            # Drop consumed bytes lazily, once per feed, so a big read costs one move.
            del self._buf[:self._pos]
            self._pos = 0
        self._buf += data

    def pending(self) -> int:
        return len(self._buf) - self._pos

    def take_raw(self, Py_ssize_t n):
        """Return up to n raw unparsed bytes (the protocol header before framing)."""
        cdef Py_ssize_t avail = len(self._buf) - self._pos
        if avail < n:
            return None
        out = bytes(self._buf[self._pos:self._pos + n])
        self._pos += n
        return out

    cdef Py_ssize_t _frame_at(self, const unsigned char *p, Py_ssize_t n,
                              Py_ssize_t pos) noexcept:
        """Payload size of the frame at pos; -1 incomplete, -2 bad type, -3 payload over
        frame_max (RabbitMQ's limit, see below), -4 missing frame end."""
        cdef unsigned int ftype
        cdef unsigned long size
        if n - pos < 7:
            return -1
        ftype = p[pos]
        if ftype != FRAME_METHOD and ftype != FRAME_HEADER and ftype != FRAME_BODY \
                and ftype != FRAME_HEARTBEAT:
            return -2
        size = _u32(p + pos + 3)
        # frame_max counts the whole frame (7-byte header + payload + frame-end), but like
        # RabbitMQ we allow 8 bytes more, so the payload may be up to frame_max: its reader
        # refuses PayloadSize > FrameMax - ?EMPTY_FRAME_SIZE + ?FRAME_SIZE_FUDGE (both 8;
        # rabbit_reader.erl, handle_input(frame_header, ...)), and pamqp-based clients send
        # body frames of frame_max payload bytes (issue 13 item 6, B-CONN-4). Decided on the
        # 7-byte header alone, before any of the payload is buffered.
        if self.frame_max and size > self.frame_max:
            return -3
        if n - pos < <Py_ssize_t>(size + 8):
            return -1
        if p[pos + 7 + size] != FRAME_END:
            return -4
        return size

    cdef _raise_bad(self, const unsigned char *p, Py_ssize_t pos, Py_ssize_t code):
        if code == -2:
            raise FrameError(501, f"FRAME_ERROR - unknown frame type {p[pos]}")
        if code == -3:
            raise FrameError(501, f"FRAME_ERROR - frame payload of {_u32(p + pos + 3)} bytes "
                                  f"exceeds frame_max {self.frame_max} (frame type {p[pos]}, "
                                  f"channel {_u16(p + pos + 1)})")
        raise FrameError(501, "FRAME_ERROR - missing frame end octet 0xCE")

    def events(self, Py_ssize_t max_bytes=0) -> list:
        """Complete frames as (type, channel, payload), all of them or (max_bytes > 0) as
        many as fit in about max_bytes (at least one). Frames before a malformed one come
        first; the next call raises FrameError for it. The two hottest methods come decoded:
        a basic.publish whose content header and single body frame are already buffered is
        one event (EVENT_PUBLISH, channel, exchange, routing_key, mandatory, props, body),
        and a basic.ack is (EVENT_ACK, channel, delivery_tag, multiple)."""
        return self._parse(max_bytes)

    cdef list _parse(self, Py_ssize_t max_bytes):
        cdef list out = []
        cdef Py_ssize_t stop = self._pos + max_bytes if max_bytes > 0 else PY_SSIZE_T_MAX
        cdef bytearray buf = self._buf
        cdef const unsigned char *p = <const unsigned char *><char *>buf
        cdef Py_ssize_t n = len(buf)
        cdef Py_ssize_t size
        cdef object ev
        while self._pos < stop:
            size = self._frame_at(p, n, self._pos)
            if size == -1:
                break
            if size < 0:
                if out:
                    break
                self._raise_bad(p, self._pos, size)
            if p[self._pos] == FRAME_METHOD and size >= 4:
                if _u32(p + self._pos + 7) == 0x003C0028:
                    ev = self._publish_at(p, n, size)
                    if ev is not None:
                        out.append(ev)
                        continue
                elif _u32(p + self._pos + 7) == 0x003C0050 and size == 13:
                    out.append((EVENT_ACK, _u16(p + self._pos + 1), _u64(p + self._pos + 11),
                                bool(p[self._pos + 19] & 1)))
                    self._pos += size + 8
                    continue
            out.append((p[self._pos], _u16(p + self._pos + 1),
                        PyBytes_FromStringAndSize(<const char *>p + self._pos + 7, size)))
            self._pos += size + 8
        return out

    cdef object _publish_at(self, const unsigned char *p, Py_ssize_t n, Py_ssize_t msize):
        """The publish at _pos with its content, if all of it is here and plain; else None
        (the frames then take the ordinary path, which reports any error)."""
        cdef Py_ssize_t mpos = self._pos, hpos, bpos, hsize, bsize, off, end
        cdef unsigned int channel = _u16(p + mpos + 1)
        cdef unsigned long long body_size
        cdef unsigned int elen, rlen
        hpos = mpos + msize + 8
        hsize = self._frame_at(p, n, hpos)
        if hsize < 14 or p[hpos] != FRAME_HEADER or _u16(p + hpos + 1) != channel \
                or _u16(p + hpos + 7) != 60:
            return None
        body_size = _u64(p + hpos + 11)
        bpos = hpos + hsize + 8
        if body_size:
            bsize = self._frame_at(p, n, bpos)
            if bsize < 0 or <unsigned long long>bsize != body_size or p[bpos] != FRAME_BODY \
                    or _u16(p + bpos + 1) != channel:
                return None
            end = bpos + bsize + 8
        else:
            end = bpos
        # basic.publish: class, method, reserved short, exchange, routing key, bits.
        off = mpos + 7 + 6
        elen = p[off] if msize > 6 else 256
        if 6 + 1 + elen + 1 > msize:
            return None
        rlen = p[off + 1 + elen]
        if 6 + 1 + elen + 1 + rlen + 1 > msize or p[off + 2 + elen + rlen] & 2:
            return None  # truncated, or immediate=true: the ordinary path answers
        if not _same(self._ex_raw, p + off + 1, elen):
            self._ex_raw = PyBytes_FromStringAndSize(<const char *>p + off + 1, elen)
            self._ex = self._ex_raw.decode("utf-8", "surrogateescape")
        if not _same(self._rk_raw, p + off + 2 + elen, rlen):
            self._rk_raw = PyBytes_FromStringAndSize(<const char *>p + off + 2 + elen, rlen)
            self._rk = self._rk_raw.decode("utf-8", "surrogateescape")
        mandatory = bool(p[off + 2 + elen + rlen] & 1)
        if not _same(self._props, p + hpos + 19, hsize - 12):
            self._props = PyBytes_FromStringAndSize(<const char *>p + hpos + 19, hsize - 12)
        body = PyBytes_FromStringAndSize(<const char *>p + bpos + 7, body_size) \
            if body_size else b""
        self._pos = end
        return (0, channel, self._ex, self._rk, mandatory, self._props, body)


cdef inline bint _same(bytes known, const unsigned char *p, Py_ssize_t n):
    """p[:n] holds the same bytes as known."""
    return len(known) == n and memcmp(PyBytes_AS_STRING(known), p, n) == 0


EVENT_PUBLISH = 0
EVENT_ACK = 9


def unassemble(tuple event) -> list:
    """The frames of an assembled event, as the client sent them."""
    if event[0] == EVENT_ACK:
        return [(FRAME_METHOD, event[1], b"\x00\x3c\x00\x50" + event[2].to_bytes(8, "big")
                 + (b"\x01" if event[3] else b"\x00"))]
    _, channel, exchange, routing_key, mandatory, props, body = event
    ex = exchange.encode("utf-8", "surrogateescape")
    rk = routing_key.encode("utf-8", "surrogateescape")
    method = (b"\x00\x3c\x00\x28\x00\x00" + bytes((len(ex),)) + ex + bytes((len(rk),)) + rk
              + (b"\x01" if mandatory else b"\x00"))
    header = b"\x00\x3c\x00\x00" + len(body).to_bytes(8, "big") + props
    out = [(FRAME_METHOD, channel, method), (FRAME_HEADER, channel, header)]
    if body:
        out.append((FRAME_BODY, channel, body))
    return out


# ---- decoding the hot methods ------------------------------------------------------------

cdef inline str _shortstr(const unsigned char *p, Py_ssize_t *off, Py_ssize_t end):
    cdef unsigned int n
    if off[0] >= end:
        raise ValueError("truncated short string")
    n = p[off[0]]
    if off[0] + 1 + n > end:
        raise ValueError("truncated short string")
    s = (<const char *>p)[off[0] + 1:off[0] + 1 + n].decode("utf-8", "surrogateescape")
    off[0] += 1 + n
    return s


def method_id(bytes payload) -> int:
    """(class_id << 16) | method_id of a method frame payload."""
    if len(payload) < 4:
        raise ValueError("method frame shorter than its class and method ids")
    return _u32(<const unsigned char *>PyBytes_AS_STRING(payload))


def decode_publish(bytes payload) -> tuple:
    """basic.publish arguments: (exchange, routing_key, mandatory, immediate)."""
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(payload)
    cdef Py_ssize_t end = len(payload)
    cdef Py_ssize_t off = 6  # class, method, reserved-1 short
    if end < 9:
        raise ValueError("truncated basic.publish")
    exchange = _shortstr(p, &off, end)
    routing_key = _shortstr(p, &off, end)
    if off >= end:
        raise ValueError("truncated basic.publish")
    return exchange, routing_key, bool(p[off] & 1), bool(p[off] & 2)


def decode_ack(bytes payload) -> tuple:
    """basic.ack arguments: (delivery_tag, multiple)."""
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(payload)
    if len(payload) < 13:
        raise ValueError("truncated basic.ack")
    return _u64(p + 4), bool(p[12] & 1)


def decode_content_header(bytes payload) -> tuple:
    """A content header frame: (class_id, body_size, raw property bytes incl. flags)."""
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(payload)
    if len(payload) < 14:
        raise ValueError("truncated content header")
    return _u16(p), _u64(p + 4), payload[12:]


# ---- encoding ------------------------------------------------------------------------------

cdef inline void _put16(unsigned char *p, unsigned int v) noexcept:
    p[0] = (v >> 8) & 0xFF
    p[1] = v & 0xFF


cdef inline void _put32(unsigned char *p, unsigned long v) noexcept:
    p[0] = (v >> 24) & 0xFF
    p[1] = (v >> 16) & 0xFF
    p[2] = (v >> 8) & 0xFF
    p[3] = v & 0xFF


cdef inline void _put64(unsigned char *p, unsigned long long v) noexcept:
    _put32(p, <unsigned long>(v >> 32))
    _put32(p + 4, <unsigned long>(v & 0xFFFFFFFF))


cdef inline Py_ssize_t _frame_head(unsigned char *p, unsigned int ftype, unsigned int channel,
                                   unsigned long size) noexcept:
    p[0] = ftype
    _put16(p + 1, channel)
    _put32(p + 3, size)
    return 7


def encode_frame(int ftype, int channel, bytes payload) -> bytes:
    """Wrap a payload in a frame."""
    cdef Py_ssize_t n = len(payload)
    out = PyBytes_FromStringAndSize(NULL, n + 8)
    cdef unsigned char *p = <unsigned char *>PyBytes_AS_STRING(out)
    _frame_head(p, ftype, channel, n)
    memcpy(p + 7, PyBytes_AS_STRING(payload), n)
    p[7 + n] = FRAME_END
    return out


HEARTBEAT_FRAME = b"\x08\x00\x00\x00\x00\x00\x00\xce"


cdef inline const char *_utf8(str s, Py_ssize_t *n, list keep) except NULL:
    """UTF-8 of a short string without a copy (CPython caches it on the str); strings with
    lone surrogates (undecodable bytes kept by surrogateescape) are encoded into `keep`."""
    cdef const char *p
    try:
        p = PyUnicode_AsUTF8AndSize(s, n)
    except UnicodeEncodeError:
        b = s.encode("utf-8", "surrogateescape")
        keep.append(b)
        n[0] = len(b)
        p = PyBytes_AS_STRING(b)
    if n[0] > 255:
        raise ValueError("short string longer than 255 bytes")
    return p


cdef inline Py_ssize_t _put_str(unsigned char *p, Py_ssize_t off, const char *s,
                                Py_ssize_t n) noexcept:
    p[off] = n
    memcpy(p + off + 1, s, n)
    return off + 1 + n


cdef bytes _content(unsigned int channel, Py_ssize_t mlen, bytes props, body,
                    unsigned long frame_max, unsigned char **method_at):
    """One buffer with a method frame of mlen payload bytes (left for the caller to fill at
    *method_at, after its class and method ids), the content header and the body frames."""
    cdef Py_ssize_t plen = len(props)
    cdef const unsigned char[:] bview = body
    cdef Py_ssize_t blen = bview.shape[0]
    cdef Py_ssize_t chunk = frame_max - 8 if frame_max > 8 else blen
    cdef Py_ssize_t nbody = (blen + chunk - 1) // chunk if chunk > 0 else 0
    cdef Py_ssize_t total = (mlen + 8) + (12 + plen + 8) + blen + 8 * nbody
    out = PyBytes_FromStringAndSize(NULL, total)
    cdef unsigned char *p = <unsigned char *>PyBytes_AS_STRING(out)
    cdef Py_ssize_t off = 0, sent = 0, n
    off += _frame_head(p + off, FRAME_METHOD, channel, mlen)
    method_at[0] = p + off
    off += mlen
    p[off] = FRAME_END
    off += 1
    off += _frame_head(p + off, FRAME_HEADER, channel, 12 + plen)
    _put16(p + off, 60)
    _put16(p + off + 2, 0)
    _put64(p + off + 4, blen)
    off += 12
    memcpy(p + off, PyBytes_AS_STRING(props), plen)
    off += plen
    p[off] = FRAME_END
    off += 1
    while sent < blen:
        n = blen - sent if blen - sent < chunk else chunk
        off += _frame_head(p + off, FRAME_BODY, channel, n)
        memcpy(p + off, &bview[sent], n)
        off += n
        p[off] = FRAME_END
        off += 1
        sent += n
    return out


def encode_deliver(unsigned int channel, str consumer_tag, unsigned long long delivery_tag,
                   bint redelivered, str exchange, str routing_key, bytes props, body,
                   unsigned long frame_max) -> bytes:
    """basic.deliver with its content header and body frames, in one buffer."""
    cdef list keep = []
    cdef Py_ssize_t clen, elen, rlen
    cdef const char *c = _utf8(consumer_tag, &clen, keep)
    cdef const char *e = _utf8(exchange, &elen, keep)
    cdef const char *r = _utf8(routing_key, &rlen, keep)
    cdef unsigned char *p
    out = _content(channel, 4 + 1 + clen + 8 + 1 + 1 + elen + 1 + rlen, props, body,
                   frame_max, &p)
    _put32(p, (60 << 16) | 60)
    cdef Py_ssize_t off = _put_str(p, 4, c, clen)
    _put64(p + off, delivery_tag)
    p[off + 8] = 1 if redelivered else 0
    off = _put_str(p, off + 9, e, elen)
    _put_str(p, off, r, rlen)
    return out


def encode_get_ok(unsigned int channel, unsigned long long delivery_tag, bint redelivered,
                  str exchange, str routing_key, unsigned long message_count, bytes props, body,
                  unsigned long frame_max) -> bytes:
    """basic.get-ok with its content header and body frames."""
    cdef list keep = []
    cdef Py_ssize_t elen, rlen
    cdef const char *e = _utf8(exchange, &elen, keep)
    cdef const char *r = _utf8(routing_key, &rlen, keep)
    cdef unsigned char *p
    out = _content(channel, 4 + 8 + 1 + 1 + elen + 1 + rlen + 4, props, body, frame_max, &p)
    _put32(p, (60 << 16) | 71)
    _put64(p + 4, delivery_tag)
    p[12] = 1 if redelivered else 0
    cdef Py_ssize_t off = _put_str(p, 13, e, elen)
    off = _put_str(p, off, r, rlen)
    _put32(p + off, message_count)
    return out


def encode_return(unsigned int channel, unsigned int reply_code, str reply_text, str exchange,
                  str routing_key, bytes props, body, unsigned long frame_max) -> bytes:
    """basic.return with its content header and body frames."""
    cdef list keep = []
    cdef Py_ssize_t tlen, elen, rlen
    cdef const char *t = _utf8(reply_text, &tlen, keep)
    cdef const char *e = _utf8(exchange, &elen, keep)
    cdef const char *r = _utf8(routing_key, &rlen, keep)
    cdef unsigned char *p
    out = _content(channel, 4 + 2 + 1 + tlen + 1 + elen + 1 + rlen, props, body, frame_max, &p)
    _put32(p, (60 << 16) | 50)
    _put16(p + 4, reply_code)
    cdef Py_ssize_t off = _put_str(p, 6, t, tlen)
    off = _put_str(p, off, e, elen)
    _put_str(p, off, r, rlen)
    return out


def encode_basic_ack(unsigned int channel, unsigned long long delivery_tag, bint multiple,
                     bint nack=False) -> bytes:
    """basic.ack / basic.nack (publisher confirms) as a whole frame."""
    out = PyBytes_FromStringAndSize(NULL, 8 + 13)
    cdef unsigned char *p = <unsigned char *>PyBytes_AS_STRING(out)
    _frame_head(p, FRAME_METHOD, channel, 13)
    _put32(p + 7, (60 << 16) | (120 if nack else 80))
    _put64(p + 11, delivery_tag)
    p[19] = 1 if multiple else 0
    p[20] = FRAME_END
    return out
