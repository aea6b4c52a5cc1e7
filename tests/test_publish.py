"""Publishing (B-PUB): errors, returns, bodies over many frames, property bytes kept exactly,
publisher confirms, with pika, aio-pika, py-amqp and raw frames."""
from __future__ import annotations

import datetime
import os
import struct
from decimal import Decimal
from typing import Iterator

import amqp
import aio_pika
import pika
import pytest
from pamqp import commands as spec
from pamqp import frame as pamqp_frame
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from amqputil import assert_channel_closed, collect, fresh_queue, settle
from mq.testing import run_broker
from rawamqp import RawClient


# ---- B-PUB-1..3: where a publish can't go -------------------------------------------------

def test_publish_to_missing_exchange_is_404(channel):
    """B-PUB-1: publishing to a missing exchange closes the channel with 404 naming it."""
    channel.basic_publish("no-such-exchange", "k", b"x")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        channel.queue_declare("", exclusive=True)
    assert_channel_closed(info, 404, "NOT_FOUND - no exchange 'no-such-exchange' in vhost '/'")


def test_publish_to_missing_exchange_under_confirms_is_404(channel):
    """B-PUB-1: the same with confirms on: the publish itself reports the 404."""
    channel.confirm_delivery()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        channel.basic_publish("no-such-exchange", "k", b"x")
    assert_channel_closed(info, 404, "NOT_FOUND - no exchange 'no-such-exchange' in vhost '/'")


def test_mandatory_unroutable_is_returned_whole(connection, channel, uid):
    """B-PUB-2: mandatory and unroutable: basic.return 312 NO_ROUTE with body and properties."""
    returned = []
    channel.add_on_return_callback(lambda ch, m, p, b: returned.append((m, p, b)))
    props = pika.BasicProperties(content_type="text/plain", headers={"k": "v"}, message_id=uid)
    body = os.urandom(300_000)  # several frames
    channel.basic_publish("amq.direct", uid, body, props, mandatory=True)
    channel.basic_publish("amq.direct", uid, b"not mandatory")
    settle(connection, 0.3)
    assert len(returned) == 1
    method, got_props, got_body = returned[0]
    assert (method.reply_code, method.reply_text) == (312, "NO_ROUTE")
    assert (method.exchange, method.routing_key) == ("amq.direct", uid)
    assert got_body == body
    assert (got_props.content_type, got_props.headers, got_props.message_id) == \
        ("text/plain", {"k": "v"}, uid)


def test_immediate_is_540(raw):
    """B-PUB-3: immediate=true is 540 NOT_IMPLEMENTED, a connection error naming basic.publish."""
    raw.send_method(1, spec.Basic.Publish(exchange="", routing_key="k", immediate=True))
    raw.send_content(1, b"x")
    close = raw.expect("Connection.Close")
    assert (close.reply_code, close.reply_text) == (540, "NOT_IMPLEMENTED - immediate=true")
    assert (close.class_id, close.method_id) == (60, 40)


# ---- B-PUB-4: bodies over frames ----------------------------------------------------------

@pytest.mark.parametrize("size", [0, 1, 131072 - 8, 131072 - 7, 3 * 1024 * 1024 + 17])
def test_body_rebuilt_exactly(connection, channel, uid, size):
    """B-PUB-4: bodies of any size (empty, at and across the frame boundary, MBs) are split
    by frame_max on the way in and out and arrive exactly as sent."""
    queue = fresh_queue(channel, uid)
    body = os.urandom(size)
    channel.basic_publish("", queue, body)
    (method, _, got), = collect(connection, channel, queue, 1, auto_ack=True)
    assert got == body


def test_small_frame_max_body_rebuilt(mq_broker, channel, uid):
    """B-PUB-4: with frame_max 4096 a 100 kB body travels as ~25 frames each way."""
    queue = fresh_queue(channel, uid)
    body = os.urandom(100_000)
    client = RawClient(mq_broker.port)
    try:
        client.handshake(frame_max=4096)
        client.open_channel(1)
        client.send_method(1, spec.Basic.Publish(exchange="", routing_key=queue))
        client.send_content(1, body, frame_max=4096)
        client.send_method(1, spec.Basic.Get(queue=queue, no_ack=True))
        client.expect("Basic.GetOk")
        header = client.expect("ContentHeader")
        assert header.body_size == len(body)
        parts = []
        while sum(map(len, parts)) < len(body):
            ftype, _, payload = client.recv_raw()
            assert ftype == 3 and len(payload) <= 4096 - 8
            parts.append(payload)
        assert len(parts) == 25 and b"".join(parts) == body
    finally:
        client.close()


def test_pyamqp_large_body(mq_url, uid):
    """B-PUB-4: py-amqp publishes and gets a 2 MB body unchanged."""
    with amqp.Connection("127.0.0.1:%d" % pika.URLParameters(mq_url).port) as conn:
        ch = conn.channel()
        ch.queue_declare(uid, auto_delete=False)
        body = os.urandom(2 * 1024 * 1024)
        ch.basic_publish(amqp.Message(body), exchange="", routing_key=uid)
        msg = ch.basic_get(uid, no_ack=True)
        assert msg is not None and msg.body == body
        ch.queue_delete(uid)


@pytest.fixture(scope="module")
def small_broker() -> Iterator:
    with run_broker(args=("--max-message-size", "1000")) as broker:
        yield broker


def test_body_over_max_size_is_406(small_broker, uid):
    """B-PUB-4: a body over the configured maximum closes the channel with 406; one at the
    maximum is accepted."""
    conn = pika.BlockingConnection(pika.URLParameters(small_broker.url))
    try:
        ch = conn.channel()
        queue = fresh_queue(ch, uid)
        ch.basic_publish("", queue, b"x" * 1000)
        assert ch.queue_declare(queue, passive=True).method.message_count == 1
        ch.basic_publish("", queue, b"x" * 1001)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            ch.queue_declare(queue, passive=True)
        assert_channel_closed(info, 406, "PRECONDITION_FAILED - message size 1001 is larger "
                                         "than configured max size 1000")
        assert conn.is_open
        assert conn.channel().queue_declare(queue, passive=True).method.message_count == 1
    finally:
        conn.close()


def test_default_max_size_is_128_mib(raw):
    """B-PUB-4: by default a body over 128 MiB is 406 (mq refuses as soon as the content
    header announces the size, so no body needs sending)."""
    size = 128 * 1024 * 1024 + 1
    raw.send_method(1, spec.Basic.Publish(exchange="amq.fanout", routing_key=""))
    raw.send_frame(2, 1, struct.pack(">HHQH", 60, 0, size, 0))
    close = raw.expect("Channel.Close")
    assert close.reply_code == 406
    assert close.reply_text.startswith(f"PRECONDITION_FAILED - message size {size} is larger "
                                       f"than"), close.reply_text
    assert (close.class_id, close.method_id) == (60, 40)


# ---- B-PUB-5: properties byte for byte ----------------------------------------------------

def _shortstr(s: bytes) -> bytes:
    return bytes([len(s)]) + s


def _longstr(s: bytes) -> bytes:
    return struct.pack(">I", len(s)) + s


def _table(items: list[tuple[bytes, bytes]]) -> bytes:
    return _longstr(b"".join(_shortstr(k) + v for k, v in items))


def _array(values: list[bytes]) -> bytes:
    return _longstr(b"".join(values))


def every_field_type_table() -> bytes:
    """A headers table using every AMQP 0-9-1 field type RabbitMQ knows, nested."""
    inner = _table([(b"deep", b"S" + _longstr(b"x")), (b"n", b"l" + struct.pack(">q", -1))])
    return _table([
        (b"bool", b"t\x01"),
        (b"i8", b"b" + struct.pack(">b", -5)),
        (b"u8", b"B" + struct.pack(">B", 250)),
        (b"i16", b"s" + struct.pack(">h", -300)),
        (b"u16", b"u" + struct.pack(">H", 65000)),
        (b"i32", b"I" + struct.pack(">i", -70000)),
        (b"u32", b"i" + struct.pack(">I", 4_000_000_000)),
        (b"i64", b"l" + struct.pack(">q", -(2 ** 40))),
        (b"f32", b"f" + struct.pack(">f", 1.5)),
        (b"f64", b"d" + struct.pack(">d", -2.25)),
        (b"dec", b"D" + struct.pack(">Bi", 2, 31415)),
        (b"str", b"S" + _longstr("héllo".encode())),
        (b"arr", b"A" + _array([b"I" + struct.pack(">i", 1), b"S" + _longstr(b"two"),
                               b"F" + inner, b"A" + _array([b"V"])])),
        (b"ts", b"T" + struct.pack(">Q", 1_700_000_000)),
        (b"tbl", b"F" + inner),
        (b"void", b"V"),
        (b"bytes", b"x" + _longstr(b"\x00\xff\x01")),
    ])


def every_property() -> bytes:
    """Raw basic properties: all 14 flags set, headers with every field type."""
    return (struct.pack(">H", 0xFFFC) + _shortstr(b"application/x") + _shortstr(b"gzip")
            + every_field_type_table() + b"\x02" + b"\x05" + _shortstr(b"corr")
            + _shortstr(b"reply") + _shortstr(b"60000") + _shortstr(b"mid")
            + struct.pack(">Q", 1_600_000_000) + _shortstr(b"type") + _shortstr(b"guest")
            + _shortstr(b"app") + _shortstr(b"cluster"))


def publish_raw(raw: RawClient, key: str, props: bytes, body: bytes,
                mandatory: bool = False) -> None:
    """basic.publish on channel 1 with a hand-built content header."""
    raw.send_method(1, spec.Basic.Publish(exchange="", routing_key=key, mandatory=mandatory))
    raw.send_frame(2, 1, struct.pack(">HHQ", 60, 0, len(body)) + props)
    raw.send_frame(3, 1, body)


def read_content(raw: RawClient, method: str) -> tuple[bytes, bytes]:
    """After `method` (deliver, get-ok, return): the raw property bytes and the body."""
    raw.expect(method)
    ftype, channel, header = raw.recv_raw()
    assert (ftype, channel) == (2, 1)
    class_id, _, size = struct.unpack(">HHQ", header[:12])
    assert class_id == 60
    ftype, channel, body = raw.recv_raw() if size else (3, 1, b"")
    assert (ftype, channel, len(body)) == (3, 1, size)
    return header[12:], body


def test_every_field_type_reaches_consumer_byte_for_byte(raw, uid):
    """B-PUB-5: properties with headers of every field type (b B s u I i l f d D S A T F V x,
    nested tables and arrays) reach the consumer as the exact bytes that were published:
    through basic.deliver, basic.get-ok and basic.return alike."""
    props = every_property()
    raw.send_method(1, spec.Queue.Declare(queue=uid, exclusive=True))
    raw.expect("Queue.DeclareOk")
    publish_raw(raw, uid, props, b"one")
    publish_raw(raw, uid, props, b"two")
    publish_raw(raw, "nowhere-" + uid, props, b"back", mandatory=True)
    assert read_content(raw, "Basic.Return") == (props, b"back")
    raw.send_method(1, spec.Basic.Get(queue=uid, no_ack=True))
    assert read_content(raw, "Basic.GetOk") == (props, b"one")
    raw.send_method(1, spec.Basic.Consume(queue=uid, no_ack=True))
    raw.expect("Basic.ConsumeOk")
    assert read_content(raw, "Basic.Deliver") == (props, b"two")


def test_headers_round_trip_through_pika(connection, channel, uid):
    """B-PUB-5: pika's own encoding of nested tables, arrays, decimals, timestamps, byte
    arrays and void comes back with equal values."""
    queue = fresh_queue(channel, uid)
    headers = {
        "str": "s", "int": 7, "big": 2 ** 40, "neg": -3, "bool": True, "none": None,
        "dec": Decimal("3.14"),
        "ts": datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
        "bytes": b"\x00\x01", "list": [1, "a", {"n": [True]}], "tbl": {"x": {"y": "z"}},
    }
    props = pika.BasicProperties(headers=headers, priority=3, timestamp=1_700_000_000,
                                 correlation_id="c", expiration="60000", app_id="t")
    channel.basic_publish("", queue, b"b", props)
    (_, got, _), = collect(connection, channel, queue, 1, auto_ack=True)
    assert got.headers == headers
    assert (got.priority, got.timestamp, got.correlation_id, got.expiration, got.app_id) == \
        (3, 1_700_000_000, "c", "60000", "t")


# ---- B-PUB-6: publisher confirms ----------------------------------------------------------

def read_confirms(raw: RawClient, count: int) -> list[tuple[str, object]]:
    """Frames until basic.ack/nack cover `count` publishes: ("ack"|"nack", tag, multiple) and
    ("return", reply_code) entries in arrival order."""
    events: list[tuple] = []
    covered: set[int] = set()
    while len(covered) < count:
        _, frame = raw.recv_method()
        if frame.name in ("Basic.Ack", "Basic.Nack"):
            tag = frame.delivery_tag
            new = set(range(1, tag + 1)) if frame.multiple else {tag}
            assert tag not in covered, f"tag {tag} confirmed twice"
            covered |= new
            events.append((frame.name, tag, frame.multiple))
        elif frame.name == "Basic.Return":
            events.append(("return", frame.reply_code, frame.routing_key))
    assert covered == set(range(1, count + 1))
    return events


def test_confirms_sequence_and_mixed_routing(raw, uid):
    """B-PUB-6: after confirm.select publishes are numbered from 1 and all acked (multiple
    allowed): routed, unroutable, and mandatory-unroutable ones, the latter only after its
    basic.return."""
    raw.send_method(1, spec.Queue.Declare(queue=uid, exclusive=True))
    raw.expect("Queue.DeclareOk")
    raw.send_method(1, spec.Confirm.Select())
    raw.expect("Confirm.SelectOk")
    plan = [(uid, False), ("nowhere-" + uid, False), ("nowhere-" + uid, True), (uid, True),
            (uid, False)]
    for key, mandatory in plan:
        raw.send_method(1, spec.Basic.Publish(exchange="", routing_key=key, mandatory=mandatory))
        raw.send_content(1, key.encode())
    events = read_confirms(raw, len(plan))
    assert [e for e in events if e[0] == "return"] == [("return", 312, "nowhere-" + uid)]
    first_ack_covering_3 = next(i for i, e in enumerate(events)
                                if e[0] == "Basic.Ack" and (e[1] == 3 or (e[2] and e[1] > 3)))
    assert events.index(("return", 312, "nowhere-" + uid)) < first_ack_covering_3
    assert all(e[0] != "Basic.Nack" for e in events)
    raw.send_method(1, spec.Queue.Declare(queue=uid, passive=True))
    assert raw.expect("Queue.DeclareOk").message_count == 3


def test_confirms_over_separate_reads_count_on(raw, uid):
    """B-PUB-6: the sequence continues across separate round trips (1, 2, 3 ...), never
    restarting; each publish waited for on its own gets its own ack (multiple=false, as
    RabbitMQ sends it)."""
    raw.send_method(1, spec.Confirm.Select())
    raw.expect("Confirm.SelectOk")
    for expected in (1, 2, 3):
        raw.send_method(1, spec.Basic.Publish(exchange="amq.fanout", routing_key=""))
        raw.send_content(1, b"x")
        ack = raw.expect("Basic.Ack")
        assert (ack.delivery_tag, ack.multiple) == (expected, False)


def test_confirms_before_a_channel_error_are_sent(raw):
    """B-PUB-6: publishes routed before one that fails (404) in the same burst are still
    acked, before the channel.close."""
    raw.send_method(1, spec.Confirm.Select())
    raw.expect("Confirm.SelectOk")
    burst = b""
    for exchange in ("amq.fanout", "amq.fanout", "amq.fanout", "no-such-exchange"):
        burst += pamqp_frame.marshal(spec.Basic.Publish(exchange=exchange, routing_key=""), 1)
        burst += pamqp_frame.marshal(ContentHeader(0, 1, spec.Basic.Properties()), 1)
        burst += pamqp_frame.marshal(ContentBody(b"x"), 1)
    raw.send(burst)
    acked: set[int] = set()
    while True:
        _, frame = raw.recv_method()
        if frame.name != "Basic.Ack":
            break
        acked |= set(range(1, frame.delivery_tag + 1)) if frame.multiple else {frame.delivery_tag}
    assert acked == {1, 2, 3}
    assert (frame.name, frame.reply_code) == ("Channel.Close", 404)


def test_refused_publish_is_nacked_in_order(raw, uid):
    """B-PUB-6: a publish refused by x-overflow reject-publish is nacked; the publishes around
    it are acked, each confirm naming its own sequence number."""
    raw.send_method(1, spec.Queue.Declare(queue=uid, exclusive=True, arguments={
        "x-max-length": 1, "x-overflow": "reject-publish"}))
    raw.expect("Queue.DeclareOk")
    raw.send_method(1, spec.Confirm.Select())
    raw.expect("Confirm.SelectOk")
    for key in (uid, uid, "nowhere-" + uid):  # accepted, refused (full), unroutable
        raw.send_method(1, spec.Basic.Publish(exchange="", routing_key=key))
        raw.send_content(1, b"x")
    events = read_confirms(raw, 3)
    nacked = [tag for name, tag, _ in events if name == "Basic.Nack"]
    assert nacked == [2]
    acked = set()
    for name, tag, multiple in events:
        if name == "Basic.Ack":
            acked |= set(range(1, tag + 1)) - {2} if multiple else {tag}
    assert acked == {1, 3}


def test_pika_confirms_mixed_mandatory(connection, channel, uid):
    """B-PUB-6: with pika's confirm mode, routed and unroutable publishes succeed, a mandatory
    unroutable one raises UnroutableError with the returned message, and the channel goes on."""
    queue = fresh_queue(channel, uid)
    channel.confirm_delivery()
    channel.basic_publish("", queue, b"1")
    channel.basic_publish("", "nowhere-" + uid, b"2")
    with pytest.raises(pika.exceptions.UnroutableError) as info:
        channel.basic_publish("", "nowhere-" + uid, b"3", mandatory=True)
    assert [m.body for m in info.value.messages] == [b"3"]
    channel.basic_publish("", queue, b"4", mandatory=True)
    got = collect(connection, channel, queue, 2, auto_ack=True)
    assert [b for _, _, b in got] == [b"1", b"4"]


def test_confirms_mix_persistent_durable_and_transient(raw, uid):
    """B-PUB-6: persistent publishes into a durable queue (acked after the store's fsync)
    interleaved with transient ones are all acked, each number once."""
    durable = "durable-" + uid
    raw.send_method(1, spec.Queue.Declare(queue=durable, durable=True))
    raw.expect("Queue.DeclareOk")
    raw.send_method(1, spec.Queue.Declare(queue=uid, exclusive=True))
    raw.expect("Queue.DeclareOk")
    raw.send_method(1, spec.Confirm.Select())
    raw.expect("Confirm.SelectOk")
    persistent = spec.Basic.Properties(delivery_mode=2)
    for i in range(10):
        key, props = (durable, persistent) if i % 2 else (uid, None)
        raw.send_method(1, spec.Basic.Publish(exchange="", routing_key=key))
        raw.send_content(1, b"x", props)
    events = read_confirms(raw, 10)
    assert all(name == "Basic.Ack" for name, _, _ in events)
    raw.send_method(1, spec.Queue.Delete(queue=durable))
    assert raw.expect("Queue.DeleteOk").message_count == 5


@pytest.mark.anyio
async def test_aio_pika_confirms(mq_url, uid):
    """B-PUB-6: aio-pika publisher confirms: each publish is acked; a mandatory unroutable one
    is reported as returned, and later publishes are still confirmed."""
    conn = await aio_pika.connect(mq_url)
    async with conn:
        ch = await conn.channel(publisher_confirms=True)
        queue = await ch.declare_queue(uid, exclusive=True)
        for i in range(20):
            confirmation = await ch.default_exchange.publish(aio_pika.Message(b"%d" % i), uid)
            assert confirmation.name == "Basic.Ack"
        returned = await ch.default_exchange.publish(aio_pika.Message(b"lost"),
                                                     "nowhere-" + uid, mandatory=True)
        assert (returned.delivery.name, returned.delivery.reply_code) == ("Basic.Return", 312)
        assert returned.body == b"lost"
        confirmation = await ch.default_exchange.publish(aio_pika.Message(b"last"), uid)
        assert confirmation.name == "Basic.Ack"
        declared = await ch.declare_queue(uid, passive=True)
        assert declared.declaration_result.message_count == 21
        del queue


def test_pyamqp_confirm_publish(mq_url, uid):
    """B-PUB-6: py-amqp's confirm_publish waits for the broker's ack on every publish."""
    port = pika.URLParameters(mq_url).port
    with amqp.Connection(f"127.0.0.1:{port}", confirm_publish=True) as conn:
        ch = conn.channel()
        ch.queue_declare(uid, exclusive=True)
        for i in range(10):
            ch.basic_publish(amqp.Message(b"%d" % i), exchange="", routing_key=uid)
        ch.basic_publish(amqp.Message(b"x"), exchange="", routing_key="nowhere-" + uid)
        assert ch.queue_declare(uid, passive=True).message_count == 10


# ---- B-PUB-7: tx vs confirm ---------------------------------------------------------------

def test_confirm_select_in_tx_mode_is_406(channel):
    """B-PUB-7: confirm.select on a channel in tx mode is 406."""
    channel.tx_select()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        channel.confirm_delivery()
    assert_channel_closed(info, 406, "PRECONDITION_FAILED - cannot switch from tx to confirm mode")


def test_tx_select_in_confirm_mode_is_406(channel):
    """B-PUB-7: tx.select on a channel in confirm mode is 406."""
    channel.confirm_delivery()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        channel.tx_select()
    assert_channel_closed(info, 406, "PRECONDITION_FAILED - cannot switch from confirm to tx mode")
