"""Comparing what a client observed with what a scenario expects.

An expectation is plain data: a dict matches when every key it names matches (extra keys in
the observation are allowed, so drivers may report more than is checked); a list matches
element by element; anything else by equality. Matcher objects cover the few looser cases.
"""
from __future__ import annotations

from typing import Any


class Matcher:
    def mismatch(self, observed: Any, path: str) -> str | None:  # pragma: no cover - interface
        raise NotImplementedError

    def to_json(self) -> Any:
        return repr(self)


class AnyOf(Matcher):
    """One of several acceptable values (e.g. a reply code or a client's 'closed')."""

    def __init__(self, *options: Any) -> None:
        self.options = options

    def mismatch(self, observed: Any, path: str) -> str | None:
        for option in self.options:
            if not mismatches(option, observed, path):
                return None
        return f"{path or 'result'}: got {short(observed)}, expected one of {short(list(self.options))}"

    def __repr__(self) -> str:
        return f"AnyOf{self.options!r}"


class Unordered(Matcher):
    """A list compared as a multiset: routing to several queues has no defined order."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items

    def mismatch(self, observed: Any, path: str) -> str | None:
        if not isinstance(observed, list):
            return f"{path}: got {short(observed)}, expected a list"
        key = lambda v: repr(v)  # noqa: E731 - values are JSON, so repr sorts them stably
        if sorted(observed, key=key) != sorted(self.items, key=key):
            return f"{path}: got {short(observed)}, expected (any order) {short(self.items)}"
        return None

    def __repr__(self) -> str:
        return f"Unordered({self.items!r})"


class Error(Matcher):
    """The operation failed with this AMQP reply code."""

    def __init__(self, *codes: Any) -> None:
        self.codes = codes

    def mismatch(self, observed: Any, path: str) -> str | None:
        if isinstance(observed, dict) and observed.get("error") in self.codes:
            return None
        want = "/".join(str(c) for c in self.codes)
        return f"{path}: got {short(observed)}, expected error {want}"

    def __repr__(self) -> str:
        return f"Error{self.codes!r}"


class Between(Matcher):
    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = low, high

    def mismatch(self, observed: Any, path: str) -> str | None:
        if isinstance(observed, (int, float)) and self.low <= observed <= self.high:
            return None
        return f"{path}: got {short(observed)}, expected {self.low}..{self.high}"


def mismatches(expected: Any, observed: Any, path: str = "") -> list[str]:
    """Every difference between expectation and observation, as readable lines."""
    if isinstance(expected, Matcher):
        problem = expected.mismatch(observed, path)
        return [problem] if problem else []
    if isinstance(observed, dict) and "error" in observed and not (
        isinstance(expected, dict) and "error" in expected
    ):
        return [f"{path or 'result'}: failed with {short(observed)}"]
    if isinstance(expected, dict):
        if not isinstance(observed, dict):
            return [f"{path}: got {short(observed)}, expected an object"]
        out: list[str] = []
        for key, want in expected.items():
            sub = f"{path}.{key}" if path else str(key)
            if key not in observed:
                out.append(f"{sub}: missing")
            else:
                out.extend(mismatches(want, observed[key], sub))
        return out
    if isinstance(expected, list):
        if not isinstance(observed, list):
            return [f"{path}: got {short(observed)}, expected a list"]
        if len(observed) != len(expected):
            return [f"{path}: got {len(observed)} items {short(observed)}, expected {len(expected)}"]
        out = []
        for i, (want, got) in enumerate(zip(expected, observed)):
            out.extend(mismatches(want, got, f"{path}[{i}]"))
        return out
    if expected != observed:
        return [f"{path or 'result'}: got {short(observed)}, expected {short(expected)}"]
    return []


def short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def to_json(expected: Any) -> Any:
    """The expectation as JSON (matchers as their repr), for reports."""
    if isinstance(expected, Matcher):
        return expected.to_json()
    if isinstance(expected, dict):
        return {k: to_json(v) for k, v in expected.items()}
    if isinstance(expected, list):
        return [to_json(v) for v in expected]
    return expected
