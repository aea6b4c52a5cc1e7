"""x-single-active-consumer (B-CON-11), end to end with pika (and a raw socket for a
connection that just drops): one consumer gets the messages; when it is cancelled or its
connection goes, the next in subscription order takes over and gets the rest, the requeued
unacked ones first. Run against RabbitMQ too: MQ_TEST_URL=amqp://guest:guest@127.0.0.1:5672/
(the tests marked mq_only check where RabbitMQ 3.10 stalls, see their docstrings)."""
from __future__ import annotations

from typing import Iterator

import pika
import pytest
from pamqp import commands as spec

from consumers import Consumers
from queuetest import Scratch, message_count, mq_only, scratch
from rawamqp import RawClient

__all__ = ["scratch"]

SAC = {"x-single-active-consumer": True}


@pytest.fixture
def other_connections(mq_url: str) -> Iterator[list[pika.BlockingConnection]]:
    """Three more connections, so that each consumer can have its own."""
    conns = [pika.BlockingConnection(pika.URLParameters(mq_url)) for _ in range(3)]
    yield conns
    for conn in conns:
        if conn.is_open:
            conn.close()


@pytest.fixture
def sac(scratch: Scratch) -> Consumers:
    return Consumers(scratch.channel, scratch.queue("q", **SAC))


def test_only_first_consumer_gets_messages(scratch, sac, other_connections) -> None:
    """B-CON-11: of two consumers (on two connections) only the first to subscribe gets
    messages, all of them, in order; both count as consumers."""
    a, b = other_connections[:2]
    sac.add("first", connection=a)
    sac.add("second", connection=b)
    sac.publish(range(1, 21))
    assert sac.of("first") == [(n, False) for n in range(1, 21)]
    assert sac.of("second") == []
    assert scratch.channel.queue_declare(sac.queue, passive=True).method.consumer_count == 2


def test_subscription_order_not_priority_picks_active(sac) -> None:
    """B-CON-11: the active consumer is the first subscriber even when a later one has a
    higher x-priority (classic queues in RabbitMQ 3.10)."""
    sac.add("first", priority=0)
    sac.add("urgent", priority=10)
    sac.publish(range(1, 6))
    assert sac.who(range(1, 6)) == ["first"] * 5


def test_active_consumer_at_prefetch_limit_does_not_spill(scratch, sac) -> None:
    """B-CON-11: while the active consumer is at its prefetch limit the others get nothing;
    the messages wait in the queue."""
    sac.add("first", prefetch=1)
    sac.add("second")
    sac.publish(range(1, 6), wait=False)
    sac.wait(lambda: len(sac.deliveries) == 1)
    assert sac.who(range(1, 6)) == ["first", "-", "-", "-", "-"]
    assert message_count(scratch.channel, sac.queue) == 4


def test_cancel_hands_over_in_subscription_order(sac) -> None:
    """B-CON-11: when the active consumer is cancelled the next one in subscription order
    (not the last one) gets the following messages, and so on down the line."""
    for name in ("a", "b", "c"):
        sac.add(name)
    sac.publish(range(1, 4))
    sac.cancel("a")
    sac.publish(range(4, 7))
    sac.cancel("b")
    sac.publish(range(7, 10))
    assert sac.who(range(1, 10)) == ["a"] * 3 + ["b"] * 3 + ["c"] * 3


def test_connection_drop_hands_over_with_requeued_first(mq_url, sac, other_connections) -> None:
    """B-CON-11: the active consumer's connection drops (socket closed, no AMQP close) with
    two unacked messages: the next subscriber gets everything, in the original order, the
    two requeued ones first and marked redelivered; the third subscriber gets nothing."""
    params = pika.URLParameters(mq_url)
    raw = RawClient(params.port, params.host)
    raw.handshake()
    raw.open_channel(1)
    raw.send_method(1, spec.Basic.Qos(prefetch_count=2))
    raw.expect("Basic.QosOk")
    raw.send_method(1, spec.Basic.Consume(queue=sac.queue, consumer_tag="doomed"))
    raw.expect("Basic.ConsumeOk")
    sac.add("next", connection=other_connections[0])
    sac.add("last", connection=other_connections[1])
    sac.publish(range(1, 11), wait=False)
    held = []
    for _ in range(2):
        deliver = raw.expect("Basic.Deliver")
        raw.recv_frame()  # content header
        held.append(int(raw.recv_frame()[1].value))
        assert deliver.consumer_tag == "doomed"
    assert held == [1, 2]
    raw.close()
    sac.wait(lambda: len(sac.deliveries) == 10)
    assert sac.of("next") == [(1, True), (2, True)] + [(n, False) for n in range(3, 11)]
    assert sac.of("last") == []


def test_channel_close_hands_over_with_requeued_first(sac, other_connections) -> None:
    """B-CON-11: the active consumer's channel closes (pika cancels, then closes) with two
    unacked messages: the next subscriber gets all ten in order, the two requeued first."""
    sac.add("active", prefetch=2, connection=other_connections[0])
    sac.add("next", connection=other_connections[1])
    sac.publish(range(1, 11), wait=False)
    sac.wait(lambda: len(sac.deliveries) == 2)
    sac.channels["active"].close()
    sac.wait(lambda: len(sac.deliveries) == 12)
    assert sac.of("next") == [(1, True), (2, True)] + [(n, False) for n in range(3, 11)]


def test_cancelled_consumer_requeue_goes_to_next_first(sac) -> None:
    """B-CON-11: after a cancel the next consumer does not start while the cancelled one
    still holds unacked messages (one holder at a time); when it requeues them, the next
    consumer gets them first, then the rest, in order."""
    sac.add("active", prefetch=2)
    sac.add("next")
    sac.publish(range(1, 11), wait=False)
    sac.wait(lambda: len(sac.deliveries) == 2)
    sac.cancel("active")
    sac.pump(0.3)
    assert sac.of("next") == []
    sac.nack_all("active")
    sac.wait(lambda: len(sac.deliveries) == 12)
    assert sac.of("next") == [(1, True), (2, True)] + [(n, False) for n in range(3, 11)]


@mq_only
def test_cancelled_consumer_acks_then_next_takes_rest(sac) -> None:
    """B-CON-11: after a cancel, once the cancelled consumer has acked what it held, the next
    consumer gets the rest at once. (RabbitMQ 3.10 hands over only at the queue's next event,
    e.g. a new publish: until then the rest waits.)"""
    sac.add("active", prefetch=2)
    sac.add("next")
    sac.publish(range(1, 11), wait=False)
    sac.wait(lambda: len(sac.deliveries) == 2)
    sac.cancel("active")
    sac.ack_one("active")
    sac.pump(0.3)
    assert sac.of("next") == []
    sac.ack_one("active")
    sac.wait(lambda: len(sac.deliveries) == 10)
    assert sac.of("next") == [(n, False) for n in range(3, 11)]


def test_exclusive_consume_refused(scratch) -> None:
    """B-CON-11: an exclusive consumer on a single-active-consumer queue is 403, even on an
    unused queue, as in RabbitMQ."""
    queue = scratch.queue("q", **SAC)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        scratch.connection.channel().basic_consume(queue, lambda *a: None, exclusive=True)
    assert (info.value.reply_code, info.value.reply_text) == (
        403, f"ACCESS_REFUSED - queue '{queue}' in vhost '/' in exclusive use")
