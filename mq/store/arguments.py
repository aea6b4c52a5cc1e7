"""How the arguments of a durable queue, exchange or binding are kept in the log (B-DUR-10).

As an AMQP field table, encoded by mq._core.fieldtable: data, never code, so a tampered data
directory cannot make the broker run anything. Arguments are the Python values decoded from
a declare (or the management API's JSON), and they must come back equal, with the same
types, since a redeclare compares them and a binding is known by them: the codec's types do
that (ints as l, floats as d, bytes as x, ...). Strings are written with surrogatepass, so
a name with any code point (a lone surrogate from JSON too) reads back as it was given.
Decoding is strict; a bad record raises ArgumentsError (a ValueError).
"""
from __future__ import annotations

from typing import Any

from mq._core.fieldtable import FieldTableError as ArgumentsError
from mq._core.fieldtable import decode_table, encode_table

__all__ = ["ArgumentsError", "decode_arguments", "encode_arguments"]


def encode_arguments(arguments: dict | None) -> bytes:
    """The field table of arguments, names in sorted order (a binding is known by these
    bytes, so the same arguments always give the same ones); nested tables as given."""
    return encode_table(dict(sorted((arguments or {}).items())), errors="surrogatepass")


def decode_arguments(data: bytes) -> dict[str, Any]:
    return decode_table(data, errors="surrogatepass")
