"""The core of deduplication (mq._core.dedup): a message's identity read from its property
bytes, and the exchange's bounded cache, against plain Python models."""
from __future__ import annotations

import datetime
from collections import OrderedDict

from hypothesis import given, settings
from hypothesis import strategies as st

from mq._core.dedup import HEADER, Cache, identity
from mq._core.fieldtable import encode_table
from mq._core.message import Message
from test_core_message import headers_message


# One value of each field type the walk must step over (mq._core.fieldtable's encodings).
VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=False),
    st.text(max_size=20), st.binary(max_size=20),
    st.decimals(places=2, min_value=-10**6, max_value=10**6),
    st.datetimes(min_value=datetime.datetime(1970, 1, 2), max_value=datetime.datetime(2100, 1, 1)
                 ).map(lambda d: d.replace(microsecond=0)),
    st.lists(st.integers(0, 9), max_size=3), st.dictionaries(st.just(HEADER), st.text(max_size=5)))
NAMES = st.text(min_size=1, max_size=8).filter(lambda n: n != HEADER)


def _message(headers: dict) -> Message:
    return headers_message(encode_table(headers))


@settings(max_examples=300, deadline=None)
@given(others=st.dictionaries(NAMES, VALUES, max_size=6), key=st.none() | st.text(max_size=30),
       at=st.integers(0, 6))
def test_the_identity_is_the_top_level_header(others: dict, key: str | None, at: int) -> None:
    """B-DEDUP-1: the identity is the top-level x-deduplication-header's value (a string's
    UTF-8 bytes), wherever it stands among other headers of every type; the same name inside
    a nested table is none."""
    items = list(others.items())
    if key is not None:
        items.insert(min(at, len(items)), (HEADER, key))
    expected = None if key is None else key.encode("utf-8", "surrogateescape")
    assert identity(_message(dict(items))) == expected


def test_a_non_string_identity_is_its_text() -> None:
    """B-DEDUP-1: a number (or any non-string) identifies by its text: 7 and "7" are one."""
    assert identity(_message({HEADER: 7})) == identity(_message({HEADER: "7"})) == b"7"
    assert identity(Message("x", "", b"\x00\x00", b"")) is None  # no headers at all


@settings(max_examples=200, deadline=None)
@given(size=st.integers(1, 12),
       steps=st.lists(st.tuples(st.integers(0, 20), st.integers(0, 3)), max_size=120))
def test_the_cache_keeps_the_newest_identities_in_arrival_order(size: int, steps: list) -> None:
    """B-DEDUP-1, B-DEDUP-4: at most x-cache-size identities, the oldest forgotten first; an
    identity remembered again keeps its place (as LavinMQ's)."""
    cache, model = Cache(size), OrderedDict()
    for key, expiry in steps:
        name = str(key).encode()
        cache.restore(name, expiry)
        if name not in model and len(model) >= size:
            model.popitem(last=False)
        model[name] = expiry
        assert cache.items() == [[k, e] for k, e in model.items()]
    assert len(cache) == len(model)
