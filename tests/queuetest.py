"""Helpers for the queue-semantics tests (TTL, dead lettering, length limits, priorities):
scratch queues and exchanges that are deleted afterwards (the same tests run against
RabbitMQ with MQ_TEST_URL), polling reads, and the x-death header as RabbitMQ writes it."""
from __future__ import annotations

import os
import time
from typing import Any, Iterator

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel

# Checks of mq's own improvements over RabbitMQ (or of its log) can't run against RabbitMQ.
mq_only = pytest.mark.skipif(bool(os.environ.get("MQ_TEST_URL")),
                             reason="mq behaviour beyond RabbitMQ's (or mq's log)")

Delivery = tuple[Any, pika.BasicProperties, bytes]


class Scratch:
    """Queues and exchanges with names unique to one test, deleted when it ends."""

    def __init__(self, connection: pika.BlockingConnection, uid: str) -> None:
        self.connection = connection
        self.channel = connection.channel()
        self.uid = uid
        self._queues: list[str] = []
        self._exchanges: list[str] = []

    def queue(self, suffix: str, **arguments: Any) -> str:
        name = f"{self.uid}-{suffix}"
        self.channel.queue_declare(name, arguments=arguments or None)
        self._queues.append(name)
        return name

    def exchange(self, suffix: str, type_: str = "fanout", internal: bool = False,
                 **arguments: Any) -> str:
        name = f"{self.uid}-{suffix}"
        self.channel.exchange_declare(name, type_, internal=internal,
                                      arguments=arguments or None)
        self._exchanges.append(name)
        return name

    def dead_letter_target(self, suffix: str = "dlx") -> tuple[str, str]:
        """A fanout dead-letter exchange and the queue that collects what reaches it."""
        exchange = self.exchange(suffix)
        queue = self.queue(f"{suffix}-q")
        self.channel.queue_bind(queue, exchange)
        return exchange, queue

    def cleanup(self) -> None:
        if not self.connection.is_open:
            return
        channel = self.connection.channel()
        for name in self._queues:
            channel.queue_delete(name)
        for name in self._exchanges:
            channel.exchange_delete(name)
        channel.close()


@pytest.fixture
def scratch(connection: pika.BlockingConnection, uid: str) -> Iterator[Scratch]:
    s = Scratch(connection, uid)
    yield s
    s.cleanup()


def wait_get(channel: BlockingChannel, queue: str, timeout: float = 5.0,
             auto_ack: bool = True) -> Delivery:
    """basic.get until a message is there (it may still be on its way, e.g. dead-lettered)."""
    deadline = time.monotonic() + timeout
    while True:
        method, props, body = channel.basic_get(queue, auto_ack=auto_ack)
        if method is not None:
            return method, props, body
        assert time.monotonic() < deadline, f"nothing arrived in {queue} within {timeout} s"
        channel.connection.process_data_events(time_limit=0.05)


def wait_count(channel: BlockingChannel, queue: str, count: int, timeout: float = 5.0) -> None:
    """Poll the queue's ready count (passive declare) until it is `count`."""
    deadline = time.monotonic() + timeout
    while (n := message_count(channel, queue)) != count:
        assert time.monotonic() < deadline, f"{queue} holds {n} messages, expected {count}"
        channel.connection.process_data_events(time_limit=0.05)


def message_count(channel: BlockingChannel, queue: str) -> int:
    return channel.queue_declare(queue, passive=True).method.message_count


def drain(channel: BlockingChannel, queue: str) -> list[Delivery]:
    """Every ready message, in delivery order, acknowledged."""
    out = []
    while True:
        method, props, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return out
        out.append((method, props, body))


def bodies(deliveries: list[Delivery]) -> list[bytes]:
    return [body for _, _, body in deliveries]


def publish(channel: BlockingChannel, queue: str, body: bytes, **props: Any) -> None:
    channel.basic_publish("", queue, body, pika.BasicProperties(**props))


def x_death(props: pika.BasicProperties) -> list[dict]:
    return (props.headers or {}).get("x-death") or []


def is_long(value: Any) -> bool:
    """RabbitMQ writes x-death counts as 64-bit signed ('l'); pika decodes only that type as
    its `long` (Java clients read it as a Long, so the wire type matters)."""
    return isinstance(value, pika.compat.long)
