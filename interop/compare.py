"""Where two brokers differ in what the same client observed in the same scenario."""
from __future__ import annotations

from typing import Any

from .outcome import NA, NOT_INSTALLED, SKIPPED, Outcome

# Values that differ between any two runs by nature, not by broker behaviour: error texts,
# x-death times, and the random message_id some libraries (aio-pika, aiormq) add.
VOLATILE_KEYS = {"detail", "time", "message_id"}


def normalized(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: normalized(v) for k, v in value.items() if k not in VOLATILE_KEYS}
    if isinstance(value, list):
        return [normalized(v) for v in value]
    return value


def first_difference(a: Any, b: Any, path: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            sub = f"{path}.{key}" if path else str(key)
            if key not in a or key not in b:
                return f"{sub}: only on {'second' if key not in a else 'first'} broker"
            found = first_difference(a[key], b[key], sub)
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            found = first_difference(x, y, f"{path}[{i}]")
            if found:
                return found
        return None
    if a != b:
        return f"{path or 'result'}: {a!r:.80} vs {b!r:.80}"
    return None


def difference(a: Outcome, b: Outcome) -> str | None:
    """A short description of how two outcomes of one cell differ, or None."""
    if {a.status, b.status} <= {NA, NOT_INSTALLED, SKIPPED}:
        return None
    if a.status != b.status:
        why = a.reason or b.reason
        return f"{a.status} vs {b.status}" + (f" ({why})" if why else "")
    if a.observed is None or b.observed is None:
        return None
    return first_difference(normalized(a.observed), normalized(b.observed))
