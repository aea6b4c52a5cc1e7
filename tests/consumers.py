"""Several pika consumers of one queue, on channels (or connections) of their own, recording
who got which numbered message: for the consumer-priority and single-active-consumer tests."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import pika
from pika.adapters.blocking_connection import BlockingChannel


@dataclass
class Delivery:
    number: int          # the message body is its number
    consumer: str
    redelivered: bool
    tag: int


class Consumers:
    """Consumers of `queue` by name. Messages are published as their numbers by `publisher`;
    every connection involved is pumped while waiting."""

    def __init__(self, publisher: BlockingChannel, queue: str) -> None:
        self.publisher = publisher
        self.queue = queue
        self.deliveries: list[Delivery] = []
        self.channels: dict[str, BlockingChannel] = {}
        self.tags: dict[str, str] = {}
        self._unacked: dict[str, list[int]] = {}  # delivery tags not acked here yet
        self._connections = [publisher.connection]

    def add(self, name: str, priority: int | None = None, prefetch: int = 0,
            connection: pika.BlockingConnection | None = None) -> None:
        """Subscribe `name` (no-ack unless it has a prefetch limit)."""
        connection = connection or self.publisher.connection
        if connection not in self._connections:
            self._connections.append(connection)
        channel = connection.channel()
        if prefetch:
            channel.basic_qos(prefetch_count=prefetch)
        self.channels[name] = channel
        self._unacked[name] = []

        def on_message(ch: Any, method: Any, props: Any, body: bytes) -> None:
            self.deliveries.append(Delivery(int(body), name, method.redelivered,
                                            method.delivery_tag))
            if prefetch:
                self._unacked[name].append(method.delivery_tag)

        self.tags[name] = channel.basic_consume(
            self.queue, on_message, auto_ack=not prefetch,
            arguments=None if priority is None else {"x-priority": priority})

    def publish(self, numbers: range, wait: bool = True) -> None:
        """Publish the numbers; with wait, until that many deliveries arrived in all."""
        for n in numbers:
            self.publisher.basic_publish("", self.queue, str(n).encode())
        if wait:
            self.wait(lambda: len(self.deliveries) >= numbers.stop - 1)

    def wait(self, cond: Callable[[], bool], timeout: float = 10.0) -> None:
        """Pump every connection until cond() holds, then a little longer (so that an extra
        delivery would show)."""
        deadline = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < deadline, f"timed out; deliveries: {self.deliveries}"
            self.pump(0.02)
        self.pump(0.2)

    def pump(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for connection in self._connections:
                if connection.is_open:
                    connection.process_data_events(time_limit=0.01)

    def who(self, numbers: range) -> list[str]:
        """The consumer that last got each message, in message order ("-": none)."""
        by_number = {d.number: d.consumer for d in self.deliveries}
        return [by_number.get(n, "-") for n in numbers]

    def of(self, name: str) -> list[tuple[int, bool]]:
        """(number, redelivered) of what `name` got, in arrival order."""
        return [(d.number, d.redelivered) for d in self.deliveries if d.consumer == name]

    def ack_one(self, name: str) -> None:
        """Ack the oldest delivery to `name` not acked yet."""
        self.channels[name].basic_ack(self._unacked[name].pop(0))

    def nack_all(self, name: str) -> None:
        """Nack (requeue) every delivery to `name` not acked yet."""
        self.channels[name].basic_nack(self._unacked[name][-1], multiple=True, requeue=True)
        self._unacked[name] = []

    def cancel(self, name: str) -> None:
        self.channels[name].basic_cancel(self.tags[name])
