"""Structured log lines: `event key=value key="value with spaces"`, one line per event."""
from __future__ import annotations

import json


def kv(**fields: object) -> str:
    """key=value pairs; values with spaces, quotes or '=' are JSON-quoted, None is '-'."""
    return " ".join(f"{key}={_value(value)}" for key, value in fields.items())


def _value(value: object) -> str:
    text = "-" if value is None else str(value)
    if not text or any(c in text for c in ' "=\n\t\\'):
        return json.dumps(text, ensure_ascii=False)
    return text
