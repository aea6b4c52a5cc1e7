"""The topic exchange's routing trie (mq._core.topic) against RabbitMQ's rules."""
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mq._core.topic import TopicTable


def _words(key):
    return key.split(".") if key else []


def reference_match(pattern, key):
    """Plain recursive matcher: `*` is one word, `#` zero or more."""
    def rec(p, w):
        if not p:
            return not w
        if p[0] == "#":
            return rec(p[1:], w) or (bool(w) and rec(p, w[1:]))
        return bool(w) and p[0] in ("*", w[0]) and rec(p[1:], w[1:])
    return rec(_words(pattern), _words(key))


def table(*bindings):
    t = TopicTable()
    for pattern, dest in bindings:
        t.bind(pattern, dest)
    return t


@pytest.mark.parametrize("key, expected", [
    ("quick.orange.rabbit", {"Q1", "Q2"}),
    ("lazy.orange.elephant", {"Q1", "Q2"}),
    ("quick.orange.fox", {"Q1"}),
    ("lazy.brown.fox", {"Q2"}),
    ("lazy.pink.rabbit", {"Q2"}),
    ("quick.brown.fox", set()),
    ("orange", set()),
    ("quick.orange.new.rabbit", set()),
    ("lazy.orange.new.rabbit", {"Q2"}),
])
def test_rabbitmq_tutorial_examples(key, expected):
    """B-EX-7: the examples of RabbitMQ's topic tutorial route as documented."""
    t = table(("*.orange.*", "Q1"), ("*.*.rabbit", "Q2"), ("lazy.#", "Q2"))
    assert sorted(t.match(key)) == sorted(expected)


@pytest.mark.parametrize("pattern, key, matches", [
    ("#", "", True),
    ("#.#", "", True),
    ("*", "", False),
    ("", "", True),
    ("", "a", False),
    ("a", "", False),
    ("a.#", "a", True),
    ("#.a", "a", True),
    ("a.#.b", "a.b", True),
    ("a.#.b", "a.x.y.b", True),
    ("a.#.b", "a.b.c", False),
    ("a.*.b", "a..b", True),
    ("a..b", "a..b", True),
    ("a..b", "a.b", False),
    ("*.*", ".", True),
    ("*", ".", False),
    ("*", "a.", False),
    ("a.*", "a.", True),
    ("a*", "ab", False),
    ("#.*.#", "a.b", True),
    ("#.*", "", False),
])
def test_word_edge_cases(pattern, key, matches):
    """B-EX-7: empty words, the empty key and adjacent wildcards follow RabbitMQ."""
    assert table((pattern, "q")).match(key) == (["q"] if matches else [])
    assert reference_match(pattern, key) == matches


def test_each_dest_once_and_pair_bookkeeping():
    """B-EX-7: a dest reached by several patterns appears once; pairs are counted."""
    t = TopicTable()
    assert t.bind("a.*", "q") is True
    assert t.bind("a.*", "q") is False
    assert t.bind("#", "q") is True
    assert t.bind("a.b", "q") is True
    assert t.bind("a.b", "r") is True
    assert len(t) == 4
    assert sorted(t.match("a.b")) == ["q", "r"]
    assert t.unbind("a.b", "r") is True
    assert t.unbind("a.b", "r") is False
    assert t.unbind("x.y.z", "q") is False
    assert t.match("a.b") == ["q"]
    for pattern in ("a.*", "#", "a.b"):
        assert t.unbind(pattern, "q") is True
    assert len(t) == 0
    assert t.match("a.b") == []


def test_many_hashes_are_not_exponential():
    """B-EX-7: patterns of many `#` words match in polynomial time."""
    t = table(("#." * 12 + "x", "q"), ("#.#.#.#.#.#.#.#", "r"))
    key = ".".join(["w"] * 200)
    start = time.perf_counter()
    assert t.match(key) == ["r"]
    assert t.match(key + ".x") in (["q", "r"], ["r", "q"])
    assert time.perf_counter() - start < 0.5


_pattern_word = st.sampled_from(["a", "b", "", "*", "#"])
_key_word = st.sampled_from(["a", "b", "c", "", "*", "#"])
_patterns = st.lists(_pattern_word, max_size=5).map(".".join)
_keys = st.lists(_key_word, max_size=6).map(".".join)
_ops = st.lists(
    st.tuples(st.booleans(), _patterns, st.sampled_from(["q1", "q2", "q3"])),
    max_size=30)


@settings(max_examples=400, deadline=None)
@given(ops=_ops, keys=st.lists(_keys, min_size=1, max_size=10))
def test_matches_reference_after_bind_unbind(ops, keys):
    """B-EX-7: after any bind/unbind sequence, match equals a plain recursive matcher."""
    t = TopicTable()
    model = set()
    for is_bind, pattern, dest in ops:
        if is_bind:
            assert t.bind(pattern, dest) == ((pattern, dest) not in model)
            model.add((pattern, dest))
        else:
            assert t.unbind(pattern, dest) == ((pattern, dest) in model)
            model.discard((pattern, dest))
        assert len(t) == len(model)
    for key in keys:
        got = t.match(key)
        assert len(got) == len(set(got))
        assert set(got) == {d for p, d in model if reference_match(p, key)}
