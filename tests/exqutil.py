"""Helpers for the exchange and queue tests: binding queues, draining them with basic.get,
asking which queues a message reached, and whether an exchange or queue exists."""
from __future__ import annotations

import time
from typing import Callable, Iterable

import pika
from pika.adapters.blocking_connection import BlockingChannel


def bind_queues(channel: BlockingChannel, exchange: str, bindings: dict[str, list[str]],
                arguments: dict | None = None) -> list[str]:
    """Declare each queue (exclusive, so it goes with the test's connection) and bind it to
    `exchange` with each of its keys; returns the queue names."""
    for queue, keys in bindings.items():
        channel.queue_declare(queue, exclusive=True)
        for key in keys:
            channel.queue_bind(queue, exchange, key, arguments=arguments)
    return list(bindings)


def drain(channel: BlockingChannel, queue: str) -> list[bytes]:
    """Every ready message of the queue, in order, taken with basic.get (no-ack). Messages
    published earlier on the same channel are routed before the get is served."""
    bodies = []
    while True:
        method, _, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return bodies
        bodies.append(body)


def routed_to(channel: BlockingChannel, exchange: str, queues: Iterable[str],
              routing_key: str) -> set[str]:
    """Publish one message and return the queues that got it; a queue that got more than one
    copy fails the test."""
    channel.basic_publish(exchange, routing_key, b"probe")
    reached = set()
    for queue in queues:
        got = drain(channel, queue)
        assert len(got) <= 1, f"queue {queue} got {len(got)} copies"
        if got:
            reached.add(queue)
    return reached


def exchange_exists(connection: pika.BlockingConnection, name: str) -> bool:
    return _exists(connection, lambda ch: ch.exchange_declare(name, "direct", passive=True))


def queue_exists(connection: pika.BlockingConnection, name: str) -> bool:
    return _exists(connection, lambda ch: ch.queue_declare(name, passive=True))


def _exists(connection: pika.BlockingConnection,
            passive_declare: Callable[[BlockingChannel], object]) -> bool:
    """Passive declare on a channel of its own: 404 means absent (and costs only that
    channel)."""
    channel = connection.channel()
    try:
        passive_declare(channel)
    except pika.exceptions.ChannelClosedByBroker as exc:
        assert exc.reply_code == 404, exc
        return False
    channel.close()
    return True


def eventually(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until cond() holds: RabbitMQ deletes exclusive and auto-delete queues
    asynchronously, a moment after the close or cancel is answered."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def amqp_host(url: str) -> str:
    """host:port of an amqp:// URL, as py-amqp wants it."""
    params = pika.URLParameters(url)
    return f"{params.host}:{params.port}"
