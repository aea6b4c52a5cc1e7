"""Quorum queue declarations (x-queue-type=quorum) as RabbitMQ 3.10 answers them, with
x-delivery-count and x-delivery-limit. On one node a quorum queue is a durable queue with
these rules; there is no replication to speak of (as on a single-node RabbitMQ)."""
from __future__ import annotations

import time

import pika
import pytest

QUORUM = {"x-queue-type": "quorum"}


def _declare_refused(connection, **kwargs) -> str:
    ch = connection.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.queue_declare(**kwargs)
    assert info.value.reply_code == 406
    return info.value.reply_text


def test_quorum_declaration_rules(connection, uid):
    """B-Q-9: x-queue-type quorum is accepted for a durable, non-exclusive, non-auto-delete
    queue; otherwise 406 naming the property or argument, in RabbitMQ's words."""
    name = f"qq-{uid}"
    where = f"for queue '{name}' in vhost '/'"
    assert _declare_refused(connection, queue=name, arguments=QUORUM) == \
        f"PRECONDITION_FAILED - invalid property 'non-durable' {where}"
    assert _declare_refused(connection, queue=name, durable=True, exclusive=True,
                            arguments=QUORUM) == \
        f"PRECONDITION_FAILED - invalid property 'exclusive-owner' {where}"
    assert _declare_refused(connection, queue=name, durable=True, auto_delete=True,
                            arguments=QUORUM) == \
        f"PRECONDITION_FAILED - invalid property 'auto-delete' {where}"
    assert _declare_refused(connection, queue=name, durable=True,
                            arguments={**QUORUM, "x-max-priority": 5}) == \
        f"PRECONDITION_FAILED - invalid arg 'x-max-priority' {where} of queue type " \
        "rabbit_quorum_queue"
    ch = connection.channel()
    ok = ch.queue_declare(name, durable=True, arguments=QUORUM)
    assert ok.method.queue == name
    ch.queue_delete(name)


def _get(ch, queue):
    for _ in range(100):
        method, props, body = ch.basic_get(queue)
        if method:
            return method, props, body
        time.sleep(0.02)
    return None, None, None


def test_delivery_count_and_limit(connection, uid):
    """B-DLX-1: a quorum queue counts returns in x-delivery-count; past x-delivery-limit the
    message is dead-lettered with reason delivery_limit instead of requeued."""
    ch = connection.channel()
    dead = ch.queue_declare("", exclusive=True).method.queue
    name = f"qq-limit-{uid}"
    ch.queue_declare(name, durable=True, arguments={
        **QUORUM, "x-delivery-limit": 1, "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": dead})
    ch.basic_publish("", name, b"poison")
    counts = []
    for _ in range(2):
        method, props, body = _get(ch, name)
        assert body == b"poison"
        counts.append((method.redelivered, props.headers["x-delivery-count"]))
        ch.basic_nack(method.delivery_tag, requeue=True)
    assert counts == [(False, 0), (True, 1)]
    method, props, body = _get(ch, dead)
    assert body == b"poison"
    assert props.headers["x-death"][0]["reason"] == "delivery_limit"
    assert ch.basic_get(name)[0] is None
    ch.queue_delete(name)
