"""Stream queues over AMQP 0-9-1 (B-STREAM-1..6), end to end with pika, as RabbitMQ 3.10
answers them: declaration rules and refusals, reading from an offset of every kind (first,
last, next, numeric, timestamp, interval) with the `x-stream-offset` header on every delivery,
prefetch and manual acks required, acks that only give credit, retention by whole segments.
Refusal codes and texts are RabbitMQ 3.10.7's (Debian), captured from it.

Run against RabbitMQ too: MQ_TEST_URL=amqp://guest:guest@127.0.0.1:5672/ (streams over AMQP
0-9-1 need no plugin there). The tests marked mq_only (automatic offset tracking as LavinMQ has
it, and restarts of mq) are skipped then.

RabbitMQ facts the tests are written around:
- RabbitMQ stores a stream in chunks; a publish on a confirm channel that waits for its confirm
  before the next one makes a chunk of one message, so "last" (the start of the last chunk) is
  then the last message.
- Offsets are consecutive per message within a segment, but RabbitMQ writes a tracking chunk at
  the head of each new segment, which takes an offset: with small segments (the retention
  tests) offsets only grow, they are not consecutive.
- Its declare-ok counts for a stream are stats (0 until a stats tick), so no test reads them.
"""
from __future__ import annotations

import datetime
import time
from typing import Any, Callable, Iterator

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from queuetest import is_long, mq_only

STREAM = {"x-queue-type": "stream"}
_UNSET = object()

NOT_SUPPORTED = "NOT_IMPLEMENTED - {what} not supported by stream queues queue '{q}' in vhost '/'"


def where(queue: str) -> str:
    return f"for queue '{queue}' in vhost '/'"


class Reader:
    """A consumer on its own channel, recording (offset, body) per delivery and acking each
    one as it arrives (unless ack=False)."""

    def __init__(self, connection: pika.BlockingConnection, queue: str, offset: Any = _UNSET,
                 prefetch: int = 100, ack: bool = True, tag: str | None = None,
                 arguments: dict | None = None) -> None:
        self.connection = connection
        self.channel = connection.channel()
        self.channel.basic_qos(prefetch_count=prefetch)
        args = dict(arguments or {})
        if offset is not _UNSET:
            args["x-stream-offset"] = offset
        self.ack = ack
        self.deliveries: list[tuple[Any, pika.BasicProperties, bytes]] = []
        kwargs = {"consumer_tag": tag} if tag else {}
        self.tag = self.channel.basic_consume(queue, self._on_message,
                                              arguments=args or None, **kwargs)

    def _on_message(self, channel: BlockingChannel, method, props, body: bytes) -> None:
        self.deliveries.append((method, props, body))
        if self.ack:
            channel.basic_ack(method.delivery_tag)

    @property
    def offsets(self) -> list[int]:
        return [props.headers["x-stream-offset"] for _, props, _ in self.deliveries]

    @property
    def bodies(self) -> list[bytes]:
        return [body for _, _, body in self.deliveries]

    @property
    def read(self) -> list[tuple[int, bytes]]:
        return list(zip(self.offsets, self.bodies))

    def wait(self, count: int, timeout: float = 10.0) -> "Reader":
        deadline = time.monotonic() + timeout
        while len(self.deliveries) < count:
            assert time.monotonic() < deadline, \
                f"{len(self.deliveries)} deliveries within {timeout} s, expected {count}: " \
                f"{self.read}"
            self.connection.process_data_events(time_limit=0.05)
        return self

    def pump(self, seconds: float) -> "Reader":
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.connection.process_data_events(time_limit=0.05)
        return self

    def close(self) -> None:
        if self.channel.is_open:
            self.channel.close()


class Streams:
    """Durable streams with names unique to one test, deleted when it ends; a confirm channel
    that publishes one message per chunk (each publish waits for its confirm)."""

    def __init__(self, connection: pika.BlockingConnection, uid: str, url: str) -> None:
        self.connection = connection
        self.url = url
        self.uid = uid
        self.channel = connection.channel()
        self.publisher = connection.channel()
        self.publisher.confirm_delivery()
        self._queues: list[str] = []

    def name(self, suffix: str) -> str:
        return f"{self.uid}-{suffix}"

    def declare(self, suffix: str = "s", **arguments: Any) -> str:
        name = self.name(suffix)
        self._queues.append(name)
        ok = self.channel.queue_declare(name, durable=True, arguments={**STREAM, **arguments})
        assert ok.method.queue == name
        return name

    def publish(self, queue: str, bodies: list[bytes]) -> None:
        for body in bodies:
            self.publisher.basic_publish("", queue, body)

    def reader(self, queue: str, offset: Any = _UNSET, **kwargs: Any) -> Reader:
        return Reader(self.connection, queue, offset, **kwargs)

    def read(self, queue: str, offset: Any, count: int, **kwargs: Any) -> list[tuple[int, bytes]]:
        reader = self.reader(queue, offset, **kwargs).wait(count)
        reader.pump(0.2)  # nothing more than expected
        reader.close()
        return reader.read

    def cleanup(self) -> None:
        connection = self.connection
        if not connection.is_open:
            connection = pika.BlockingConnection(pika.URLParameters(self.url))
        channel = connection.channel()
        for name in self._queues:
            channel.queue_delete(name)
        channel.close()
        if connection is not self.connection:
            connection.close()


@pytest.fixture
def streams(connection: pika.BlockingConnection, uid: str, mq_url: str) -> Iterator[Streams]:
    s = Streams(connection, uid, mq_url)
    yield s
    s.cleanup()


def numbered(n: int, start: int = 0, prefix: bytes = b"m") -> list[bytes]:
    return [prefix + b"%d" % i for i in range(start, start + n)]


def declare_refused(connection: pika.BlockingConnection, queue: str,
                    **kwargs: Any) -> tuple[int, str]:
    channel = connection.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        channel.queue_declare(queue, **kwargs)
    return info.value.reply_code, info.value.reply_text


def channel_refused(connection: pika.BlockingConnection,
                    action: Callable[[BlockingChannel], Any]) -> tuple[int, str]:
    channel = connection.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        action(channel)
        connection.process_data_events(time_limit=2)
    return info.value.reply_code, info.value.reply_text


def connection_refused(url: str, action: Callable[[pika.BlockingConnection, BlockingChannel], Any]
                       ) -> tuple[int, str]:
    """Run `action` on a connection of its own and return the connection.close it gets."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
            action(connection, channel)
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                connection.process_data_events(time_limit=0.05)
        return info.value.reply_code, info.value.reply_text
    finally:
        if connection.is_open:
            connection.close()


# ---- B-STREAM-1: declaration ------------------------------------------------------------------

def test_declare_durable_stream(streams) -> None:
    """B-STREAM-1: `x-queue-type: stream` on a durable queue declares a stream; a passive
    declare and a redeclare with the same arguments find it; published messages are read back."""
    queue = streams.declare()
    assert streams.channel.queue_declare(queue, passive=True).method.queue == queue
    assert streams.channel.queue_declare(queue, durable=True,
                                         arguments=STREAM).method.queue == queue
    streams.publish(queue, numbered(3))
    assert streams.read(queue, "first", 3) == [(0, b"m0"), (1, b"m1"), (2, b"m2")]


def test_declare_refuses_non_durable_exclusive_auto_delete(connection, uid) -> None:
    """B-STREAM-1: a stream must be durable, not exclusive and not auto-delete: 406 naming the
    property, in RabbitMQ's words; nothing is declared."""
    queue = f"{uid}-s"
    assert declare_refused(connection, queue, arguments=STREAM) == (
        406, f"PRECONDITION_FAILED - invalid property 'non-durable' {where(queue)}")
    assert declare_refused(connection, queue, durable=True, exclusive=True,
                           arguments=STREAM) == (
        406, f"PRECONDITION_FAILED - invalid property 'exclusive-owner' {where(queue)}")
    assert declare_refused(connection, queue, durable=True, auto_delete=True,
                           arguments=STREAM) == (
        406, f"PRECONDITION_FAILED - invalid property 'auto-delete' {where(queue)}")
    assert declare_refused(connection, queue, passive=True) == (
        404, f"NOT_FOUND - no queue '{queue}' in vhost '/'")


@pytest.mark.parametrize("arguments", [
    {"x-max-length-bytes": 1_000_000},
    {"x-max-age": "7D"},
    {"x-max-age": "12h"},
    {"x-max-age": "30m"},
    {"x-max-age": "10s"},
    {"x-max-age": "1Y"},
    {"x-max-age": "1M"},
    {"x-stream-max-segment-size-bytes": 1_000_000},
    {"x-max-length-bytes": 20_000_000_000, "x-max-age": "12h",
     "x-stream-max-segment-size-bytes": 500_000_000},
    {"x-initial-cluster-size": 1},
    {"x-queue-leader-locator": "client-local"},
    {"x-unknown-argument": "ignored"},
], ids=lambda a: ",".join(f"{k}={v}" for k, v in a.items()))
def test_declare_accepts_stream_arguments(streams, arguments) -> None:
    """B-STREAM-1, B-STREAM-4: the retention arguments (x-max-length-bytes, x-max-age with the
    units Y M D h m s, x-stream-max-segment-size-bytes), the cluster arguments and an unknown
    x- argument are accepted on a stream."""
    queue = streams.declare(**arguments)
    streams.publish(queue, [b"one"])
    assert streams.read(queue, "first", 1) == [(0, b"one")]


@pytest.mark.parametrize("argument,value,reason", [
    ("x-max-age", "10x", "invalid_max_age"),
    ("x-max-age", "0s", "invalid_max_age"),
    ("x-max-age", 10, "{unacceptable_type,signedint}"),
    ("x-max-length-bytes", "abc", '"expected integer, got longstr"'),
    ("x-max-length-bytes", -1, "{value_negative,-1}"),
    ("x-stream-max-segment-size-bytes", "abc", '"expected integer, got longstr"'),
])
def test_declare_refuses_bad_retention_values(connection, uid, argument, value, reason) -> None:
    """B-STREAM-1, B-STREAM-4: a bad retention value is 406 `invalid arg` with RabbitMQ's reason
    (an x-max-age of a bad unit or of zero, an integer x-max-age, a non-integer or negative
    size). (RabbitMQ 3.10 closes the connection with 541 INTERNAL_ERROR for an x-max-age with no
    number at all, such as "abc" or "-1s": not tested.)"""
    queue = f"{uid}-s"
    assert declare_refused(connection, queue, durable=True,
                           arguments={**STREAM, argument: value}) == (
        406, f"PRECONDITION_FAILED - invalid arg '{argument}' {where(queue)}: {reason}")


@pytest.mark.parametrize("argument,value", [
    ("x-max-length", 10),
    ("x-message-ttl", 1000),
    ("x-dead-letter-exchange", "dlx"),
    ("x-dead-letter-routing-key", "dead"),
    ("x-max-priority", 5),
    ("x-overflow", "reject-publish"),
    ("x-overflow", "drop-head"),
    ("x-expires", 10000),
    ("x-single-active-consumer", True),
    ("x-queue-mode", "lazy"),
    ("x-max-in-memory-length", 10),
    ("x-delivery-limit", 3),
])
def test_declare_refuses_queue_arguments(connection, uid, argument, value) -> None:
    """B-STREAM-1: arguments of classic and quorum queues that a stream has no use for
    (length limit, TTL, dead lettering, priorities, overflow, expiry, single active consumer,
    lazy mode, delivery limit) are refused, not ignored: 406 `invalid arg ... of queue type
    rabbit_stream_queue`."""
    queue = f"{uid}-s"
    assert declare_refused(connection, queue, durable=True,
                           arguments={**STREAM, argument: value}) == (
        406, f"PRECONDITION_FAILED - invalid arg '{argument}' {where(queue)} of queue type "
             "rabbit_stream_queue")


def test_redeclare_equivalence(streams, connection) -> None:
    """B-STREAM-1: a redeclare must match the stream's type, durability and retention
    arguments: 406 `inequivalent arg` with what was received and what the stream has."""
    queue = streams.declare(**{"x-max-age": "7D", "x-max-length-bytes": 100000,
                               "x-stream-max-segment-size-bytes": 50000})
    same = {**STREAM, "x-max-age": "7D", "x-max-length-bytes": 100000,
            "x-stream-max-segment-size-bytes": 50000}
    assert streams.channel.queue_declare(queue, durable=True,
                                         arguments=same).method.queue == queue
    pre = "PRECONDITION_FAILED - inequivalent arg"
    assert declare_refused(connection, queue, durable=True,
                           arguments={**same, "x-max-age": "1h"}) == (
        406, f"{pre} 'x-max-age' {where(queue)}: received '1h' but current is '7D'")
    assert declare_refused(connection, queue, durable=True,
                           arguments={**same, "x-max-length-bytes": 5}) == (
        406, f"{pre} 'x-max-length-bytes' {where(queue)}: received '5' but current is '100000'")
    assert declare_refused(connection, queue, durable=True,
                           arguments={**same, "x-stream-max-segment-size-bytes": 5}) == (
        406, f"{pre} 'x-stream-max-segment-size-bytes' {where(queue)}: received '5' but "
             "current is '50000'")
    without_age = {k: v for k, v in same.items() if k != "x-max-age"}
    assert declare_refused(connection, queue, durable=True, arguments=without_age) == (
        406, f"{pre} 'x-max-age' {where(queue)}: received none but current is the value '7D' "
             "of type 'longstr'")
    assert declare_refused(connection, queue, durable=True,
                           arguments={**same, "x-queue-type": "classic"}) == (
        406, f"{pre} 'x-queue-type' {where(queue)}: received 'classic' but current is 'stream'")
    assert declare_refused(connection, queue, durable=True,
                           arguments={**same, "x-queue-type": "quorum"}) == (
        406, f"{pre} 'x-queue-type' {where(queue)}: received 'quorum' but current is 'stream'")
    assert declare_refused(connection, queue, arguments=same) == (
        406, f"{pre} 'durable' {where(queue)}: received 'false' but current is 'true'")
    assert declare_refused(connection, queue, durable=True, auto_delete=True,
                           arguments=same) == (
        406, f"{pre} 'auto_delete' {where(queue)}: received 'true' but current is 'false'")


def test_redeclare_without_type_and_classic_as_stream(streams, connection) -> None:
    """B-STREAM-1: a stream redeclared with no x-queue-type, and a classic queue redeclared as
    a stream, are 406 `inequivalent arg 'x-queue-type'`."""
    queue = streams.declare()
    assert declare_refused(connection, queue, durable=True) == (
        406, f"PRECONDITION_FAILED - inequivalent arg 'x-queue-type' {where(queue)}: received "
             "none but current is the value 'stream' of type 'longstr'")
    classic = streams.name("classic")
    streams._queues.append(classic)
    streams.channel.queue_declare(classic, durable=True)
    assert declare_refused(connection, classic, durable=True, arguments=STREAM) == (
        406, f"PRECONDITION_FAILED - inequivalent arg 'x-queue-type' {where(classic)}: "
             "received the value 'stream' of type 'longstr' but current is none")


# ---- B-STREAM-3: consuming rules ----------------------------------------------------------------

def test_consume_without_prefetch_refused(streams, connection) -> None:
    """B-STREAM-3: a consumer on a stream needs a per-consumer prefetch (basic.qos
    prefetch_count, global=false): without one, or with only a channel-wide (global) one, the
    consume is 406; with both, it is accepted."""
    queue = streams.declare()
    text = f"PRECONDITION_FAILED - consumer prefetch count is not set for 'queue '{queue}' " \
           "in vhost '/''"
    assert channel_refused(connection, lambda ch: ch.basic_consume(queue, lambda *a: None)) == \
        (406, text)

    def global_only(ch: BlockingChannel) -> None:
        ch.basic_qos(prefetch_count=10, global_qos=True)
        ch.basic_consume(queue, lambda *a: None)
    assert channel_refused(connection, global_only) == (406, text)
    ch = connection.channel()
    ch.basic_qos(prefetch_count=10, global_qos=True)
    ch.basic_qos(prefetch_count=5)
    assert ch.basic_consume(queue, lambda *a: None)
    ch.close()


def test_no_ack_consume_closes_connection(streams, mq_url) -> None:
    """B-STREAM-3: a no-ack (auto_ack) consumer on a stream closes the connection: 540."""
    queue = streams.declare()

    def no_ack(connection, ch) -> None:
        ch.basic_qos(prefetch_count=10)
        ch.basic_consume(queue, lambda *a: None, auto_ack=True)
    assert connection_refused(mq_url, no_ack) == (
        540, NOT_SUPPORTED.format(what="automatic acknowledgement", q=queue))


@pytest.mark.parametrize("auto_ack", [False, True])
def test_basic_get_closes_connection(streams, mq_url, auto_ack) -> None:
    """B-STREAM-3: basic.get on a stream (empty or not, acked or not) closes the connection:
    540."""
    queue = streams.declare()
    streams.publish(queue, [b"x"])
    assert connection_refused(mq_url, lambda c, ch: ch.basic_get(queue, auto_ack=auto_ack)) == (
        540, NOT_SUPPORTED.format(what="basic.get", q=queue))


def test_purge_closes_connection(streams, mq_url) -> None:
    """B-STREAM-3: queue.purge on a stream closes the connection: 540; the messages stay."""
    queue = streams.declare()
    streams.publish(queue, numbered(3))
    assert connection_refused(mq_url, lambda c, ch: ch.queue_purge(queue)) == (
        540, NOT_SUPPORTED.format(what="queue.purge", q=queue))
    assert streams.read(queue, "first", 3) == [(0, b"m0"), (1, b"m1"), (2, b"m2")]


@pytest.mark.parametrize("settle", ["nack", "nack-no-requeue", "reject", "reject-no-requeue"])
def test_nack_and_reject_close_connection(streams, mq_url, settle) -> None:
    """B-STREAM-3: basic.nack and basic.reject of a stream delivery (with or without requeue)
    close the connection: 540."""
    queue = streams.declare()
    streams.publish(queue, numbered(3))

    def settle_one(connection, ch) -> None:
        reader = Reader(connection, queue, "first", ack=False)
        reader.wait(3)
        tag = reader.deliveries[0][0].delivery_tag
        requeue = not settle.endswith("no-requeue")
        if settle.startswith("nack"):
            reader.channel.basic_nack(tag, requeue=requeue)
        else:
            reader.channel.basic_reject(tag, requeue=requeue)
    assert connection_refused(mq_url, settle_one) == (
        540, NOT_SUPPORTED.format(what="basic.nack and basic.reject", q=queue))


def test_consumer_priority_refused(streams, connection) -> None:
    """B-STREAM-3: a consumer priority (x-priority) on a stream consumer is 406."""
    queue = streams.declare()

    def prioritised(ch: BlockingChannel) -> None:
        ch.basic_qos(prefetch_count=10)
        ch.basic_consume(queue, lambda *a: None, arguments={"x-priority": 5})
    assert channel_refused(connection, prioritised) == (
        406, f"PRECONDITION_FAILED - invalid arg 'x-priority' {where(queue)} of queue type "
             "rabbit_stream_queue")


def test_acks_only_give_credit(streams) -> None:
    """B-STREAM-2, B-STREAM-3: with prefetch 2 a stream consumer holds two unacked deliveries
    and gets the next only when it acks (one ack, one more; a multiple ack, as many more);
    acked messages stay in the stream: a second consumer from "first" gets them all again."""
    queue = streams.declare()
    streams.publish(queue, numbered(6))
    reader = streams.reader(queue, "first", prefetch=2, ack=False)
    reader.wait(2).pump(0.3)
    assert reader.read == [(0, b"m0"), (1, b"m1")]
    reader.channel.basic_ack(reader.deliveries[0][0].delivery_tag)
    reader.wait(3).pump(0.3)
    assert reader.offsets == [0, 1, 2]
    reader.channel.basic_ack(reader.deliveries[2][0].delivery_tag, multiple=True)
    reader.wait(5).pump(0.3)
    assert reader.offsets == [0, 1, 2, 3, 4]
    assert [m.delivery_tag for m, _, _ in reader.deliveries] == [1, 2, 3, 4, 5]
    assert all(not m.redelivered for m, _, _ in reader.deliveries)
    reader.channel.basic_ack(reader.deliveries[4][0].delivery_tag, multiple=True)
    reader.wait(6)
    reader.channel.basic_ack(reader.deliveries[5][0].delivery_tag)
    reader.close()
    assert streams.read(queue, "first", 6) == list(enumerate(numbered(6)))


def test_consumers_read_independently(streams) -> None:
    """B-STREAM-2: two consumers on one stream each get every message from their own offset;
    neither takes anything from the other."""
    queue = streams.declare()
    streams.publish(queue, numbered(4))
    a = streams.reader(queue, "first")
    b = streams.reader(queue, 2)
    streams.publish(queue, numbered(2, start=4))
    a.wait(6)
    b.wait(4)
    a.pump(0.2)
    assert a.read == list(enumerate(numbered(6)))
    assert b.read == [(2, b"m2"), (3, b"m3"), (4, b"m4"), (5, b"m5")]


# ---- B-STREAM-2: x-stream-offset ---------------------------------------------------------------

def test_offset_first_and_header(streams) -> None:
    """B-STREAM-2: "first" reads every message in publish order; offsets start at 0 and are
    consecutive; each delivery carries `x-stream-offset` as a 64-bit integer (AMQP 'l'), and
    the message's own properties and headers unchanged."""
    queue = streams.declare()
    for i in range(10):
        streams.publisher.basic_publish("", queue, b"m%d" % i, pika.BasicProperties(
            content_type="text/plain", headers={"n": i}))
    reader = streams.reader(queue, "first").wait(10)
    assert reader.read == list(enumerate(numbered(10)))
    for i, (method, props, _) in enumerate(reader.deliveries):
        assert is_long(props.headers["x-stream-offset"])
        assert props.headers["n"] == i
        assert props.content_type == "text/plain"
        assert method.routing_key == queue and method.exchange == ""
        assert not method.redelivered


def test_offset_last(streams) -> None:
    """B-STREAM-2: "last" starts at the last chunk: with one message per chunk (each publish
    confirmed before the next), the first delivery is the last message; then new ones."""
    queue = streams.declare()
    streams.publish(queue, numbered(5))
    reader = streams.reader(queue, "last").wait(1).pump(0.3)
    assert reader.read == [(4, b"m4")]
    streams.publish(queue, [b"m5"])
    reader.wait(2)
    assert reader.read == [(4, b"m4"), (5, b"m5")]


def test_offset_next_is_default(streams) -> None:
    """B-STREAM-2: "next", and a consumer with no x-stream-offset at all (pika's own consumer
    tag), get only messages published after they subscribed."""
    queue = streams.declare()
    streams.publish(queue, numbered(3))
    explicit = streams.reader(queue, "next")
    default = streams.reader(queue)
    explicit.pump(0.3)
    assert explicit.read == [] and default.read == []
    streams.publish(queue, numbered(2, start=3))
    explicit.wait(2)
    default.wait(2).pump(0.2)
    assert explicit.read == default.read == [(3, b"m3"), (4, b"m4")]


def test_offset_numeric(streams) -> None:
    """B-STREAM-2: a numeric offset starts exactly there; 0 is the first message."""
    queue = streams.declare()
    streams.publish(queue, numbered(10))
    assert streams.read(queue, 5, 5) == [(n, b"m%d" % n) for n in range(5, 10)]
    assert streams.read(queue, 9, 1) == [(9, b"m9")]
    assert streams.read(queue, 0, 10) == list(enumerate(numbered(10)))


def test_offset_negative_starts_at_first(streams) -> None:
    """B-STREAM-2: a negative numeric offset is not refused: it reads from the first message."""
    queue = streams.declare()
    streams.publish(queue, numbered(3))
    assert streams.read(queue, -5, 3) == list(enumerate(numbered(3)))


def test_offset_past_end_waits(streams) -> None:
    """B-STREAM-2: an offset past the end delivers nothing until messages reach it, then starts
    exactly at that offset (the ones in between are not delivered)."""
    queue = streams.declare()
    streams.publish(queue, numbered(5))  # offsets 0..4
    reader = streams.reader(queue, 7).pump(0.5)
    assert reader.read == []
    streams.publish(queue, numbered(5, start=5))  # offsets 5..9
    reader.wait(3).pump(0.2)
    assert reader.read == [(7, b"m7"), (8, b"m8"), (9, b"m9")]


def test_offset_timestamp(streams) -> None:
    """B-STREAM-2: a timestamp (an AMQP timestamp, 'T': pika sends a datetime as one) starts
    at the first message published at or after it; a timestamp before the stream reads it all."""
    queue = streams.declare()
    streams.publish(queue, numbered(3))
    at = int(time.time()) + 1  # AMQP timestamps are whole seconds
    while time.time() < at + 0.1:
        time.sleep(0.05)
    streams.publish(queue, numbered(3, start=3))
    since = datetime.datetime.fromtimestamp(at, tz=datetime.timezone.utc)
    assert streams.read(queue, since, 3) == [(3, b"m3"), (4, b"m4"), (5, b"m5")]
    long_ago = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)
    assert streams.read(queue, long_ago, 6) == list(enumerate(numbered(6)))


def test_offset_interval(streams) -> None:
    """B-STREAM-2: an interval string ("10m", "1s", ...) starts at the first message published
    within that time before now."""
    queue = streams.declare()
    streams.publish(queue, numbered(3))
    assert streams.read(queue, "10m", 3) == list(enumerate(numbered(3)))
    time.sleep(2.2)
    streams.publish(queue, numbered(2, start=3))
    assert streams.read(queue, "1s", 2) == [(3, b"m3"), (4, b"m4")]
    assert streams.read(queue, "1D", 5) == list(enumerate(numbered(5)))


@pytest.mark.parametrize("offset", ["10x", "0s", "1"])
def test_bad_offset_refused(streams, connection, offset) -> None:
    """B-STREAM-2: an x-stream-offset string that is neither first/last/next nor an interval
    (a bad unit, a zero interval, a number in a string) is 406. (RabbitMQ 3.10 closes the
    connection with 541 INTERNAL_ERROR for "abc", "FIRST", "", true or void: not tested.)"""
    queue = streams.declare()

    def consume(ch: BlockingChannel) -> None:
        ch.basic_qos(prefetch_count=10)
        ch.basic_consume(queue, lambda *a: None, arguments={"x-stream-offset": offset})
    assert channel_refused(connection, consume) == (
        406, f"PRECONDITION_FAILED - invalid arg 'x-stream-offset' {where(queue)}: "
             f'{{invalid_stream_offset_arg,{{longstr,<<"{offset}">>}}}}')


# ---- B-STREAM-4: retention -----------------------------------------------------------------------

def first_read(streams: Streams, queue: str, until: Callable[[list], bool],
               timeout: float = 10.0) -> list[tuple[int, bytes]]:
    """What a consumer from "first" reads, polled until `until` holds."""
    deadline = time.monotonic() + timeout
    while True:
        reader = streams.reader(queue, "first", prefetch=1000)
        reader.pump(0.5)
        reader.close()
        if until(reader.read) or time.monotonic() > deadline:
            return reader.read
        time.sleep(0.2)


def assert_tail(read: list[tuple[int, bytes]], published: list[bytes]) -> None:
    """The read messages are the last ones published, in order, with growing offsets."""
    bodies = [body for _, body in read]
    offsets = [offset for offset, _ in read]
    assert bodies and bodies == published[len(published) - len(bodies):]
    assert offsets == sorted(set(offsets))


def test_retention_by_length_bytes(streams) -> None:
    """B-STREAM-4: with small segments (x-stream-max-segment-size-bytes 1000) and
    x-max-length-bytes 3000, publishing 60 messages of 100 bytes removes whole segments from
    the head: "first" moves forward, and what is left is the newest messages, in order, the
    last one included. (RabbitMQ applies the limit when a segment fills up.)"""
    queue = streams.declare(**{"x-stream-max-segment-size-bytes": 1000,
                               "x-max-length-bytes": 3000})
    published = [b"%03d" % i + b"." * 97 for i in range(60)]
    streams.publish(queue, published)
    read = first_read(streams, queue, lambda r: r and r[0][0] > 0)
    assert read[0][0] > 0
    assert len(read) < 60
    assert_tail(read, published)


def test_retention_by_max_age(streams) -> None:
    """B-STREAM-4: with x-max-age "1s" and small segments, messages older than a second go
    with their segments: after a pause, publishing more (which fills segments) removes the old
    segments from the head. (RabbitMQ applies max-age only when a segment fills up, so before
    the new publishes the old messages may still be read: not asserted.)"""
    queue = streams.declare(**{"x-stream-max-segment-size-bytes": 1000, "x-max-age": "1s"})
    old = [b"a%03d" % i + b"." * 96 for i in range(20)]
    new = [b"b%03d" % i + b"." * 96 for i in range(20)]
    streams.publish(queue, old)
    time.sleep(2.5)
    streams.publish(queue, new)
    read = first_read(streams, queue, lambda r: r and r[0][1] != old[0])
    assert read[0][1] != old[0] and read[0][0] > 0
    assert_tail(read, old + new)
    assert [body for _, body in read][-20:] == new


# ---- B-STREAM-6: automatic offset tracking (LavinMQ's arguments; not in RabbitMQ 3.10) ----------

def tracked(connection, queue, tag, offset: Any = "first", **kwargs) -> Reader:
    return Reader(connection, queue, offset, tag=tag, ack=False,
                  arguments={"x-stream-automatic-offset-tracking": True}, **kwargs)


def ack_upto(reader: Reader, count: int) -> None:
    """Ack the first `count` deliveries one by one, then a synchronous round trip so that the
    broker has them all."""
    for method, _, _ in reader.deliveries[:count]:
        reader.channel.basic_ack(method.delivery_tag)
    reader.channel.basic_qos(prefetch_count=100)


@mq_only
def test_tracking_resumes_after_last_ack(streams, uid) -> None:
    """B-STREAM-6: a consumer with a consumer tag and `x-stream-automatic-offset-tracking: true`
    that acks offsets 0..3 of 10 and is cancelled resumes, with the same tag, at offset 4 (its
    x-stream-offset "first" is overridden by the stored offset); the unacked ones come again."""
    queue = streams.declare()
    streams.publish(queue, numbered(10))
    tag = f"tracker-{uid}"
    reader = tracked(streams.connection, queue, tag).wait(10)
    ack_upto(reader, 4)
    reader.channel.basic_cancel(tag)
    reader.close()
    again = tracked(streams.connection, queue, tag).wait(6).pump(0.2)
    assert again.read == [(n, b"m%d" % n) for n in range(4, 10)]


@mq_only
def test_tracking_with_null_offset(streams, uid) -> None:
    """B-STREAM-6: `x-stream-offset` null (void) with a consumer tag turns tracking on too: the
    first time it reads from the first message, after a reconnect it resumes after the last
    ack."""
    queue = streams.declare()
    streams.publish(queue, numbered(5))
    tag = f"null-{uid}"
    conn = pika.BlockingConnection(pika.URLParameters(streams.url))
    reader = Reader(conn, queue, None, tag=tag, ack=False).wait(5)
    assert reader.offsets == [0, 1, 2, 3, 4]
    ack_upto(reader, 2)
    conn.close()
    conn = pika.BlockingConnection(pika.URLParameters(streams.url))
    try:
        again = Reader(conn, queue, None, tag=tag, ack=False).wait(3).pump(0.2)
        assert again.read == [(2, b"m2"), (3, b"m3"), (4, b"m4")]
    finally:
        conn.close()


@mq_only
def test_tracking_is_per_tag_and_needs_the_argument(streams, uid) -> None:
    """B-STREAM-6: the stored offset belongs to one consumer tag: another tag with tracking
    starts from its own x-stream-offset, and the same tag without the tracking argument (and
    with an explicit offset) reads from that offset."""
    queue = streams.declare()
    streams.publish(queue, numbered(6))
    tag = f"a-{uid}"
    reader = tracked(streams.connection, queue, tag).wait(6)
    ack_upto(reader, 3)
    reader.channel.basic_cancel(tag)
    reader.close()
    other = tracked(streams.connection, queue, f"b-{uid}").wait(6).pump(0.2)
    assert other.offsets == [0, 1, 2, 3, 4, 5]
    other.close()
    plain = streams.reader(queue, "first", tag=tag).wait(6).pump(0.2)
    assert plain.offsets == [0, 1, 2, 3, 4, 5]
    plain.close()
    resumed = tracked(streams.connection, queue, tag).wait(3).pump(0.2)
    assert resumed.offsets == [3, 4, 5]


# ---- restarts (mq) --------------------------------------------------------------------------------

@mq_only
@pytest.mark.parametrize("kill", [False, True], ids=["restart", "kill-9"])
def test_stream_and_tracked_offset_survive_restart(mq_fresh_broker, uid, kill) -> None:
    """B-STREAM-1, B-STREAM-6: a stream's confirmed messages (offsets and bodies) and a
    consumer's tracked offset survive a restart of mq and a kill -9; new messages continue
    the offsets. A clean stop keeps every ack followed by a synchronous round trip; a crash may
    lose the acks of its last half second (mq saves tracked offsets 0.5 s after an ack, which
    only redelivers: at least once), so the kill comes a second after the acks."""
    queue, tag = f"{uid}-s", f"tracker-{uid}"
    conn = pika.BlockingConnection(pika.URLParameters(mq_fresh_broker.url))
    ch = conn.channel()
    ch.queue_declare(queue, durable=True, arguments={**STREAM, "x-max-age": "7D"})
    ch.confirm_delivery()
    for body in numbered(10):
        ch.basic_publish("", queue, body)
    reader = tracked(conn, queue, tag).wait(10)
    ack_upto(reader, 5)
    conn.close()
    if kill:
        time.sleep(1.0)  # tracked offsets reach disk within OFFSETS_SAVE_DELAY (0.5 s) of an ack

    mq_fresh_broker.restart(kill=kill)

    conn = pika.BlockingConnection(pika.URLParameters(mq_fresh_broker.url))
    try:
        ch = conn.channel()
        ch.queue_declare(queue, durable=True, arguments={**STREAM, "x-max-age": "7D"})
        everything = Reader(conn, queue, "first").wait(10).pump(0.2)
        assert everything.read == list(enumerate(numbered(10)))
        resumed = tracked(conn, queue, tag).wait(5).pump(0.2)
        assert resumed.read == [(n, b"m%d" % n) for n in range(5, 10)]
        ch.confirm_delivery()
        ch.basic_publish("", queue, b"m10")
        everything.wait(11)
        assert everything.read[-1] == (10, b"m10")
        ch.queue_delete(queue)
    finally:
        conn.close()
