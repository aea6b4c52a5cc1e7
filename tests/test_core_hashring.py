"""The x-consistent-hash ring (mq._core.hashring)."""
import random

import pytest

from mq._core.hashring import MAX_WEIGHT, HashRing

KEYS = [random.Random(12).randbytes(8).hex() + str(i) for i in range(30_000)]


def ring(*dests):
    r = HashRing()
    for name, weight in dests:
        r.add(name, name, weight)
    return r


def picks(r):
    return [r.pick(k) for k in KEYS]


def test_same_key_same_dest():
    """B-EX-12: a key always picks the same dest, whatever order dests were added in."""
    r1 = ring(("q1", 1), ("q2", 2), ("q3", 3))
    r2 = ring(("q3", 3), ("q1", 1), ("q2", 2))
    assert picks(r1) == picks(r1) == picks(r2)
    assert r1.pick("k\u00e9y") == r1.pick("k\u00e9y".encode())


def test_spread_is_proportional_to_weight():
    """B-EX-12: weights 1, 2, 3 get 1/6, 2/6, 3/6 of 30k keys, within 10%."""
    counts = {"q1": 0, "q2": 0, "q3": 0}
    for dest in picks(ring(("q1", 1), ("q2", 2), ("q3", 3))):
        counts[dest] += 1
    for dest, weight in (("q1", 1), ("q2", 2), ("q3", 3)):
        expected = len(KEYS) * weight / 6
        assert abs(counts[dest] - expected) <= 0.1 * expected, counts


def test_removing_a_dest_moves_only_its_keys():
    """B-EX-12: removing a dest moves only the keys that were on it."""
    r = ring(("q1", 1), ("q2", 2), ("q3", 3))
    before = picks(r)
    assert r.remove("q2") is True
    assert r.remove("q2") is False
    after = picks(r)
    for old, new in zip(before, after):
        assert new == old if old != "q2" else new in ("q1", "q3")


def test_adding_a_dest_moves_keys_only_to_it():
    """B-EX-12: adding a dest takes keys only for itself."""
    r = ring(("q1", 1), ("q2", 2))
    before = picks(r)
    r.add("q3", "q3", 3)
    after = picks(r)
    assert all(new in (old, "q3") for old, new in zip(before, after))
    assert after.count("q3") > 0


def test_readd_replaces_weight_and_empty_ring_picks_none():
    """B-EX-12: re-adding a dest replaces its weight; an empty ring routes nowhere."""
    r = ring(("q1", 1), ("q2", 1))
    r.add("q1", "q1", 5)
    assert len(r) == 2
    assert picks(r).count("q1") > 3 * picks(r).count("q2")
    r.remove("q1")
    r.remove("q2")
    assert len(r) == 0
    assert r.pick("k") is None


@pytest.mark.parametrize("weight", [0, -1, MAX_WEIGHT + 1])
def test_weight_out_of_range_is_rejected(weight):
    """B-EX-12: a weight below 1 (or over the memory bound) is a ValueError."""
    with pytest.raises(ValueError, match="weight"):
        HashRing().add("q", "q", weight)
