"""IdMap (mq._core.idmap), the store index's hash table: it must behave as a dict of int keys
(store ids, from 1) to int values would."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mq._core.idmap import IdMap

# A few keys, so that operations hit existing entries often; some share home slots' runs.
KEYS = st.one_of(st.integers(1, 40), st.integers(1, 2**64 - 1))
VALUES = st.integers(-(2**63), 2**63 - 1)
WIDE_VALUES = st.integers(0, 2**96 - 1)


def ops(values):
    return st.lists(st.one_of(
        st.tuples(st.just("set"), KEYS, values),
        st.tuples(st.just("get"), KEYS),
        st.tuples(st.just("pop"), KEYS),
        st.tuples(st.just("del"), KEYS),
        st.tuples(st.just("clear")),
    ), max_size=300)


def run(m, model, steps):
    for op, *args in steps:
        if op == "set":
            m[args[0]] = model[args[0]] = args[1]
        elif op == "get":
            assert m.get(args[0], "none") == model.get(args[0], "none")
            assert (args[0] in m) == (args[0] in model)
        elif op == "pop":
            assert m.pop(args[0], None) == model.pop(args[0], None)
        elif op == "del":
            if args[0] in model:
                del m[args[0]], model[args[0]]
            else:
                with pytest.raises(KeyError):
                    del m[args[0]]
        else:
            m.clear()
            model.clear()
        assert len(m) == len(model)
    assert dict(m.items()) == model
    assert sorted(m) == sorted(m.keys()) == sorted(model)
    for key, value in model.items():
        assert m[key] == value


@settings(max_examples=300, deadline=None)
@given(ops(VALUES))
def test_like_a_dict(steps):
    run(IdMap(), {}, steps)


@settings(max_examples=200, deadline=None)
@given(ops(WIDE_VALUES))
def test_wide_like_a_dict(steps):
    run(IdMap(wide=True), {}, steps)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 5000), max_size=3000), st.randoms(use_true_random=False))
def test_grow_then_drain(keys, rnd):
    """Through growth and shrinking, every entry stays findable."""
    m, model = IdMap(), {}
    for k in keys:
        m[k] = model[k] = k * 3
    order = list(model)
    rnd.shuffle(order)
    for i, k in enumerate(order):
        assert m.pop(k) == model.pop(k)
        if i % 97 == 0:
            assert dict(m.items()) == model
    assert len(m) == 0 and list(m) == []


def test_growth_and_shrink_keep_the_load_bounded():
    m = IdMap()
    assert m.__sizeof__() == IdMap().__sizeof__()  # nothing allocated while empty
    base = m.__sizeof__()
    for k in range(1, 100_001):
        m[k] = -k
    slots = (m.__sizeof__() - base) // 16
    assert slots & (slots - 1) == 0 and 100_000 <= slots * 3 // 4 and slots <= 4 * 100_000
    assert all(m[k] == -k for k in range(1, 100_001))
    for k in range(1, 99_991):
        del m[k]
    assert (m.__sizeof__() - base) // 16 <= 128
    assert dict(m.items()) == {k: -k for k in range(99_991, 100_001)}


def test_deletion_chain():
    """Keys in one run of the table: deleting any of them leaves the others findable."""
    for victim in range(200):
        m = IdMap()
        for k in range(1, 201):
            m[k << 40] = k  # (ids far apart, many of them colliding in a small table)
        del m[(victim + 1) << 40]
        assert dict(m.items()) == {k << 40: k for k in range(1, 201) if k != victim + 1}


def test_wide_values_and_their_columns():
    m = IdMap(wide=True)
    m[1] = (7 << 64) | (123 << 32) | 456   # a location of segment 7, and a record size
    m[2] = 2**96 - 1
    assert m[1] >> 32 == (7 << 32) | 123 and m[1] & 0xFFFFFFFF == 456
    assert m.pop(2) == 2**96 - 1
    with pytest.raises(OverflowError):
        m[3] = 2**96
    with pytest.raises(OverflowError):
        IdMap()[3] = 2**63


def test_key_zero_is_reserved_and_misses_behave_as_in_a_dict():
    m = IdMap()
    with pytest.raises(ValueError):
        m[0] = 1
    assert 0 not in m and m.get(0) is None and m.pop(0, "x") == "x"
    with pytest.raises(KeyError):
        m[5]
    with pytest.raises(KeyError):
        m.pop(5)
    assert not m and m.get(5, 9) == 9


def test_iteration_is_an_error_when_entries_come_or_go():
    m = IdMap()
    for k in range(1, 50):
        m[k] = k
    with pytest.raises(RuntimeError):
        for k in m:
            del m[k]
    with pytest.raises(RuntimeError):
        for k, _ in m.items():
            m[k + 1000] = 0
    before = dict(m.items())
    for k, v in m.items():  # changing a value meanwhile is fine
        m[k] = v + 1
    assert dict(m.items()) == {k: v + 1 for k, v in before.items()}
