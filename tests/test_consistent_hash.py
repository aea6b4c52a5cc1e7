"""The x-consistent-hash exchange (B-EX-12), end to end with pika: binding keys are weights,
the spread follows them (checked over 20k keys), a key always reaches the same queue, and
the hash-header / hash-property arguments pick what is hashed.

The reference RabbitMQ has the plugin disabled, so these run against mq only; the 406 texts
are those of RabbitMQ 3.10's rabbit_exchange_type_consistent_hash."""
from __future__ import annotations

import datetime
import os
from collections import defaultdict
from typing import Any

import pika
import pytest

from amqputil import settle, wait_for
from queuetest import Scratch, message_count, scratch

__all__ = ["scratch"]

pytestmark = pytest.mark.skipif(bool(os.environ.get("MQ_TEST_URL")),
                                reason="the reference RabbitMQ has no consistent-hash plugin")

CH = "x-consistent-hash"


def hash_exchange(scratch: Scratch, weights: list[int], **arguments: Any) -> tuple[str, list[str]]:
    """An x-consistent-hash exchange with one queue bound per weight (the binding key)."""
    exchange = scratch.exchange("chx", CH, **arguments)
    queues = []
    for i, weight in enumerate(weights):
        queue = scratch.queue(f"q{i}")
        scratch.channel.queue_bind(queue, exchange, str(weight))
        queues.append(queue)
    return exchange, queues


def where_each_went(scratch: Scratch, queues: list[str], total: int) -> dict[bytes, list[str]]:
    """Consume every queue until `total` messages arrived: body -> the queues it reached."""
    reached: dict[bytes, list[str]] = defaultdict(list)
    count = [0]
    channel = scratch.connection.channel()
    for queue in queues:
        def got(ch: Any, method: Any, props: Any, body: bytes, queue: str = queue) -> None:
            reached[body].append(queue)
            count[0] += 1
        channel.basic_consume(queue, got, auto_ack=True)
    wait_for(scratch.connection, lambda: count[0] >= total, timeout=20)
    settle(scratch.connection, 0.2)
    assert count[0] == total, "more messages than published"
    channel.close()
    return reached


def publish_keys(scratch: Scratch, exchange: str, keys: list[str], copies: int = 1,
                 props: Any = None) -> None:
    for _ in range(copies):
        for key in keys:
            scratch.channel.basic_publish(exchange, key, key.encode(), props)


def test_same_routing_key_same_queue(scratch) -> None:
    """B-EX-12: every message reaches exactly one queue, and all messages with the same
    routing key reach the same queue."""
    exchange, queues = hash_exchange(scratch, [1, 1, 1, 1])
    keys = [f"order-{i}" for i in range(300)]
    publish_keys(scratch, exchange, keys, copies=3)
    reached = where_each_went(scratch, queues, 900)
    assert {len(set(reached[k.encode()])) for k in keys} == {1}
    assert {len(reached[k.encode()]) for k in keys} == {3}
    assert len({q for qs in reached.values() for q in qs}) == 4, "some queue got no key"


def test_spread_follows_weights(scratch) -> None:
    """B-EX-12: over 20 000 distinct routing keys, queues bound with weights 1, 2, 3 and 4
    get shares of 1/10, 2/10, 3/10 and 4/10, each within 15% of its expected count. (Over
    random queue names the weight-1 share varies with a standard deviation of about 3.5%,
    ring placement and sampling together: 15% is over four of them.)"""
    weights = [1, 2, 3, 4]
    exchange, queues = hash_exchange(scratch, weights)
    total = 20_000
    publish_keys(scratch, exchange, [f"session-{i:05d}" for i in range(total)])
    counts = [message_count(scratch.channel, q) for q in queues]
    assert sum(counts) == total
    for count, weight in zip(counts, weights):
        expected = total * weight / sum(weights)
        assert abs(count - expected) <= 0.15 * expected, (counts, weights)


def test_unbinding_moves_only_that_queues_keys(scratch) -> None:
    """B-EX-12: consistent hashing: after a queue is unbound, the keys of the other queues
    stay where they were; only the unbound queue's keys move."""
    exchange, queues = hash_exchange(scratch, [1, 1, 1, 1])
    keys = [f"user-{i}" for i in range(800)]
    publish_keys(scratch, exchange, keys)
    before = {k: qs[0] for k, qs in where_each_went(scratch, queues, len(keys)).items()}
    scratch.channel.queue_unbind(queues[3], exchange, "1")
    publish_keys(scratch, exchange, keys)
    after = {k: qs[0] for k, qs in where_each_went(scratch, queues[:3], len(keys)).items()}
    moved = {k for k in before if before[k] != after[k]}
    assert moved == {k for k in before if before[k] == queues[3]}
    assert moved, "the unbound queue had no keys"


@pytest.mark.parametrize("key,text", [
    ("abc", 'The binding key must be an integer: <<"abc">>'),
    ("", 'The binding key must be an integer: <<"">>'),
    ("1.5", 'The binding key must be an integer: <<"1.5">>'),
    ("0", "The binding key must be greater than 0"),
    ("-3", "The binding key must be greater than 0"),
    ("1001", "The binding key must be at most 1000"),  # mq's bound; RabbitMQ has none
])
def test_bad_weight_is_406(scratch, key: str, text: str) -> None:
    """B-EX-12: a binding key that is not a weight (an integer from 1 to 1000) is 406 with
    RabbitMQ's text, and the binding is not made."""
    exchange, [queue] = hash_exchange(scratch, [1])
    other = scratch.queue("other")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        scratch.connection.channel().queue_bind(other, exchange, key)
    assert (info.value.reply_code, info.value.reply_text) == (406, f"PRECONDITION_FAILED - {text}")
    publish_keys(scratch, exchange, [f"k{i}" for i in range(50)])
    assert message_count(scratch.channel, queue) == 50
    assert message_count(scratch.channel, other) == 0


def test_no_bindings_is_unroutable(scratch) -> None:
    """B-EX-12: with no queue bound the message is unroutable (mandatory: basic.return)."""
    exchange = scratch.exchange("chx", CH)
    returned: list[int] = []
    scratch.channel.add_on_return_callback(lambda ch, m, p, b: returned.append(m.reply_code))
    scratch.channel.basic_publish(exchange, "k", b"x", mandatory=True)
    settle(scratch.connection)
    assert returned == [312]


def test_hash_header(scratch) -> None:
    """B-EX-12: with hash-header the named header is hashed, not the routing key: the same
    header value always reaches the same queue whatever the routing key; different values
    spread over the queues; messages without the header all reach one queue (as RabbitMQ
    documents)."""
    exchange, queues = hash_exchange(scratch, [1, 1, 1], **{"hash-header": "tenant"})
    values = [f"tenant-{i}" for i in range(100)]
    for round_ in range(3):
        for value in values:
            scratch.channel.basic_publish(exchange, f"rk-{round_}-{value}", value.encode(),
                                          pika.BasicProperties(headers={"tenant": value}))
    for i in range(30):
        scratch.channel.basic_publish(exchange, f"rk-{i}", b"no header",
                                      pika.BasicProperties(headers={"other": i}))
    reached = where_each_went(scratch, queues, 330)
    assert {len(set(reached[v.encode()])) for v in values} == {1}
    assert len({reached[v.encode()][0] for v in values}) == 3
    assert len(reached[b"no header"]) == 30 and len(set(reached[b"no header"])) == 1


@pytest.mark.parametrize("prop", ["message_id", "correlation_id", "timestamp"])
def test_hash_property(scratch, prop: str) -> None:
    """B-EX-12: with hash-property the named property (message_id, correlation_id or
    timestamp) is hashed: the same value always reaches the same queue, whatever the
    routing key, and different values spread."""
    exchange, queues = hash_exchange(scratch, [1, 1, 1], **{"hash-property": prop})
    epoch = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)

    def props(i: int) -> pika.BasicProperties:
        if prop == "timestamp":
            return pika.BasicProperties(timestamp=int(epoch.timestamp()) + i)
        return pika.BasicProperties(**{prop: f"id-{i}"})

    for copy in range(2):
        for i in range(120):
            scratch.channel.basic_publish(exchange, f"rk-{copy}-{i}", str(i).encode(), props(i))
    reached = where_each_went(scratch, queues, 240)
    assert {len(set(reached[str(i).encode()])) for i in range(120)} == {1}
    assert len({reached[str(i).encode()][0] for i in range(120)}) == 3


@pytest.mark.parametrize("arguments,text", [
    ({"hash-property": "app_id"}, "Unsupported property: app_id"),
    ({"hash-header": "h", "hash-property": "message_id"},
     "hash-header and hash-property are mutually exclusive"),
])
def test_bad_hash_arguments_are_406(scratch, arguments: dict, text: str) -> None:
    """B-EX-12: hash-property naming a property RabbitMQ can't hash on, or both hash-header
    and hash-property, is 406 with RabbitMQ's text, and no exchange is made."""
    name = f"{scratch.uid}-bad"
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        scratch.connection.channel().exchange_declare(name, CH, arguments=arguments)
    assert info.value.reply_code == 406
    assert info.value.reply_text.startswith(f"PRECONDITION_FAILED - {text}"), info.value
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        scratch.connection.channel().exchange_declare(name, CH, passive=True)
    assert info.value.reply_code == 404



def test_same_key_same_queue_after_restart(mq_fresh_broker, uid) -> None:
    """B-EX-12: a durable x-consistent-hash exchange comes back from a restart with its
    bindings and the same ring: every key reaches the queue it reached before."""
    exchange, queues = f"{uid}-chx", [f"{uid}-q{i}" for i in range(3)]
    keys = [f"account-{i}" for i in range(300)]

    def mapping(declare: bool) -> dict[bytes, str]:
        connection = pika.BlockingConnection(pika.URLParameters(mq_fresh_broker.url))
        session = Scratch(connection, uid)
        if declare:
            session.channel.exchange_declare(exchange, CH, durable=True)
            for weight, queue in enumerate(queues, start=1):
                session.channel.queue_declare(queue, durable=True)
                session.channel.queue_bind(queue, exchange, str(weight))
        publish_keys(session, exchange, keys)
        reached = where_each_went(session, queues, len(keys))
        connection.close()
        return {key: qs[0] for key, qs in reached.items()}

    before = mapping(declare=True)
    assert len(set(before.values())) == 3
    mq_fresh_broker.restart()
    assert mapping(declare=False) == before
