"""mq._core.fieldtable, the one field-table codec, and mq.broker.properties built on it."""
from __future__ import annotations

import datetime
import struct
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from fieldvalues import same
from pamqp.decode import field_table as pamqp_field_table

from mq._core import fieldtable as ft
from mq.broker import properties

UTC = datetime.timezone.utc


# ---- Python values: what the encoder takes, and decoding gives back ----------------------

decimals = st.builds(lambda raw, scale: Decimal((int(raw < 0), tuple(map(int, str(abs(raw)))),
                                                 -scale)),
                     st.integers(-2**31, 2**31 - 1), st.integers(0, 255))
seconds = st.integers(0, 2**32 - 1).map(lambda s: datetime.datetime.fromtimestamp(s, UTC))
millis = st.integers(2**32, 253402300799999).map(
    lambda ms: datetime.datetime.fromtimestamp(ms / 1000.0, UTC))
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63 - 1),
                    st.floats(allow_nan=False), st.text(), st.binary(), decimals, seconds, millis)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=24)
tables = st.dictionaries(st.text(max_size=12), values, max_size=6)


@settings(max_examples=400)
@given(tables, st.sampled_from(["surrogatepass", "surrogateescape"]))
def test_values_round_trip_with_their_types(table: dict, errors: str) -> None:
    if errors == "surrogateescape":  # only lone surrogates U+DC80..U+DCFF stand for bytes
        try:
            ft.encode_table(table, errors=errors)
        except ft.FieldTableError:
            return
    decoded = ft.decode_table(ft.encode_table(table, errors=errors), errors=errors)
    assert same(table, decoded)


@settings(max_examples=400)
@given(tables, st.booleans())
def test_canonical_bytes_round_trip(table: dict, sort_keys: bool) -> None:
    data = ft.encode_table(table, errors="surrogatepass", sort_keys=sort_keys)
    assert ft.encode_table(ft.decode_table(data, errors="surrogatepass"),
                           errors="surrogatepass") == data


def test_rabbitmq_types() -> None:
    assert ft.encode_value(1) == b"l" + struct.pack(">q", 1)
    assert ft.encode_value(0.5) == b"d" + struct.pack(">d", 0.5)
    assert ft.encode_value(True) == b"t\x01"
    assert ft.encode_value(bytearray(b"ab")) == b"x\x00\x00\x00\x02ab"
    assert type(ft.decode_value(b"x\x00\x00\x00\x00")) is bytearray  # as pamqp
    assert type(ft.decode_value(b"x\x00\x00\x00\x00", errors="surrogatepass")) is bytes
    assert ft.encode_value(("a",)) == b"A\x00\x00\x00\x06S\x00\x00\x00\x01a"
    assert ft.encode_value(Decimal("1.50")) == b"D\x02" + struct.pack(">i", 150)
    assert ft.encode_value(Decimal("-0.5")) == b"D\x01" + struct.pack(">i", -5)
    assert ft.encode_value(datetime.datetime(1970, 1, 1, 0, 1)) == b"T" + struct.pack(">Q", 60)
    assert ft.encode_table({"b": {"d": 1, "c": 2}, "a": None}, sort_keys=True) == \
        ft.encode_table({"a": None, "b": {"c": 2, "d": 1}})


@pytest.mark.parametrize("value", [2**63, -1 - 2**63, Decimal("1E+1"), Decimal("NaN"),
                                   Decimal(2**31), object(), {1: "a"}, {"x" * 256: 1}])
def test_values_without_an_encoding(value: Any) -> None:
    with pytest.raises(ft.FieldTableError):
        ft.encode_value(value)


# ---- wire bytes: every type a client may send --------------------------------------------

def _packed(kind: bytes, fmt: str, values: st.SearchStrategy) -> st.SearchStrategy:
    return values.map(lambda v: kind + struct.pack(fmt, v))


def _sized(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack(">I", len(body)) + body


names = st.text(max_size=12).filter(lambda n: len(n.encode()) < 256)
raw_scalars = st.one_of(
    _packed(b"t", ">B", st.integers(0, 255)), _packed(b"b", ">b", st.integers(-128, 127)),
    _packed(b"B", ">B", st.integers(0, 255)), _packed(b"s", ">h", st.integers(-2**15, 2**15 - 1)),
    _packed(b"u", ">H", st.integers(0, 2**16 - 1)),
    _packed(b"I", ">i", st.integers(-2**31, 2**31 - 1)),
    _packed(b"i", ">I", st.integers(0, 2**32 - 1)),
    _packed(b"l", ">q", st.integers(-2**63, 2**63 - 1)),
    _packed(b"L", ">Q", st.integers(0, 2**63 - 1)),  # pamqp reads L as signed
    _packed(b"f", ">f", st.floats(width=32, allow_nan=False)),
    _packed(b"d", ">d", st.floats(allow_nan=False)),
    st.builds(lambda s, r: b"D" + bytes((s,)) + struct.pack(">I", r),
              st.integers(0, 255), st.integers(0, 2**32 - 1)),  # as signed, as pamqp
    _packed(b"T", ">Q", st.one_of(st.integers(0, 2**32 - 1),
                                  st.integers(2**32, 253402300799999))),
    st.just(b"V"),
    st.binary().map(lambda b: _sized(b"S", b)),  # not always UTF-8: read as bytes then
    st.binary().map(lambda b: _sized(b"x", b)))
raw_values = st.recursive(raw_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4).map(ft.array),
    st.lists(st.tuples(names, inner), max_size=4).map(ft.table)), max_leaves=24)
raw_tables = st.lists(st.tuples(names, raw_values), max_size=6).map(ft.join_table)


@settings(max_examples=400)
@given(raw_tables)
def test_entries_are_lossless(data: bytes) -> None:
    entries = ft.split_table(data)
    assert ft.join_table(entries) == data
    for _, value in entries:
        if value[:1] == b"A":
            assert ft.array(ft.split_array(value)) == value


@settings(max_examples=400)
@given(raw_tables)
def test_decodes_as_pamqp_reads_headers(data: bytes) -> None:
    """Message headers read as they did through pamqp."""
    assert same(pamqp_field_table(data)[1], ft.decode_table(data))


@settings(max_examples=400)
@given(raw_tables, st.data())
def test_damaged_tables_are_refused(data: bytes, choice: st.DataObject) -> None:
    cut = choice.draw(st.integers(0, len(data) - 1))
    with pytest.raises(ft.FieldTableError):
        ft.decode_table(data[:cut])
    with pytest.raises(ft.FieldTableError):
        ft.decode_table(data + b"\x00")


def test_unknown_type_and_depth() -> None:
    with pytest.raises(ft.FieldTableError, match="unknown field type"):
        ft.decode_table(ft.join_table([("a", b"Z")]))
    deep: Any = 1
    for _ in range(ft.MAX_DEPTH + 1):
        deep = [deep]
    with pytest.raises(ft.FieldTableError, match="nested deeper"):
        ft.encode_table({"a": deep})
    nested = ft.encode_value(1)
    for _ in range(ft.MAX_DEPTH + 1):
        nested = ft.array([nested])
    with pytest.raises(ft.FieldTableError, match="nested deeper"):
        ft.decode_table(ft.join_table([("a", nested)]))


# ---- message properties --------------------------------------------------------------------

@settings(max_examples=200)
@given(raw_tables)
def test_properties_keep_what_is_not_set(headers: bytes) -> None:
    raw = b"\xa2\x00" + b"\x0atext/plain" + headers + b"\x03abc"  # with a reply_to
    props = properties.decode(raw)
    assert properties.encode(props) == raw
    props.reply_to = "amq.rabbitmq.reply-to.x"
    changed = properties.encode(props)
    assert changed == b"\xa2\x00" + b"\x0atext/plain" + headers + b"\x17amq.rabbitmq.reply-to.x"
    assert props.headers == ft.decode_table(headers)


def test_properties_by_amqp_name() -> None:
    raw = properties.build({"type": "t", "timestamp": 60, "delivery_mode": 2, "priority": 0,
                            "headers": {"h": 1}, "content_type": "", "app_id": None})
    props = properties.decode(raw)
    assert dict(props.items()) == {"headers": {"h": 1}, "delivery_mode": 2, "priority": 0,
                                   "timestamp": datetime.datetime(1970, 1, 1, 0, 1, tzinfo=UTC),
                                   "type": "t"}
    assert props.content_type is None
    for bad in ({"delivery_mode": 3}, {"cluster_id": "c"}, {"nope": 1}, {"priority": 256},
                {"headers": [1]}, {"message_id": "x" * 256}, {"timestamp": "now"}):
        with pytest.raises((TypeError, ValueError)):
            properties.build(bad)
