"""What a queue needs from a consumer. The protocol layer implements it; the broker never
sees channels or frames."""
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from mq._core.msgqueue import Entry
    from mq.broker.queue import Queue


class Consumer(Protocol):
    tag: str
    priority: int
    exclusive: bool
    no_ack: bool
    unacked: int  # deliveries to this consumer not yet settled (acked, rejected, requeued)
    owner: object  # the client connection it belongs to (credit flow never pauses that one)

    def has_room(self) -> bool:
        """True when the consumer may take one more delivery now (prefetch, flow, socket)."""

    def deliver(self, entry: Entry, queue: Queue) -> None:
        """Hand one message to the consumer (the queue has already taken it off ready)."""

    def cancelled_by_broker(self, queue: Queue) -> None:
        """The queue went away: tell the client (basic.cancel) and forget the consumer."""
