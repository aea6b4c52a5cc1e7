"""Small helpers shared by the publish/consume/channel/tx tests: queues, draining deliveries
with pika, and asserting how the broker closed a channel or connection."""
from __future__ import annotations

import time
from typing import Any

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel


def fresh_queue(channel: BlockingChannel, uid: str, suffix: str = "", **arguments: Any) -> str:
    """A new auto-delete=false, non-durable queue with a unique name."""
    name = f"{uid}{suffix}"
    channel.queue_declare(name, arguments=arguments or None)
    return name


def publish_many(channel: BlockingChannel, queue: str, bodies: list[bytes]) -> None:
    for body in bodies:
        channel.basic_publish("", queue, body)


def ready_count(channel: BlockingChannel, queue: str) -> int:
    """Ready (not unacked) messages in the queue, from a passive declare."""
    return channel.queue_declare(queue, passive=True).method.message_count


def collect(connection: pika.BlockingConnection, channel: BlockingChannel, queue: str,
            count: int, timeout: float = 5.0, auto_ack: bool = False,
            tag: str | None = None) -> list[tuple[Any, Any, bytes]]:
    """Consume until `count` deliveries arrived; returns (method, properties, body) each.
    The consumer stays subscribed (so no more than `count` is proof of a limit)."""
    got: list[tuple[Any, Any, bytes]] = []
    channel.basic_consume(queue, lambda ch, m, p, b: got.append((m, p, b)), auto_ack=auto_ack,
                          consumer_tag=tag)
    wait_for(connection, lambda: len(got) >= count, timeout)
    return got


def wait_for(connection: pika.BlockingConnection, cond: Any, timeout: float = 5.0) -> None:
    """Pump pika's I/O until cond() is true; fail after timeout."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting for the broker"
        connection.process_data_events(time_limit=0.05)


def settle(connection: pika.BlockingConnection, seconds: float = 0.3) -> None:
    """Give the broker time to send anything more it would send (proving a negative)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        connection.process_data_events(time_limit=0.05)


def assert_channel_closed(info: pytest.ExceptionInfo, code: int, text: str) -> None:
    """The broker closed the channel with this reply code and a text starting with `text`."""
    exc = info.value
    assert isinstance(exc, pika.exceptions.ChannelClosedByBroker), repr(exc)
    assert exc.reply_code == code, repr(exc)
    assert exc.reply_text.startswith(text), repr(exc)


def assert_connection_closed(info: pytest.ExceptionInfo, code: int, text: str) -> None:
    exc = info.value
    assert isinstance(exc, pika.exceptions.ConnectionClosedByBroker), repr(exc)
    assert exc.reply_code == code, repr(exc)
    assert exc.reply_text.startswith(text), repr(exc)
