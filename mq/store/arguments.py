"""How the arguments of a durable queue, exchange or binding are kept in the log (B-DUR-10).

As an AMQP field table (u32 size, then name/typed-value pairs; the types RabbitMQ uses:
t b B s u I i l f d D S x A T F V): data, never code, so a tampered data directory cannot make
the broker run anything. Arguments are the Python values pamqp decoded from a declare (or the
management API's JSON), and they must come back equal, with the same types, since a redeclare
compares them and a binding is known by them. pamqp's own encoder does not round-trip them
(floats go out as 32-bit, bytes as void), hence this codec:

    bool -> t, int -> l (64-bit), float -> d (64-bit), str -> S, bytes/bytearray -> x (read
    back as bytes), Decimal -> D (scale and unsigned 32-bit value, as pamqp reads it),
    datetime -> T (seconds, or milliseconds when it has a fraction of a second: pamqp reads a
    value past 2**32 as milliseconds), dict -> F, list/tuple -> A (read back as a list),
    None -> V.

Decoding is strict: every size is checked, an unknown type byte or trailing bytes is an
error, and nesting is bounded; decode_arguments raises ArgumentsError (a ValueError).
"""
from __future__ import annotations

import datetime
import struct
from decimal import Decimal
from typing import Any

MAX_DEPTH = 64
_UTC = datetime.timezone.utc
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=_UTC)
_MS = datetime.timedelta(milliseconds=1)

_I64 = struct.Struct(">q")
_U64 = struct.Struct(">Q")
_F64 = struct.Struct(">d")
_U32 = struct.Struct(">I")


class ArgumentsError(ValueError):
    """Arguments that cannot be stored, or stored bytes that are not an arguments table."""


def encode_arguments(arguments: dict | None) -> bytes:
    """The field table of arguments, names in sorted order (a binding is known by these
    bytes, so the same arguments always give the same ones)."""
    return _table(dict(sorted((arguments or {}).items())), 0)


def decode_arguments(data: bytes) -> dict[str, Any]:
    table, end = _read_table(memoryview(data), 0, 0)
    if end != len(data):
        raise ArgumentsError(f"{len(data) - end} bytes after the arguments table")
    return table


# ---- encoding ---------------------------------------------------------------------------

def _text(value: str) -> bytes:
    return value.encode("utf-8", "surrogatepass")


def _table(table: dict, depth: int) -> bytes:
    parts = []
    for name, value in table.items():
        if not isinstance(name, str):
            raise ArgumentsError(f"argument name {name!r} is not a string")
        key = _text(name)
        if len(key) > 255:
            raise ArgumentsError(f"argument name {name[:40]!r}... is longer than 255 bytes")
        parts.append(bytes((len(key),)) + key + _value(value, depth + 1))
    body = b"".join(parts)
    return _U32.pack(len(body)) + body


def _value(value: Any, depth: int) -> bytes:
    if depth > MAX_DEPTH:
        raise ArgumentsError(f"arguments nested deeper than {MAX_DEPTH} levels")
    if value is None:
        return b"V"
    if value is True or value is False:
        return b"t" + (b"\x01" if value else b"\x00")
    if isinstance(value, int):
        if not -2**63 <= value < 2**63:
            raise ArgumentsError(f"integer {value} is out of the range of a 64-bit field")
        return b"l" + _I64.pack(value)
    if isinstance(value, float):
        return b"d" + _F64.pack(value)
    if isinstance(value, str):
        data = _text(value)
        return b"S" + _U32.pack(len(data)) + data
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        return b"x" + _U32.pack(len(data)) + data
    if isinstance(value, Decimal):
        return b"D" + _decimal(value)
    if isinstance(value, datetime.datetime):
        return b"T" + _U64.pack(_timestamp(value))
    if isinstance(value, dict):
        return b"F" + _table(value, depth)
    if isinstance(value, (list, tuple)):
        body = b"".join(_value(v, depth + 1) for v in value)
        return b"A" + _U32.pack(len(body)) + body
    raise ArgumentsError(f"{type(value).__name__} value {value!r} is not an AMQP field value")


def _decimal(value: Decimal) -> bytes:
    sign, digits, exponent = value.as_tuple()
    raw = int("".join(map(str, digits))) if isinstance(exponent, int) else -1
    if sign or not isinstance(exponent, int) or not -255 <= exponent <= 0 or \
            not 0 <= raw <= 0xFFFFFFFF:
        raise ArgumentsError(f"decimal {value} does not fit an AMQP decimal (scale 0..255, "
                             f"unsigned 32-bit value)")
    return bytes((-exponent,)) + _U32.pack(raw)


def _timestamp(value: datetime.datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=_UTC)  # naive: taken as UTC, as pamqp writes them
    delta = value - _EPOCH
    if not delta.microseconds and 0 <= delta // datetime.timedelta(seconds=1) <= 0xFFFFFFFF:
        return delta // datetime.timedelta(seconds=1)
    ms = round(delta / _MS)
    if not 0xFFFFFFFF < ms < 2**64:
        raise ArgumentsError(f"timestamp {value} is out of the range of an AMQP timestamp")
    return ms


# ---- decoding ---------------------------------------------------------------------------

def _need(data: memoryview, off: int, n: int, what: str) -> None:
    if off + n > len(data):
        raise ArgumentsError(f"truncated {what} at byte {off}")


def _read_table(data: memoryview, off: int, depth: int) -> tuple[dict[str, Any], int]:
    _need(data, off, 4, "table size")
    end = off + 4 + _U32.unpack_from(data, off)[0]
    _need(data, off + 4, end - off - 4, "table")
    off += 4
    table: dict[str, Any] = {}
    while off < end:
        n = data[off]
        if off + 1 + n > end:
            raise ArgumentsError(f"truncated field name at byte {off}")
        name = bytes(data[off + 1:off + 1 + n]).decode("utf-8", "surrogatepass")
        table[name], off = _read_value(data, off + 1 + n, end, depth + 1)
    return table, end


def _read_value(data: memoryview, off: int, end: int, depth: int) -> tuple[Any, int]:
    if depth > MAX_DEPTH:
        raise ArgumentsError(f"arguments nested deeper than {MAX_DEPTH} levels")
    if off >= end:
        raise ArgumentsError(f"missing field value at byte {off}")
    kind = data[off]
    off += 1
    fixed = _FIXED.get(kind)
    if fixed is not None:
        size, read = fixed
        if off + size > end:
            raise ArgumentsError(f"truncated {chr(kind)!r} value at byte {off}")
        return read(data, off), off + size
    if kind in (0x53, 0x78, 0x41):  # S x A: u32 size, then that many bytes
        if off + 4 > end:
            raise ArgumentsError(f"truncated {chr(kind)!r} size at byte {off}")
        stop = off + 4 + _U32.unpack_from(data, off)[0]
        if stop > end:
            raise ArgumentsError(f"truncated {chr(kind)!r} value at byte {off}")
        raw = data[off + 4:stop]
        if kind == 0x53:
            return bytes(raw).decode("utf-8", "surrogatepass"), stop
        if kind == 0x78:
            return bytes(raw), stop
        items, at = [], off + 4
        while at < stop:
            item, at = _read_value(data, at, stop, depth + 1)
            items.append(item)
        return items, stop
    if kind == 0x46:  # F
        table, stop = _read_table(data[:end], off, depth)
        return table, stop
    raise ArgumentsError(f"unknown field type byte 0x{kind:02x} at byte {off - 1}")


def _read_timestamp(data: memoryview, off: int) -> datetime.datetime:
    value = _U64.unpack_from(data, off)[0]
    try:  # as pamqp reads it, so that a value comes back as the declare gave it
        return datetime.datetime.fromtimestamp(value / 1000.0 if value > 0xFFFFFFFF else value,
                                               tz=_UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise ArgumentsError(f"timestamp {value} out of range") from exc


def _read_decimal(data: memoryview, off: int) -> Decimal:
    scale, raw = data[off], _U32.unpack_from(data, off + 1)[0]
    return Decimal((0, tuple(int(d) for d in str(raw)), -scale))


def _unpack(fmt: str):
    s = struct.Struct(fmt)
    return lambda data, off: s.unpack_from(data, off)[0]


_FIXED = {
    0x74: (1, lambda data, off: data[off] != 0),   # t
    0x62: (1, _unpack(">b")),                       # b
    0x42: (1, _unpack(">B")),                       # B
    0x73: (2, _unpack(">h")),                       # s
    0x75: (2, _unpack(">H")),                       # u
    0x49: (4, _unpack(">i")),                       # I
    0x69: (4, _unpack(">I")),                       # i
    0x6C: (8, _unpack(">q")),                       # l
    0x4C: (8, _unpack(">Q")),                       # L
    0x66: (4, _unpack(">f")),                       # f
    0x64: (8, _unpack(">d")),                       # d
    0x44: (5, _read_decimal),                       # D
    0x54: (8, _read_timestamp),                     # T
    0x56: (0, lambda data, off: None),              # V
}
