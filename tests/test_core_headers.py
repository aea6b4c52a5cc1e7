"""Headers-exchange matching (mq._core.headers) against RabbitMQ's rules."""
import datetime
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mq._core.headers import HeadersMatcher


def matches(binding_args, headers):
    return HeadersMatcher(binding_args).matches(headers)


def test_all_is_the_default_and_needs_every_key():
    """B-EX-8: x-match all (or absent) needs every binding key present and equal."""
    for args in ({"a": 1, "b": "x"}, {"x-match": "all", "a": 1, "b": "x"}):
        assert matches(args, {"a": 1, "b": "x", "c": 3})
        assert not matches(args, {"a": 1})
        assert not matches(args, {"a": 1, "b": "y"})
        assert not matches(args, None)


def test_any_needs_one_key():
    """B-EX-8: x-match any needs at least one binding key present and equal."""
    args = {"x-match": "any", "a": 1, "b": "x"}
    assert matches(args, {"a": 1})
    assert matches(args, {"a": 2, "b": "x"})
    assert not matches(args, {"a": 2, "b": "y"})
    assert not matches(args, {})
    assert not matches(args, None)


def test_no_keys_all_matches_everything_any_nothing():
    """B-EX-8: with no keys to compare, all matches every message and any none."""
    assert matches({}, None)
    assert matches({"x-match": "all", "x-foo": 1}, {"z": 1})
    assert not matches({"x-match": "any"}, {"z": 1})
    assert not matches({"x-match": "any", "x-foo": 1}, {"x-foo": 1})


def test_x_keys_ignored_unless_with_x():
    """B-EX-8: binding keys starting with x- only count in the -with-x forms."""
    assert matches({"x-foo": 1, "a": 1}, {"a": 1})
    assert not matches({"x-match": "all-with-x", "x-foo": 1, "a": 1}, {"a": 1})
    assert matches({"x-match": "all-with-x", "x-foo": 1, "a": 1}, {"a": 1, "x-foo": 1})
    assert matches({"x-match": "any-with-x", "x-foo": 1}, {"x-foo": 1})
    assert not matches({"x-match": "any-with-x", "x-foo": 1}, {"x-foo": 2})
    # x-match itself never takes part, even in the -with-x forms.
    assert matches({"x-match": "all-with-x"}, {})


def test_void_matches_on_presence():
    """B-EX-8: a void (None) binding value matches any value of a present key."""
    assert matches({"a": None}, {"a": "anything"})
    assert matches({"a": None}, {"a": None})
    assert not matches({"a": None}, {"b": 1})
    assert matches({"x-match": "any", "a": None, "b": 1}, {"a": 0})


@pytest.mark.parametrize("bound, sent, equal", [
    (True, 1, False),
    (1, True, False),
    (False, 0, False),
    (True, True, True),
    (1, 1.0, True),
    (Decimal("1"), 1, False),
    (Decimal("1.0"), Decimal("1"), False),
    (Decimal("1.5"), Decimal("1.5"), True),
    ("abc", b"abc", True),
    (b"\xff", "\xff", False),
    ([1, True], [1, True], True),
    ([True], [1], False),
    ({"k": True}, {"k": 1}, False),
    ({"k": [1]}, {"k": [1.0]}, True),
    (datetime.datetime(2020, 1, 1), datetime.datetime(2020, 1, 1), True),
    ("1", 1, False),
])
def test_values_compare_by_type_and_value(bound, sent, equal):
    """B-EX-8: values compare as RabbitMQ compares them: bool is not int, etc."""
    assert matches({"k": bound}, {"k": sent}) is equal


@pytest.mark.parametrize("args, message", [
    ({"x-match": "some"}, "Invalid x-match field value 'some'"),
    ({"x-match": 1}, "Invalid x-match field type int"),
    ({"x-match": b"all"}, "Invalid x-match field type bytes"),
])
def test_invalid_x_match_is_rejected(args, message):
    """B-EX-8: an invalid x-match is a ValueError naming it (406 on bind)."""
    with pytest.raises(ValueError, match=message):
        HeadersMatcher(args)


# The reference maps each value to the Erlang term RabbitMQ compares with `==`.
def _term(value):
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, Decimal):
        return ("decimal", value.as_tuple())
    if isinstance(value, str):
        return ("binary", value.encode())
    if isinstance(value, bytes):
        return ("binary", value)
    if isinstance(value, list):
        return ("array", tuple(_term(v) for v in value))
    if isinstance(value, dict):
        return ("table", tuple(sorted((k, _term(v)) for k, v in value.items())))
    return ("number", value)


def reference_matches(args, headers):
    """RabbitMQ's headers_match/5, clause by clause, over key-sorted tables."""
    kind = args.get("x-match", "all")
    with_x = kind.endswith("-with-x")
    pattern = sorted(args.items())
    data = sorted((headers or {}).items())
    all_match, any_match = True, False
    while pattern:
        if not all_match and kind.startswith("all"):
            return False
        if any_match and kind.startswith("any"):
            return True
        pk, pv = pattern[0]
        if pk == "x-match" or (pk.startswith("x-") and not with_x):
            pattern.pop(0)
        elif not data:
            all_match = False
            pattern = []
        elif pk > data[0][0]:
            data.pop(0)
        elif pk < data[0][0]:
            all_match = False
            pattern.pop(0)
        else:
            dv = data.pop(0)[1]
            pattern.pop(0)
            if pv is None or _term(pv) == _term(dv):
                any_match = True
            else:
                all_match = False
    return all_match if kind.startswith("all") else any_match


_scalars = st.sampled_from(
    [None, True, False, 0, 1, 1.0, Decimal("1"), Decimal("1.0"), "a", "", b"a", b"\xff"])
_values = st.one_of(_scalars, st.lists(_scalars, max_size=2),
                    st.dictionaries(st.sampled_from(["k", "l"]), _scalars, max_size=2))
_keys = st.sampled_from(["a", "b", "c", "x-a", "x-match"])


@settings(max_examples=500, deadline=None)
@given(
    x_match=st.sampled_from([None, "all", "any", "all-with-x", "any-with-x"]),
    args=st.dictionaries(_keys.filter(lambda k: k != "x-match"), _values, max_size=4),
    headers=st.one_of(st.none(), st.dictionaries(_keys, _values, max_size=5)),
)
def test_matches_reference(x_match, args, headers):
    """B-EX-8: every x-match form agrees with a transcription of RabbitMQ's matcher."""
    if x_match is not None:
        args["x-match"] = x_match
    assert HeadersMatcher(args).matches(headers) == reference_matches(args, headers)
