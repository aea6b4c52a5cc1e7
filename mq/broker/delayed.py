"""The delayed-message exchange (B-DELAY), with the interface of RabbitMQ's
rabbitmq-delayed-message-exchange plugin: exchange type `x-delayed-message`, argument
`x-delayed-type` (the type that routes), header `x-delay` (ms).

A message with a positive `x-delay` goes to the exchange's hold (DelayHold) and is routed by
the delayed type when it is due, in order of due time; one without it, or with a delay of
zero or less, is routed at once.

The hold is a queue of the store (named HOLD_PREFIX + the exchange's name, never listed): a
persistent message in a durable delayed exchange is logged there with its due time (the
store's per-message deadline), so it survives a restart or a crash and is routed at its time
afterwards (at once if overdue), like any stored message. Memory keeps only a heap of due
times with store ids (about 50 bytes a message); the bodies stay on disk until due.
Transient messages, and those of a non-durable exchange, wait in memory.
"""
from __future__ import annotations

import heapq
import time
from array import array
from typing import Any

from mq._core.message import Message
from mq._core.publish import enqueue
from mq.broker.errors import PreconditionFailed
from mq.broker.exchange import EXCHANGE_TYPES, Binding, Exchange
from mq.broker.queue import Queue
from mq.store.paging import StoredEntries

DELAYED_TYPE = "x-delayed-message"
HOLD_PREFIX = "amq.delayed.hold."
ROUTABLE_TYPES = ("direct", "fanout", "topic", "headers")
# Due messages routed per loop turn at most: about 2.5 ms of work. Each turn a connection
# reads one slice (64 KB: some 60 messages of 1 KB), so a longer release holds publishers back
# and their messages' due times start late (DL1: p99 lateness 210 ms with 256, 142 with 64).
RELEASE_SLICE = 64


def delay_of(msg: Message) -> int:
    """The message's x-delay header in ms (0: none, or not an integer)."""
    value = msg.integer_header(b"x-delay")  # the common case, without decoding the headers
    if value is not None:
        return value
    if b"x-delay" not in msg.props:
        return 0
    value = (msg.headers or {}).get("x-delay")
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    try:
        return int(value) if value is not None and not isinstance(value, bool) else 0
    except (TypeError, ValueError):
        return 0


class DelayedExchange(Exchange):
    type = DELAYED_TYPE
    delays = True

    def __init__(self, vhost: str, name: str, durable: bool = False, auto_delete: bool = False,
                 internal: bool = False, arguments: dict | None = None) -> None:
        super().__init__(vhost, name, durable, auto_delete, internal, arguments)
        kind = self.arguments.get("x-delayed-type")
        if isinstance(kind, bytes):
            kind = kind.decode(errors="replace")
        if kind not in ROUTABLE_TYPES:
            raise PreconditionFailed("Invalid argument, 'x-delayed-type' must be an existing "
                                     "exchange type")
        self.inner = EXCHANGE_TYPES[kind](vhost, name, durable, auto_delete, internal,
                                          self.arguments)
        self.hold: DelayHold | None = None  # set by the vhost (it is the hold's host)

    def bind(self, destination: Any, routing_key: str, arguments: dict) -> Binding | None:
        binding = Binding(self, destination, routing_key, arguments)
        if binding.key in self.bindings:
            return None
        if self.inner.bind(destination, routing_key, arguments) is None:  # its own checks
            return None
        self.bindings[binding.key] = binding
        if isinstance(destination, Exchange):
            self.has_exchange_destinations += 1
        return binding

    def unbind(self, destination: Any, routing_key: str, arguments: dict) -> Binding | None:
        self.inner.unbind(destination, routing_key, arguments)
        return super().unbind(destination, routing_key, arguments)

    def _remove(self, binding: Binding) -> None:
        pass  # the inner exchange's table was changed by unbind

    def holds(self, msg: Message) -> bool:
        """The message waits in the hold (it is delayed and not being released)."""
        hold = self.hold
        return hold is not None and msg is not hold.releasing and delay_of(msg) > 0

    def route(self, msg: Message, key: str) -> Any:
        return (self.hold,) if self.holds(msg) else self.inner.route(msg, key)

    @property
    def messages_delayed(self) -> int:
        return 0 if self.hold is None else len(self.hold)


class DelayHold(Queue):
    """Where a delayed exchange's messages wait until due."""

    def __init__(self, host: Any, exchange: DelayedExchange) -> None:
        super().__init__(host, HOLD_PREFIX + exchange.name, durable=exchange.durable)
        self.exchange = exchange
        self.releasing: Message | None = None  # being routed now: not held again
        # Heap of due_ms << 32 | slot; a slot holds a store id (ids) or a message (memory).
        self._heap: list[int] = []
        self._ids = array("Q")
        self._memory: dict[int, Message] = {}
        self._free: list[int] = []
        self._timer: Any = None
        self._armed_at = 0.0

    def __len__(self) -> int:
        return len(self._heap)

    @property
    def message_count(self) -> int:
        return len(self._heap)

    def publish(self, msg: Message) -> bool:
        due_ms = int(time.time() * 1000) + delay_of(msg)
        if self.store_qid and msg.delivery_mode == 2:
            self.store.enqueue(self.store_qid, msg, due_ms / 1000.0)
            self._push(due_ms, msg.store_id, None)
        else:
            self._push(due_ms, 0, msg)
        self.published += 1
        return True

    _publish = publish

    def _push(self, due_ms: int, store_id: int, msg: Message | None) -> None:
        if self._free:
            slot = self._free.pop()
            self._ids[slot] = store_id
        else:
            slot = len(self._ids)
            self._ids.append(store_id)
        if msg is not None:
            self._memory[slot] = msg
        heapq.heappush(self._heap, due_ms << 32 | slot)
        if self._heap[0] >> 32 == due_ms:
            self._arm()

    def recover_held(self, stored: StoredEntries) -> None:
        """The hold's stored messages after a restart: their ids and due times."""
        for store_id, due in zip(stored[0], stored[1]):
            self._push(int(due * 1000), store_id, None)
        self._arm()

    def _arm(self) -> None:
        if not self._heap:
            return
        at = (self._heap[0] >> 32) / 1000.0
        if self._timer is not None:
            if self._armed_at <= at:
                return
            self._timer.cancel()
        self._armed_at = at
        self._timer = self.host.timers.call_at(at, self._release)

    def _release(self) -> None:
        """Route what is due, in order of due time; stored bodies are read back together
        (one pread per run of nearby records)."""
        self._timer = None
        now_ms = int(time.time() * 1000)
        heap = self._heap
        due: list[tuple[int, Message | None]] = []
        while heap and heap[0] >> 32 <= now_ms and len(due) < RELEASE_SLICE:
            slot = heapq.heappop(heap) & 0xFFFFFFFF
            due.append((self._ids[slot], self._memory.pop(slot, None)))
            self._free.append(slot)
        stored = [store_id for store_id, msg in due if msg is None]
        read = iter(self.store.read_messages(stored)) if stored else iter(())
        for store_id, msg in due:
            self._route(msg if msg is not None else next(read))
            if store_id:
                self.store.ack(self.store_qid, store_id)
        self.delivered += len(due)
        if heap:
            self._armed_at = 0.0
            if heap[0] >> 32 <= now_ms:  # more due: the next loop turn goes on
                self._timer = self.host.timers.call_at(time.time(), self._release)
                self._armed_at = time.time()
            else:
                self._arm()

    def _route(self, msg: Message) -> None:
        self.releasing = msg
        try:
            queues = self.host.route(self.exchange, msg)
        finally:
            self.releasing = None
        if queues:
            enqueue(self.host.store, queues, msg, None, None)

    def drop_all(self) -> None:
        """The exchange is gone: its held messages go too (the store forgets them with
        the hold's queue, in one step: no record per message)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._heap.clear()
        self._memory.clear()
        self._ids = array("Q")
        self._free.clear()
