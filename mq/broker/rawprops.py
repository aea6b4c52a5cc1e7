"""Lossless edits of message properties at the byte level, for dead lettering and BCC removal.

Decoding into Python values and encoding again would re-pick integer widths and turn doubles
into floats, so headers a consumer reads after dead lettering would differ from what was
published. Here every property, header and x-death entry keeps its exact encoded bytes;
only the entries the broker writes are encoded anew, with RabbitMQ's types.
"""
from __future__ import annotations

import struct

# Basic properties in wire order: flag bit, name, kind (s: shortstr, F: table, o: octet,
# T: timestamp).
PROPERTIES = (
    (0x8000, "content_type", "s"), (0x4000, "content_encoding", "s"), (0x2000, "headers", "F"),
    (0x1000, "delivery_mode", "o"), (0x0800, "priority", "o"), (0x0400, "correlation_id", "s"),
    (0x0200, "reply_to", "s"), (0x0100, "expiration", "s"), (0x0080, "message_id", "s"),
    (0x0040, "timestamp", "T"), (0x0020, "type", "s"), (0x0010, "user_id", "s"),
    (0x0008, "app_id", "s"), (0x0004, "cluster_id", "s"),
)

# Size of a field value after its type byte; None: a 4-byte length then that many bytes.
_FIXED = {b"t": 1, b"b": 1, b"B": 1, b"s": 2, b"u": 2, b"I": 4, b"i": 4, b"f": 4,
          b"l": 8, b"L": 8, b"d": 8, b"T": 8, b"D": 5, b"V": 0}
_SIZED = (b"S", b"x", b"A", b"F")

Entries = list[tuple[str, bytes]]  # (name, type byte + encoded value)


# Field types as RabbitMQ names them in its error texts.
TYPE_NAMES = {b"t": "bool", b"b": "byte", b"B": "unsignedbyte", b"s": "short",
              b"u": "unsignedshort", b"I": "signedint", b"i": "unsignedint", b"l": "long",
              b"f": "float", b"d": "double", b"D": "decimal", b"S": "longstr", b"x": "binary",
              b"A": "array", b"T": "timestamp", b"F": "table", b"V": "void"}


def type_name(value: bytes) -> str:
    return TYPE_NAMES.get(value[:1], "unknown")


def _u32(data: bytes, off: int) -> int:
    return struct.unpack_from(">I", data, off)[0]


def split_properties(raw: bytes) -> dict[str, bytes]:
    """Each present property's encoded bytes by name (the message was checked on publish)."""
    flags = struct.unpack_from(">H", raw)[0]
    off, out = 2, {}
    for bit, name, kind in PROPERTIES:
        if not flags & bit:
            continue
        if kind == "o":
            size = 1
        elif kind == "T":
            size = 8
        elif kind == "s":
            size = 1 + raw[off]
        else:
            size = 4 + _u32(raw, off)
        out[name] = raw[off:off + size]
        off += size
    return out


def join_properties(fields: dict[str, bytes]) -> bytes:
    flags, parts = 0, []
    for bit, name, _ in PROPERTIES:
        if name in fields:
            flags |= bit
            parts.append(fields[name])
    return struct.pack(">H", flags) + b"".join(parts)


def _value_end(data: bytes, off: int) -> int:
    """The end of the typed value starting at `off` (its type byte)."""
    kind = data[off:off + 1]
    if kind in _SIZED:
        return off + 5 + _u32(data, off + 1)
    return off + 1 + _FIXED[kind]


def split_table(encoded: bytes) -> Entries:
    """A field table (with its length prefix) as (name, typed value) pairs in wire order."""
    end = 4 + _u32(encoded, 0)
    off, out = 4, []
    while off < end:
        n = encoded[off]
        name = encoded[off + 1:off + 1 + n].decode("utf-8", "surrogateescape")
        value_at = off + 1 + n
        off = _value_end(encoded, value_at)
        out.append((name, encoded[value_at:off]))
    return out


def join_table(entries: Entries) -> bytes:
    body = b"".join(bytes([len(k := name.encode("utf-8", "surrogateescape"))]) + k + value
                    for name, value in entries)
    return struct.pack(">I", len(body)) + body


def split_array(value: bytes) -> list[bytes]:
    """An array value (type byte `A` included) as its typed elements."""
    end = 5 + _u32(value, 1)
    off, out = 5, []
    while off < end:
        nxt = _value_end(value, off)
        out.append(value[off:nxt])
        off = nxt
    return out


def array(elements: list[bytes]) -> bytes:
    body = b"".join(elements)
    return b"A" + struct.pack(">I", len(body)) + body


def table(entries: Entries) -> bytes:
    return b"F" + join_table(entries)


def longstr(text: str) -> bytes:
    data = text.encode("utf-8", "surrogateescape")
    return b"S" + struct.pack(">I", len(data)) + data


def long(n: int) -> bytes:
    """A 64-bit signed integer ('l'), the type RabbitMQ gives x-death counts."""
    return b"l" + struct.pack(">q", n)


def timestamp(seconds: int) -> bytes:
    return b"T" + struct.pack(">Q", seconds)


def text(value: bytes | None) -> str | None:
    """The string in a longstr ('S') value, else None."""
    if value is None or value[:1] != b"S":
        return None
    return value[5:].decode("utf-8", "surrogateescape")


def integer(value: bytes) -> int | None:
    """Any integer-typed value's number, else None."""
    fmt = {b"b": ">b", b"B": ">B", b"s": ">h", b"u": ">H", b"I": ">i", b"i": ">I",
           b"l": ">q", b"L": ">Q"}.get(value[:1])
    return None if fmt is None else struct.unpack_from(fmt, value, 1)[0]


def shortstr_text(field: bytes) -> str:
    """The text of an encoded shortstr property."""
    return field[1:].decode("utf-8", "surrogateescape")


def with_header(raw: bytes, name: str, value: bytes) -> bytes:
    """Properties with one header set to an encoded value (others kept byte for byte)."""
    fields = split_properties(raw)
    entries = [e for e in split_table(fields["headers"]) if e[0] != name] \
        if "headers" in fields else []
    entries.append((name, value))
    fields["headers"] = join_table(entries)
    return join_properties(fields)
