"""Message properties as Python values, by AMQP name (`type`, as RabbitMQ's hash-property
and management API spell it), for the rare paths that read or change them: direct reply-to,
hash-property, the management API. The hot path keeps the wire bytes untouched.

Built on rawprops' one walk of the property flags and mq._core.fieldtable: a property is
decoded when read and encoded when set, so every one left alone (headers too) keeps its
exact wire bytes.
"""
from __future__ import annotations

import datetime
import struct
from typing import Any, Iterator, Mapping

from mq._core import fieldtable
from mq._core.message import Message
from mq.broker import rawprops

_KIND = {name: kind for _, name, kind in rawprops.PROPERTIES}


class Properties:
    """A message's properties: attributes by AMQP name, None when not set."""
    __slots__ = ("_fields",)

    def __init__(self, fields: dict[str, bytes] | None = None) -> None:
        object.__setattr__(self, "_fields", {} if fields is None else fields)

    def __getattr__(self, name: str) -> Any:
        kind = _KIND.get(name)
        if kind is None:
            raise AttributeError(f"no message property {name!r}")
        raw = self._fields.get(name)
        return None if raw is None else _decode(kind, raw)

    def __setattr__(self, name: str, value: Any) -> None:
        kind = _KIND.get(name)
        if kind is None:
            raise ValueError(f"unknown property {name!r}")
        if value is None:
            self._fields.pop(name, None)
        else:
            self._fields[name] = _encode(name, kind, value)

    def items(self) -> Iterator[tuple[str, Any]]:
        """The properties set, in wire order."""
        for _, name, _ in rawprops.PROPERTIES:
            if name in self._fields:
                yield name, getattr(self, name)


def decode(raw: bytes) -> Properties:
    """The properties of raw property bytes (flags included)."""
    return Properties(rawprops.split_properties(raw))


def encode(props: Properties) -> bytes:
    return rawprops.join_properties(props._fields)


def build(values: Mapping[str, Any]) -> bytes:
    """Encoded properties from values by AMQP name (a management API publish). None and ""
    leave a property unset and delivery_mode must be 1 or 2, as when pamqp encoded these;
    ValueError or TypeError for a value that has no encoding."""
    props = Properties()
    for name, value in values.items():
        if name == "delivery_mode" and value not in (None, 1, 2):
            raise ValueError(f"Invalid delivery_mode value: {value}")
        if name == "cluster_id" and value not in (None, ""):
            raise ValueError("cluster_id must be empty")
        setattr(props, name, None if value == "" else value)
    return encode(props)


def property_value(msg: Message, name: str) -> Any:
    """The value of one property of a message, by its AMQP name (None when absent)."""
    return getattr(decode(msg.props), name, None)


def _decode(kind: str, raw: bytes) -> Any:
    if kind == "s":
        return rawprops.shortstr_text(raw)
    if kind == "o":
        return raw[0]
    if kind == "T":
        return fieldtable.decode_value(b"T" + raw)
    return fieldtable.decode_table(raw)


def _encode(name: str, kind: str, value: Any) -> bytes:
    if kind == "s":
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a string, not {type(value).__name__}")
        data = value.encode("utf-8", "surrogateescape")  # as the message record decodes it
        if len(data) > 255:
            raise ValueError(f"{name} is longer than 255 bytes")
        return bytes((len(data),)) + data
    if kind == "o":
        if not isinstance(value, int) or not 0 <= value <= 255:
            raise ValueError(f"{name} must be an integer from 0 to 255, not {value!r}")
        return bytes((value,))
    if kind == "T":
        if isinstance(value, int) and not isinstance(value, bool):  # seconds, as JSON has it
            if not 0 <= value < 2**64:
                raise ValueError(f"timestamp {value} is out of range")
            return struct.pack(">Q", value)
        if not isinstance(value, datetime.datetime):
            raise TypeError(f"timestamp must be seconds or a datetime, not {value!r}")
        return fieldtable.encode_value(value)[1:]
    if not isinstance(value, dict):
        raise TypeError(f"headers must be a table, not {type(value).__name__}")
    return fieldtable.encode_table(value, sort_keys=True)  # RabbitMQ's sort_field_table
