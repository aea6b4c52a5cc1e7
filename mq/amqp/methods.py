"""Decoding of the methods that are not on the hot path, through pamqp."""
from __future__ import annotations

from typing import Any

from pamqp import commands as spec

from mq._core.frames import method_id
from mq.broker.errors import FrameError, NotImplemented_, SyntaxError_


def decode_method(payload: bytes) -> Any:
    """A pamqp command object from a method frame payload, or the matching protocol error."""
    try:
        mid = method_id(payload)
    except ValueError:
        raise SyntaxError_("method frame too short to hold class and method ids") from None
    cls = spec.INDEX_MAPPING.get(mid)
    if cls is None:
        raise NotImplemented_(f"unknown class/method {mid >> 16}/{mid & 0xFFFF}")
    method = cls()
    try:
        method.unmarshal(payload[4:])
    except Exception as exc:  # pamqp raises struct.error, ValueError, IndexError...
        # RabbitMQ answers an undecodable method (a field running past the frame, bad UTF-8
        # in a shortstr, an unknown field type) with 501 "cannot decode".
        raise FrameError(f"cannot decode {cls.name} method frame: {exc}") from None
    return method
