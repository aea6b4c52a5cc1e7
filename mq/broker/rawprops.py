"""Message properties at the byte level: the one walk of the property flags, and lossless
edits for dead lettering, BCC removal and x-delivery-count.

Decoding into Python values and encoding again would re-pick integer widths and turn doubles
into floats, so headers a consumer reads after dead lettering would differ from what was
published. Here every property and header keeps its exact encoded bytes (field tables are
edited as mq._core.fieldtable's entries); only what the broker writes is encoded anew, with
RabbitMQ's types. mq.broker.properties builds its decoded view on this walk.
"""
from __future__ import annotations

import struct

from mq._core import fieldtable

# Basic properties in wire order: flag bit, name, kind (s: shortstr, F: table, o: octet,
# T: timestamp).
PROPERTIES = (
    (0x8000, "content_type", "s"), (0x4000, "content_encoding", "s"), (0x2000, "headers", "F"),
    (0x1000, "delivery_mode", "o"), (0x0800, "priority", "o"), (0x0400, "correlation_id", "s"),
    (0x0200, "reply_to", "s"), (0x0100, "expiration", "s"), (0x0080, "message_id", "s"),
    (0x0040, "timestamp", "T"), (0x0020, "type", "s"), (0x0010, "user_id", "s"),
    (0x0008, "app_id", "s"), (0x0004, "cluster_id", "s"),
)


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
            size = 4 + struct.unpack_from(">I", raw, off)[0]
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


def shortstr_text(field: bytes) -> str:
    """The text of an encoded shortstr property (as the message record decodes it)."""
    return field[1:].decode("utf-8", "surrogateescape")


def long(n: int) -> bytes:
    """A 64-bit signed integer ('l'), the type RabbitMQ gives x-death and delivery counts."""
    return fieldtable.encode_value(n)


def with_header(raw: bytes, name: str, value: bytes) -> bytes:
    """Properties with one header set to an encoded value (others kept byte for byte)."""
    fields = split_properties(raw)
    entries = [e for e in fieldtable.split_table(fields["headers"]) if e[0] != name] \
        if "headers" in fields else []
    entries.append((name, value))
    fields["headers"] = fieldtable.join_table(entries)
    return join_properties(fields)


_LONG = struct.Struct(">q")


class HeaderStamp:
    """Properties with one header set to a 64-bit value that changes per delivery
    (x-delivery-count, x-stream-offset). A publisher's messages mostly share their
    properties: those are split once around the value's 8 bytes, and each delivery joins
    the two halves around its value."""

    __slots__ = ("name", "_key", "_template")

    def __init__(self, name: str) -> None:
        self.name = name
        self._key = bytes([len(name)]) + name.encode() + b"l"  # the table key, type 'l'
        self._template: tuple[bytes, bytes, bytes] | None = None

    def __call__(self, props: bytes, value: int) -> bytes:
        template = self._template
        if template is None or template[0] != props:
            marked = with_header(props, self.name, long(0))
            at = marked.rindex(self._key) + len(self._key)
            template = self._template = (props, marked[:at], marked[at + 8:])
        return b"".join((template[1], _LONG.pack(value), template[2]))
