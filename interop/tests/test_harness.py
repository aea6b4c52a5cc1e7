"""The harness's own logic, without a broker: matching, comparing, judging, the scenario table."""
from __future__ import annotations

import json

from interop.compare import difference
from interop.expect import AnyOf, Error, Unordered, mismatches
from interop.outcome import FAIL, NA, PASS, XFAIL, Outcome, judge, known_failure
from interop.registry import CLIENTS
from interop.scenarios import SCENARIOS, Ctx, Plan


def test_subset_match_allows_extra_keys() -> None:
    assert mismatches({"a": 1}, {"a": 1, "b": 2}) == []
    assert mismatches({"a": 1}, {"a": 2}) == ["a: got 2, expected 1"]
    assert mismatches({"a": [1, 2]}, {"a": [1]}) == ["a: got 1 items [1], expected 2"]


def test_error_observation_fails_a_plain_expectation() -> None:
    assert mismatches({"x": {"body": "b"}}, {"x": {"error": 404}})
    assert mismatches({"x": Error(404)}, {"x": {"error": 404, "detail": "t"}}) == []
    assert mismatches({"x": Error(404)}, {"x": {"error": 405}})


def test_matchers() -> None:
    assert mismatches(AnyOf(["m1"], ["m2"]), ["m2"]) == []
    assert mismatches(AnyOf("ok", Error(404)), {"error": 404}) == []
    assert mismatches(Unordered([1, 2]), [2, 1]) == []
    assert mismatches(Unordered([1, 2]), [2, 2])


def test_judge_statuses() -> None:
    plan = Plan([], {"got": "ok"})
    assert judge(plan, {"got": "ok"}).status == PASS
    assert judge(plan, {"got": "no"}).status == FAIL
    assert judge(plan, {"_unsupported": "qos not supported"}).status == NA
    aborted = judge(plan, {"_abort": {"step": 2, "op": "get", "error": 404, "detail": "NOT_FOUND"}})
    assert aborted.status == FAIL and "step 2 (get)" in aborted.reason
    assert known_failure(judge(plan, {"got": "no"}), "a bug").status == XFAIL
    assert known_failure(judge(plan, {"got": "ok"}), "a bug").status == PASS


def test_unsent_headers_are_left_out_and_noted() -> None:
    plan = Plan([], {"message": {"headers": {"f": {"type": "float", "value": 1.5}, "s": {"type": "str", "value": "x"}}}})
    out = judge(plan, {"sent": {"unsent": ["f"]}, "message": {"headers": {"s": {"type": "str", "value": "x"}}}})
    assert out.status == PASS and out.notes


def test_difference_ignores_volatile_values() -> None:
    a = Outcome(PASS, observed={"m": {"time": 1, "message_id": "x", "body": "b"}})
    b = Outcome(PASS, observed={"m": {"time": 2, "message_id": "y", "body": "b"}})
    assert difference(a, b) is None
    c = Outcome(PASS, observed={"m": {"body": "c"}})
    assert "m.body" in (difference(a, c) or "")
    assert difference(Outcome(PASS), Outcome(FAIL, "why")) == "pass vs FAIL (why)"


def test_every_scenario_builds_json_scripts_and_names_contract_ids() -> None:
    for scenario in SCENARIOS:
        assert scenario.ids and all(i.startswith("B-") for i in scenario.ids)
        for short in (True, False):
            plan = scenario.build(Ctx("t.x", "amqp://guest:guest@127.0.0.1:5672/", short))
            json.dumps(plan.steps)
            assert all("op" in step for step in plan.steps)


def test_client_names_are_unique() -> None:
    assert len({c.name for c in CLIENTS}) == len(CLIENTS)
