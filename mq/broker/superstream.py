"""Super streams and consumer groups (B-STREAM-7).

A super stream has RabbitMQ's layout: a durable direct exchange NAME (argument
`x-super-stream: true`) bound to partition streams `NAME-<key>`, each binding with routing key
`<key>` and the argument `x-stream-partition-order` (its index). Publishers route by key.

A consumer group reads a super stream over AMQP 0-9-1: basic.consume on the super stream's
name with the argument `x-stream-group` (the group's name: what RabbitMQ's stream protocol
calls the consumer name of single active consumers on a super stream). Every member gets
messages from the partitions it is given:
- partition i goes to member i mod n, members in the order they joined (RabbitMQ's rule), and
  this is recomputed when a member joins or leaves;
- offsets are tracked per group in each partition (the group's name is the tracking
  reference), so a partition that moves to another member resumes after the group's last
  ack there; what the old member had not acked is delivered again;
- x-stream-offset (default next) says where the group starts in a partition it has no offset
  for yet; prefetch is per member, shared by its partitions.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from mq.broker.errors import PreconditionFailed
from mq.broker.stream import StreamQueue

GROUP_ARGUMENT = "x-stream-group"
PARTITION_ORDER = "x-stream-partition-order"
SUPER_STREAM = "x-super-stream"


def is_super_stream(exchange: Any) -> bool:
    return exchange is not None and exchange.arguments.get(SUPER_STREAM) in (True, "true")


class SuperStream:
    """A super stream as basic.consume sees it: what a channel asks of a queue."""

    exclusive_owner = None
    settings = SimpleNamespace(single_active_consumer=False)

    def __init__(self, host: Any, exchange: Any) -> None:
        self.host = host
        self.vhost = host.name
        self.name = exchange.name
        self.exchange = exchange
        self.members: dict[str, list[Any]] = {}       # group -> consumers, in join order
        self.assigned: dict[tuple[str, str], Any] = {}  # (group, partition) -> consumer
        self.consumer_count = 0
        self._turn = 0  # which partition dispatch starts with (none starves)

    def partitions(self) -> list[StreamQueue]:
        """The partition streams, in partition order."""
        found = []
        for binding in self.exchange.bindings.values():
            queue = binding.destination
            if isinstance(queue, StreamQueue) and not queue.deleted:
                order = (binding.arguments or {}).get(PARTITION_ORDER)
                found.append((order if isinstance(order, int) else 1 << 62, queue.name, queue))
        return [queue for _, _, queue in sorted(found, key=lambda f: (f[0], f[1]))]

    def has_exclusive_consumer(self) -> bool:
        return False

    def check_consume(self, no_ack: bool, prefetch: int, global_prefetch: int,
                      arguments: dict) -> None:
        group = arguments.get(GROUP_ARGUMENT)
        if not isinstance(group, str) or not group:
            raise PreconditionFailed(f"consuming from super stream '{self.name}' in vhost "
                                     f"'{self.vhost}' needs the argument {GROUP_ARGUMENT} "
                                     "(the consumer group's name)")
        for partition in self.partitions():
            partition.check_consume(no_ack, prefetch, global_prefetch, arguments)

    def add_consumer(self, consumer: Any) -> None:
        group = consumer.arguments[GROUP_ARGUMENT]
        self.members.setdefault(group, []).append(consumer)
        self.consumer_count += 1
        self._rebalance(group)

    def remove_consumer(self, consumer: Any) -> None:
        group = consumer.arguments.get(GROUP_ARGUMENT)
        members = self.members.get(group, [])
        if consumer not in members:
            return
        members.remove(consumer)
        self.consumer_count -= 1
        self._rebalance(group)
        if not members:
            del self.members[group]

    def _rebalance(self, group: str) -> None:
        members = self.members.get(group, [])
        for i, partition in enumerate(self.partitions()):
            want = members[i % len(members)] if members else None
            key = (group, partition.name)
            have = self.assigned.get(key)
            if have is want:
                continue
            if have is not None:
                partition.detach_reader(have)
            if want is None:
                self.assigned.pop(key, None)
                continue
            self.assigned[key] = want
            partition.attach_reader(want, group, want.arguments.get("x-stream-offset", "next"))

    def dispatch(self, now: float = 0.0) -> None:
        partitions = self.partitions()
        if not partitions:
            return
        self._turn = (self._turn + 1) % len(partitions)
        for partition in partitions[self._turn:] + partitions[:self._turn]:
            partition.dispatch()
