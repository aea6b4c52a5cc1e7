"""Comparing decoded AMQP field values, as the tests of the codec and the store need."""
from __future__ import annotations

from decimal import Decimal
from typing import Any


def same(a: Any, b: Any) -> bool:
    """Equal with the same types (bytes and bytearray alike; decimals digit for digit)."""
    a, b = (bytes(v) if isinstance(v, bytearray) else v for v in (a, b))
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, Decimal):
        return a.as_tuple() == b.as_tuple()
    return a == b
