"""Full decoding and re-encoding of message properties, for the rare paths that change them
(dead lettering, hash-property); the hot path keeps the wire bytes untouched."""
from __future__ import annotations

from typing import Any

from pamqp.commands import Basic
from pamqp.header import ContentHeader

from mq._core.message import Message

# AMQP property names as RabbitMQ's hash-property and management API spell them.
_ATTRIBUTE_OF = {"type": "message_type"}


def decode(raw: bytes) -> Basic.Properties:
    """Decode raw property bytes (flags included) into pamqp's Basic.Properties."""
    offset, flags = ContentHeader._get_flags(raw)
    props = Basic.Properties()
    props.unmarshal(flags, raw[offset:])
    return props


def encode(props: Basic.Properties) -> bytes:
    return props.marshal()


def property_value(msg: Message, name: str) -> Any:
    """The value of one property of a message, by its AMQP name (None when absent)."""
    return getattr(decode(msg.props), _ATTRIBUTE_OF.get(name, name), None)
