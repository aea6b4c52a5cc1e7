"""A queue: ready messages (Cython structure), its consumers, and delivery to them."""
from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Iterable

from mq._core.message import Message
from mq._core.msgqueue import Entry, MessageQueue

if TYPE_CHECKING:
    from mq.broker.consumer import Consumer


class Queue:
    """Ready messages plus consumers. Messages handed out are the channels' to settle."""

    def __init__(self, vhost: str, name: str, durable: bool = False, exclusive_owner: Any = None,
                 auto_delete: bool = False, arguments: dict | None = None,
                 on_unused: Callable[[Queue], None] | None = None) -> None:
        self.vhost = vhost
        self.name = name
        self.durable = durable
        self.exclusive_owner = exclusive_owner
        self.auto_delete = auto_delete
        self.arguments = dict(arguments or {})
        self.ready = MessageQueue(int(self.arguments.get("x-max-priority") or 0))
        # Consumers by priority, highest first; each group rotates for round-robin.
        self._groups: list[tuple[int, deque]] = []
        self.consumer_count = 0
        self.unacked = 0
        self.deleted = False
        self.incoming: dict[tuple, Any] = {}  # bindings that lead here, for cleanup on delete
        self._had_consumer = False
        self._on_unused = on_unused

    @property
    def exclusive(self) -> bool:
        return self.exclusive_owner is not None

    @property
    def message_count(self) -> int:
        return self.ready.count

    # ---- messages in ------------------------------------------------------------------

    def publish(self, msg: Message) -> None:
        self.ready.push(msg)
        if self.consumer_count:
            self.dispatch()

    def requeue(self, entries: Iterable[Entry]) -> None:
        """Return delivered-but-unsettled messages to their places, marked redelivered."""
        entries = list(entries)
        if self.deleted or not entries:
            return
        self.unacked -= len(entries)
        self.ready.requeue(entries)
        self.dispatch()

    # ---- messages out -----------------------------------------------------------------

    def dispatch(self) -> None:
        """Hand ready messages to consumers with room, round-robin within a priority."""
        ready = self.ready
        while ready.count:
            consumer = self._pick_consumer()
            if consumer is None:
                return
            entry = ready.pop()
            if not consumer.no_ack:
                self.unacked += 1
            consumer.deliver(entry, self)

    def get(self, no_ack: bool) -> Entry | None:
        entry = self.ready.pop()
        if entry is not None and not no_ack:
            self.unacked += 1
        return entry

    def settle(self, entries: Iterable[Entry]) -> None:
        """Delivered messages acknowledged (or rejected without requeue): they are gone."""
        if not self.deleted:
            self.unacked -= sum(1 for _ in entries)

    def purge(self) -> int:
        return len(self.ready.purge())

    def _pick_consumer(self) -> Consumer | None:
        for _, group in self._groups:
            for _ in range(len(group)):
                consumer = group[0]
                group.rotate(-1)
                if consumer.has_room():
                    return consumer
        return None

    # ---- consumers --------------------------------------------------------------------

    @property
    def consumers(self) -> list[Consumer]:
        return [c for _, group in self._groups for c in group]

    def has_exclusive_consumer(self) -> bool:
        return any(c.exclusive for c in self.consumers)

    def add_consumer(self, consumer: Consumer) -> None:
        for priority, group in self._groups:
            if priority == consumer.priority:
                group.append(consumer)
                break
        else:
            self._groups.append((consumer.priority, deque([consumer])))
            self._groups.sort(key=lambda g: -g[0])
        self.consumer_count += 1
        self._had_consumer = True
        self.dispatch()

    def remove_consumer(self, consumer: Consumer) -> None:
        for i, (_, group) in enumerate(self._groups):
            if consumer in group:
                group.remove(consumer)
                if not group:
                    del self._groups[i]
                self.consumer_count -= 1
                break
        if self.auto_delete and self._had_consumer and not self.consumer_count \
                and self._on_unused is not None:
            self._on_unused(self)

    def delete(self) -> int:
        """Drop everything; consumers are told. Returns the count of ready messages lost."""
        self.deleted = True
        count = self.ready.count
        self.ready.purge()
        consumers = self.consumers
        self._groups = []
        self.consumer_count = 0
        for consumer in consumers:
            consumer.cancelled_by_broker(self)
        return count
