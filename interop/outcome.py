"""Turning a driver's observation into a verdict for one matrix cell."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from .expect import mismatches
from .scenarios import Plan

PASS, FAIL, TIMEOUT, NA, SKIPPED, NOT_INSTALLED = "pass", "FAIL", "timeout", "n/a", "skipped", "not installed"
XFAIL = "xfail"  # a failure the client library causes on every broker (registry.Client.known_failures)
FAILING = {FAIL, TIMEOUT}


@dataclass
class Outcome:
    status: str
    reason: str = ""
    observed: dict[str, Any] | None = None
    expected: Any = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def adjusted_expectation(plan: Plan, observed: dict[str, Any]) -> dict[str, Any]:
    """Leave out header types the client said it cannot send (reported as a note, not a pass)."""
    expected = plan.expected
    unsent = observed.get("sent", {}).get("unsent") if isinstance(observed.get("sent"), dict) else None
    if unsent and "message" in expected:
        expected = copy.copy(expected)
        message = dict(expected["message"])
        message["headers"] = {k: v for k, v in message["headers"].items() if k not in unsent}
        expected["message"] = message
    return expected


def known_failure(outcome: Outcome, why: str | None) -> Outcome:
    """A FAIL that a known client bug explains is reported as xfail, with both reasons."""
    if why and outcome.status == FAIL:
        outcome.status = XFAIL
        outcome.reason = f"known client bug: {why} ({outcome.reason})"
    return outcome


def judge(plan: Plan, observed: dict[str, Any]) -> Outcome:
    if "_crash" in observed:
        last = observed["_crash"].strip().splitlines()[-1:]
        return Outcome(FAIL, f"driver crashed: {' '.join(last)}", observed)
    if "_unsupported" in observed:
        return Outcome(NA, observed["_unsupported"], observed)
    if "_abort" in observed:
        a = observed["_abort"]
        return Outcome(FAIL, f"step {a['step']} ({a['op']}) failed: {a.get('detail') or a['error']}"[:300],
                       observed)
    expected = adjusted_expectation(plan, observed)
    problems = mismatches(expected, observed)
    notes = []
    sent = observed.get("sent")
    if isinstance(sent, dict) and sent.get("unsent"):
        notes.append("client cannot send header types: " + ", ".join(sent["unsent"]))
    if problems:
        return Outcome(FAIL, "; ".join(problems[:3]), observed, expected, notes=notes)
    return Outcome(PASS, "", observed, expected, notes=notes)
