"""The message record's reads of its headers from the property bytes (mq._core.message):
integer headers of every width, without decoding the table."""
from __future__ import annotations

import struct

import pytest

from mq._core.fieldtable import encode_table
from mq._core.message import Message


def headers_message(table: bytes) -> Message:
    """A message whose properties are this encoded headers table alone."""
    return Message("x", "", b"\x20\x00" + table, b"")  # property flags: headers only


@pytest.mark.parametrize("kind, fmt, value", [
    (b"b", ">b", -5), (b"B", ">B", 250), (b"s", ">h", -300), (b"u", ">H", 65000),
    (b"I", ">i", -2**31), (b"i", ">I", 2**32 - 1), (b"l", ">q", -2**63), (b"L", ">Q", 2**64 - 1)])
def test_an_integer_header_of_any_width_is_read(kind: bytes, fmt: str, value: int) -> None:
    """B-DELAY-1, B-DEDUP-1: x-delay and x-cache-ttl are read whatever integer type the client
    encoded them with (pika sends a long, other clients narrower types), after other
    headers."""
    other = encode_table({"first": "a", "nested": {"x-delay": 1}})[4:]
    field = bytes([7]) + b"x-delay" + kind + struct.pack(fmt, value)
    msg = headers_message(struct.pack(">I", len(other) + len(field)) + other + field)
    assert msg.integer_header(b"x-delay") == value


def test_a_header_of_another_type_or_absent_is_none() -> None:
    """B-DELAY-1: a string, a boolean or no such header is not read as an integer here (the
    decoded headers decide); a header inside a nested table is not the message's."""
    for headers in ({"x-delay": "5000"}, {"x-delay": True}, {}, {"t": {"x-delay": 5}}):
        assert headers_message(encode_table(headers)).integer_header(b"x-delay") is None
