"""Differences from RabbitMQ 3.10 found by running client libraries' own integration suites
(kombu, py-amqp, aiormq, aio-pika, amqp091-go) against mq; each test pins mq to RabbitMQ's
observable behaviour with a client library or exact frames."""
from __future__ import annotations

from typing import Iterator

import amqp
import pytest
from pamqp import commands as spec

from exqutil import amqp_host
from rawamqp import RawClient


@pytest.fixture
def py_amqp(mq_url: str) -> Iterator[amqp.Connection]:
    conn = amqp.Connection(amqp_host(mq_url), userid="guest", password="guest")
    conn.connect()
    yield conn
    if conn.connected:
        conn.close()


def test_queue_delete_ok_comes_before_own_consumer_cancel(raw: RawClient, uid: str) -> None:
    """B-Q-8: deleting a queue the same channel consumes from answers delete-ok first, then
    basic.cancel for the consumer, in RabbitMQ's order."""
    raw.send_method(1, spec.Queue.Declare(queue=uid))
    raw.expect("Queue.DeclareOk")
    raw.send_method(1, spec.Basic.Consume(queue=uid, consumer_tag="ct"))
    raw.expect("Basic.ConsumeOk")
    raw.send_method(1, spec.Queue.Delete(queue=uid))
    assert raw.recv_method()[1].name == "Queue.DeleteOk"
    cancel = raw.recv_method()[1]
    assert (cancel.name, cancel.consumer_tag) == ("Basic.Cancel", "ct")


def test_py_amqp_deletes_queue_it_consumes(py_amqp: amqp.Connection, uid: str) -> None:
    """B-Q-8: py-amqp (as kombu's test_ack_from_another_thread does) deletes the queue its own
    consumer is on: queue_delete returns the count; the consumer's cancel comes after it."""
    ch = py_amqp.channel()
    ch.queue_declare(uid)
    ch.basic_publish(amqp.Message(b"left"), routing_key=uid)
    ch.basic_qos(0, 1, False)
    received: list[amqp.Message] = []
    ch.basic_consume(uid, callback=received.append)
    py_amqp.drain_events(timeout=5)
    assert [m.body for m in received] == [b"left"]
    assert ch.queue_delete(uid) == 0  # the one message is unacked, not counted
    with pytest.raises(amqp.exceptions.ConsumerCancelled):  # no on_cancel callback given
        py_amqp.drain_events(timeout=5)
