"""How the arguments of a durable queue, exchange or binding are kept in the log."""
from __future__ import annotations

import pickle
from typing import Any


def encode_arguments(arguments: dict | None) -> bytes:
    return pickle.dumps(dict(sorted((arguments or {}).items())), protocol=4)


def decode_arguments(data: bytes) -> dict[str, Any]:
    return pickle.loads(data)
