"""Body encoding shared by the harness and the Python drivers.

A body in a script is either a string (sent as UTF-8) or ``{"size": n}``: n bytes of the
pattern ``i % 251`` (a prime period, so a shifted or dropped frame changes the digest).
What a consumer saw is reported as the string itself when it is short UTF-8 text, otherwise
as ``{"len": n, "sha256": hex}``; every driver, in every language, does the same.
"""
from __future__ import annotations

import hashlib
from typing import Any

SHORT = 200


def make_body(spec: Any) -> bytes:
    if isinstance(spec, dict):
        n = int(spec["size"])
        pattern = bytes(range(251))
        return (pattern * (n // 251 + 1))[:n]
    return str(spec).encode()


def describe_body(body: bytes) -> Any:
    if len(body) <= SHORT:
        try:
            return body.decode()
        except UnicodeDecodeError:
            pass
    return {"len": len(body), "sha256": hashlib.sha256(body).hexdigest()}


def expected_body(spec: Any) -> Any:
    return describe_body(make_body(spec))
