"""The AMQP 0-9-1 field-table codec: every field table and typed value the broker reads or
writes outside method frames (message headers, x-death, the store's argument records, the
management API's properties) goes through here; pamqp is left with method frames.

Plain Python in mq._core: _core is the layer every other one may import (the store, the
broker, the message record's lazy headers), and nothing here is on the per-message path
(headers are decoded on first use, the rest is dead lettering, declares and the HTTP API).

Values, as RabbitMQ writes them (rabbit_mgmt_format's choices) and reads them back:

    bool -> t, int -> l (64-bit), float -> d (64-bit), str -> S, bytes/bytearray -> x (read
    back as bytes or bytearray: see below), Decimal -> D (scale and signed 32-bit value, as pamqp reads a declare's
    arguments and RabbitMQ's Java client writes it), datetime -> T (seconds,
    or milliseconds when it has a fraction of a second: a value past 2**32 is read as
    milliseconds), dict -> F, list/tuple -> A (read back as a list), None -> V.
    Read only: b B s u I i L (int), f (float).

Strings take a codec error handler: "surrogateescape" (the default when encoding) gives back
the bytes of a name the broker decoded that way from a client; the store passes
"surrogatepass" both ways, and then reads every S as str and x as bytes. Decoding with
"strict" (the default, for message content) reads as pamqp reads a declare's arguments, so
that headers and bindings compare as they always did (mq._core.headers): an S value that is
not UTF-8 as bytes, x as bytearray, a name that is not UTF-8 is an error.

Decoding is strict: every size is checked, an unknown type byte or trailing bytes is a
FieldTableError (a ValueError), and nesting is bounded.

Entries are the lossless view, for editing a table without re-picking any type: a table as
(name, typed value bytes) pairs in wire order, an array as its typed elements.
"""
from __future__ import annotations

import datetime
import struct
from decimal import Decimal
from typing import Any, Mapping

MAX_DEPTH = 64
_UTC = datetime.timezone.utc
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=_UTC)
_MS = datetime.timedelta(milliseconds=1)
_SECOND = datetime.timedelta(seconds=1)

_I64 = struct.Struct(">q")
_U64 = struct.Struct(">Q")
_F64 = struct.Struct(">d")
_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")

Entries = list[tuple[str, bytes]]  # (name, type byte + encoded value)

# Field types as RabbitMQ names them in its error texts.
TYPE_NAMES = {b"t": "bool", b"b": "byte", b"B": "unsignedbyte", b"s": "short",
              b"u": "unsignedshort", b"I": "signedint", b"i": "unsignedint", b"l": "long",
              b"f": "float", b"d": "double", b"D": "decimal", b"S": "longstr", b"x": "binary",
              b"A": "array", b"T": "timestamp", b"F": "table", b"V": "void"}


class FieldTableError(ValueError):
    """A value that has no AMQP field type, or bytes that are not a field table/value."""


# ---- encoding ---------------------------------------------------------------------------

def encode_table(table: Mapping[str, Any], *, errors: str = "surrogateescape",
                 sort_keys: bool = False) -> bytes:
    """A field table with its u32 size; names in the mapping's order, or sorted at every
    level with `sort_keys` (RabbitMQ's sort_field_table)."""
    return _table(table, 0, errors, sort_keys)


def encode_value(value: Any, *, errors: str = "surrogateescape") -> bytes:
    """One typed field value (type byte first)."""
    return _value(value, 1, errors, False)


def _text(value: str, errors: str) -> bytes:
    try:
        return value.encode("utf-8", errors)
    except UnicodeEncodeError as exc:
        raise FieldTableError(f"string {value[:40]!r} cannot be encoded: {exc.reason}") from None


def _table(table: Mapping, depth: int, errors: str, sort_keys: bool) -> bytes:
    parts = []
    for name, value in sorted(table.items()) if sort_keys else table.items():
        if not isinstance(name, str):
            raise FieldTableError(f"field name {name!r} is not a string")
        key = _text(name, errors)
        if len(key) > 255:
            raise FieldTableError(f"field name {name[:40]!r}... is longer than 255 bytes")
        parts.append(bytes((len(key),)) + key + _value(value, depth + 1, errors, sort_keys))
    body = b"".join(parts)
    return _U32.pack(len(body)) + body


def _value(value: Any, depth: int, errors: str, sort_keys: bool) -> bytes:
    if depth > MAX_DEPTH:
        raise FieldTableError(f"values nested deeper than {MAX_DEPTH} levels")
    if value is None:
        return b"V"
    if value is True or value is False:
        return b"t" + (b"\x01" if value else b"\x00")
    if isinstance(value, int):
        if not -2**63 <= value < 2**63:
            raise FieldTableError(f"integer {value} is out of the range of a 64-bit field")
        return b"l" + _I64.pack(value)
    if isinstance(value, float):
        return b"d" + _F64.pack(value)
    if isinstance(value, str):
        data = _text(value, errors)
        return b"S" + _U32.pack(len(data)) + data
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        return b"x" + _U32.pack(len(data)) + data
    if isinstance(value, Decimal):
        return b"D" + _decimal(value)
    if isinstance(value, datetime.datetime):
        return b"T" + _U64.pack(_timestamp(value))
    if isinstance(value, dict):
        return b"F" + _table(value, depth, errors, sort_keys)
    if isinstance(value, (list, tuple)):
        body = b"".join(_value(v, depth + 1, errors, sort_keys) for v in value)
        return b"A" + _U32.pack(len(body)) + body
    raise FieldTableError(f"{type(value).__name__} value {value!r} is not an AMQP field value")


def _decimal(value: Decimal) -> bytes:
    sign, digits, exponent = value.as_tuple()
    if not isinstance(exponent, int) or not -255 <= exponent <= 0 or \
            not -2**31 <= (raw := int(value.scaleb(-exponent))) < 2**31:
        raise FieldTableError(f"decimal {value} does not fit an AMQP decimal (scale 0..255, "
                              f"signed 32-bit value)")
    return bytes((-exponent,)) + _I32.pack(raw)


def _timestamp(value: datetime.datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=_UTC)  # naive: taken as UTC, as pamqp writes them
    delta = value - _EPOCH
    if not delta.microseconds and 0 <= delta // _SECOND <= 0xFFFFFFFF:
        return delta // _SECOND
    ms = round(delta / _MS)
    if not 0xFFFFFFFF < ms < 2**64:
        raise FieldTableError(f"timestamp {value} is out of the range of an AMQP timestamp")
    return ms


# ---- decoding ---------------------------------------------------------------------------

def decode_table(data: bytes, *, errors: str = "strict") -> dict[str, Any]:
    """The table that is all of `data` (u32 size first)."""
    view = memoryview(data)
    table, end = _read_table(view, 0, len(view), 0, errors)
    if end != len(view):
        raise FieldTableError(f"{len(view) - end} bytes after the field table")
    return table


def decode_value(data: bytes, *, errors: str = "strict") -> Any:
    """The typed value that is all of `data` (type byte first)."""
    view = memoryview(data)
    end = _value_end(view, 0, len(view))
    if end != len(view):
        raise FieldTableError(f"{len(view) - end} bytes after the field value")
    return _read_value(view, 0, end, 1, errors)


def _need(end: int, off: int, n: int, what: str) -> None:
    if off + n > end:
        raise FieldTableError(f"truncated {what} at byte {off}")


def _decode_text(raw: memoryview, errors: str) -> str | bytes:
    data = bytes(raw)
    try:
        return data.decode("utf-8", errors)
    except UnicodeDecodeError:
        if errors == "strict":
            return data  # as pamqp reads a longstr that is not UTF-8
        raise FieldTableError("undecodable string") from None


def _table_end(data: memoryview, off: int, stop: int) -> int:
    """Where the table at `off` (u32 size first) ends, checked against `stop`."""
    _need(stop, off, 4, "table size")
    end = off + 4 + _U32.unpack_from(data, off)[0]
    _need(stop, off + 4, end - off - 4, "table")
    return end


def _fields(data: memoryview, off: int, end: int):
    """(name bytes, value start, value end) of each entry of the table body [off, end)."""
    while off < end:
        n = data[off]
        _need(end, off + 1, n, "field name")
        at = off + 1 + n
        off = _value_end(data, at, end)
        yield data[at - n:at], at, off


def _elements(data: memoryview, off: int, end: int):
    """(start, end) of each typed value of the array body [off, end)."""
    while off < end:
        stop = _value_end(data, off, end)
        yield off, stop
        off = stop


def _value_end(data: memoryview, off: int, end: int) -> int:
    """Where the typed value at `off` ends, checked against `end`."""
    if off >= end:
        raise FieldTableError(f"missing field value at byte {off}")
    kind = data[off]
    size = _SIZES.get(kind)
    if size is None:
        raise FieldTableError(f"unknown field type byte 0x{kind:02x} at byte {off}")
    if size < 0:  # S x A F: u32 size, then that many bytes
        _need(end, off + 1, 4, f"{chr(kind)!r} size")
        size = 4 + _U32.unpack_from(data, off + 1)[0]
    _need(end, off + 1, size, f"{chr(kind)!r} value")
    return off + 1 + size


def _read_table(data: memoryview, off: int, stop: int, depth: int,
                errors: str) -> tuple[dict[str, Any], int]:
    end = _table_end(data, off, stop)
    table: dict[str, Any] = {}
    for name, at, value_end in _fields(data, off + 4, end):
        try:
            key = bytes(name).decode("utf-8", errors)
        except UnicodeDecodeError:
            raise FieldTableError(f"field name {bytes(name)!r} is not UTF-8") from None
        table[key] = _read_value(data, at, value_end, depth + 1, errors)
    return table, end


def _read_value(data: memoryview, off: int, end: int, depth: int, errors: str) -> Any:
    """The value at `off`, which _value_end has found to end at `end`."""
    if depth > MAX_DEPTH:
        raise FieldTableError(f"values nested deeper than {MAX_DEPTH} levels")
    kind = data[off]
    read = _READ.get(kind)
    if read is not None:
        return read(data, off + 1)
    if kind == 0x53:  # S
        return _decode_text(data[off + 5:end], errors)
    if kind == 0x78:  # x
        return bytearray(data[off + 5:end]) if errors == "strict" else bytes(data[off + 5:end])
    if kind == 0x46:  # F
        return _read_table(data, off + 1, end, depth, errors)[0]
    return [_read_value(data, at, stop, depth + 1, errors)  # A
            for at, stop in _elements(data, off + 5, end)]


def _read_timestamp(data: memoryview, off: int) -> datetime.datetime:
    value = _U64.unpack_from(data, off)[0]
    try:  # as pamqp reads it, so that a value comes back as it was given
        return datetime.datetime.fromtimestamp(value / 1000.0 if value > 0xFFFFFFFF else value,
                                               tz=_UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise FieldTableError(f"timestamp {value} out of range") from exc


def _read_decimal(data: memoryview, off: int) -> Decimal:
    scale, raw = data[off], _I32.unpack_from(data, off + 1)[0]
    return Decimal((int(raw < 0), tuple(int(d) for d in str(abs(raw))), -scale))


def _unpack(fmt: str):
    s = struct.Struct(fmt)
    return lambda data, off: s.unpack_from(data, off)[0]


# Size after the type byte; -1: a u32 size, then that many bytes.
_SIZES = {0x74: 1, 0x62: 1, 0x42: 1, 0x73: 2, 0x75: 2, 0x49: 4, 0x69: 4, 0x6C: 8, 0x4C: 8,
          0x66: 4, 0x64: 8, 0x44: 5, 0x54: 8, 0x56: 0, 0x53: -1, 0x78: -1, 0x41: -1, 0x46: -1}

_READ = {
    0x74: lambda data, off: data[off] != 0,   # t
    0x62: _unpack(">b"),                       # b
    0x42: _unpack(">B"),                       # B
    0x73: _unpack(">h"),                       # s
    0x75: _unpack(">H"),                       # u
    0x49: _unpack(">i"),                       # I
    0x69: _unpack(">I"),                       # i
    0x6C: _unpack(">q"),                       # l
    0x4C: _unpack(">Q"),                       # L
    0x66: _unpack(">f"),                       # f
    0x64: _unpack(">d"),                       # d
    0x44: _read_decimal,                       # D
    0x54: _read_timestamp,                     # T
    0x56: lambda data, off: None,              # V
}


# ---- entries: lossless edits -------------------------------------------------------------

def split_table(encoded: bytes) -> Entries:
    """A field table (u32 size first) as (name, typed value) pairs in wire order; names
    decoded with surrogateescape so that join_table gives back any bytes."""
    data = memoryview(encoded)
    return [(bytes(name).decode("utf-8", "surrogateescape"), bytes(data[at:end]))
            for name, at, end in _fields(data, 4, _table_end(data, 0, len(data)))]


def join_table(entries: Entries) -> bytes:
    body = b"".join(bytes([len(k := name.encode("utf-8", "surrogateescape"))]) + k + value
                    for name, value in entries)
    return _U32.pack(len(body)) + body


def table(entries: Entries) -> bytes:
    """A typed table value (type byte F) of entries."""
    return b"F" + join_table(entries)


def split_array(value: bytes) -> list[bytes]:
    """An array value (type byte A included) as its typed elements."""
    data = memoryview(value)
    return [value[at:stop] for at, stop in _elements(data, 5, _value_end(data, 0, len(data)))]


def array(elements: list[bytes]) -> bytes:
    body = b"".join(elements)
    return b"A" + _U32.pack(len(body)) + body


def type_name(value: bytes) -> str:
    return TYPE_NAMES.get(value[:1], "unknown")
