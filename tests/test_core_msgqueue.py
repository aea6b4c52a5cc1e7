"""The Cython ready-message structure (mq._core.msgqueue.MessageQueue) against a plain Python
model, by hypothesis: random publishes with priority and expiry, deliveries, requeues of
delivered messages, removals, purges and expiry (B-PRI-1, B-PRI-2, B-TTL-2, B-TTL-4,
B-LEN-1: what the queue-level behaviour is built on)."""
from __future__ import annotations

import sys
from dataclasses import dataclass

from hypothesis import settings, strategies as st
from hypothesis.stateful import (Bundle, RuleBasedStateMachine, consumes, initialize,
                                 invariant, rule)
from pamqp.commands import Basic

from mq._core.message import Message
from mq._core.msgqueue import MessageQueue


@dataclass
class Model:
    """One message as the reference model sees it."""
    body: bytes
    level: int
    seq: int
    expires_at: float
    redelivered: bool = False


def make_message(body: bytes, priority: int | None, expiration: str | None) -> Message:
    props = Basic.Properties(priority=priority, expiration=expiration).marshal()
    return Message("ex", "rk", props, body)


class MessageQueueMachine(RuleBasedStateMachine):
    """Ready messages: highest level first, publish (sequence) order within a level."""

    delivered = Bundle("delivered")

    @initialize(max_priority=st.sampled_from([0, 1, 3, 10, 255]))
    def start(self, max_priority: int) -> None:
        self.queue = MessageQueue(max_priority)
        self.max_priority = max_priority
        self.ready: list[Model] = []
        self.entries: dict[bytes, object] = {}  # body -> the core's Entry
        self.published = 0

    def _order(self) -> list[Model]:
        return sorted(self.ready, key=lambda m: (-m.level, m.seq))

    def _take(self, model: Model) -> None:
        self.ready.remove(model)

    @rule(priority=st.one_of(st.none(), st.integers(0, 255)),
          expires_at=st.sampled_from([0.0, 10.0, 20.0, 30.0]),
          size=st.integers(0, 5))
    def push(self, priority: int | None, expires_at: float, size: int) -> None:
        self.published += 1
        body = b"%d:" % self.published + b"x" * size
        msg = make_message(body, priority, str(int(expires_at * 1000)) if expires_at else None)
        entry = self.queue.push(msg, expires_at)
        self.entries[body] = entry
        level = min(priority or 0, self.max_priority)
        self.ready.append(Model(body, level, self.published, expires_at))
        assert entry.level == level

    @rule(count=st.integers(30, 120), priority=st.integers(0, 3),
          expires_at=st.sampled_from([10.0, 20.0]))
    def push_batch(self, count: int, priority: int, expires_at: float) -> None:
        """Many at once, so the lazy-removal sweeps of heap and levels happen too."""
        for _ in range(count):
            self.push(priority, expires_at, 1)

    @rule(target=delivered)
    def pop(self):
        entry = self.queue.pop()
        order = self._order()
        if not order:
            assert entry is None
            return None
        assert entry is not None and entry.msg.body == order[0].body
        assert entry.redelivered == order[0].redelivered
        self._take(order[0])
        return order[0]

    @rule(held=st.lists(consumes(delivered), max_size=4))
    def requeue(self, held: list[Model | None]) -> None:
        held = [m for m in held if m is not None]
        self.queue.requeue([self.entries[m.body] for m in held])
        for model in held:
            model.redelivered = True
            self.ready.append(model)

    @rule(held=consumes(delivered))
    def settle(self, held: Model | None) -> None:
        """An acked delivery is simply gone: nothing changes in the ready set."""

    @rule(index=st.integers(0, 50))
    def remove(self, index: int) -> None:
        if not self.ready:
            return
        model = self.ready[index % len(self.ready)]
        self.queue.remove(self.entries[model.body])
        self._take(model)

    @rule()
    def purge(self) -> None:
        removed = self.queue.purge()
        assert sorted(e.msg.body for e in removed) == sorted(m.body for m in self.ready)
        self.ready = []

    @rule(now=st.sampled_from([5.0, 10.0, 15.0, 20.0, 30.0]))
    def expire_due(self, now: float) -> None:
        expired = self.queue.expire_due(now)
        due = sorted((m for m in self.ready if m.expires_at and m.expires_at <= now),
                     key=lambda m: (m.expires_at, m.seq))
        assert [e.msg.body for e in expired] == [m.body for m in due]
        for model in due:
            self._take(model)

    @invariant()
    def same_ready_messages(self) -> None:
        if not hasattr(self, "queue"):
            return
        order = self._order()
        assert [e.msg.body for e in self.queue] == [m.body for m in order]
        assert self.queue.count == len(order) == len(self.queue)
        assert self.queue.bytes == sum(len(m.body) for m in order)
        peeked = self.queue.peek()
        assert (peeked.msg.body if peeked is not None else None) == \
            (order[0].body if order else None)
        deadlines = [m.expires_at for m in order if m.expires_at]
        assert self.queue.next_deadline() == (min(deadlines) if deadlines else 0.0)


MessageQueueMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40,
                                                 deadline=None)
TestMessageQueue = MessageQueueMachine.TestCase
TestMessageQueue.__doc__ = """B-PRI-1, B-PRI-2, B-TTL-2, B-TTL-4: MessageQueue behaves as the
plain model for random operation sequences: same messages, same order, same counts/bytes."""


def test_priority_above_max_counts_as_max() -> None:
    """B-PRI-1: a priority above max_priority lands on the top level, in publish order with
    the messages of that level."""
    queue = MessageQueue(3)
    for body, priority in [(b"a", 3), (b"b", 200), (b"c", None), (b"d", 3)]:
        queue.push(make_message(body, priority, None))
    assert [queue.pop().msg.body for _ in range(4)] == [b"a", b"b", b"d", b"c"]
    assert queue.pop() is None


def test_requeued_entry_keeps_deadline_and_place() -> None:
    """B-TTL-4, B-PRI-2: a requeued entry keeps its deadline (it still expires then) and its
    place ahead of newer messages."""
    queue = MessageQueue(0)
    first = queue.push(make_message(b"first", None, "1000"), 11.0)
    queue.push(make_message(b"second", None, None))
    assert queue.pop() is first
    queue.push(make_message(b"third", None, None))
    queue.requeue([first])
    assert [e.msg.body for e in queue] == [b"first", b"second", b"third"]
    assert queue.next_deadline() == 11.0
    assert [e.msg.body for e in queue.expire_due(11.0)] == [b"first"]
    assert first.redelivered and queue.count == 2


def test_deadlines_do_not_keep_delivered_messages_alive() -> None:
    """B-TTL-2, B-TTL-4: with a long TTL, delivered (or repeatedly requeued) messages are not
    held by the deadline heap until they would have expired: memory stays bounded by the
    ready messages, and expiry still finds exactly the ready ones that are due."""
    queue = MessageQueue(2)
    msg = make_message(b"x" * 100, 1, None)
    baseline = sys.getrefcount(msg)
    for _ in range(5000):
        queue.push(msg, 1e12)
        queue.pop()
    assert sys.getrefcount(msg) - baseline < 200
    looping = queue.push(make_message(b"looping", 2, None), 50.0)
    kept = queue.push(make_message(b"kept", 0, None), 60.0)
    for _ in range(5000):
        assert queue.pop() is looping
        queue.requeue([looping])
    assert sys.getrefcount(looping) < 200
    assert queue.next_deadline() == 50.0
    assert queue.expire_due(55.0) == [looping]
    assert queue.expire_due(1e13) == [kept] and queue.count == 0


def test_expired_entries_behind_the_head_are_not_kept() -> None:
    """B-TTL-2: messages expired far from the head (behind one that never expires) leave
    memory too, not only the ready count; the order of what remains is kept."""
    queue = MessageQueue(0)
    queue.push(make_message(b"head", None, None))
    msg = make_message(b"x" * 100, None, "5000")
    baseline = sys.getrefcount(msg)
    for _ in range(5000):
        queue.push(msg, 5.0)
        assert len(queue.expire_due(10.0)) == 1
    queue.push(make_message(b"tail", None, None))
    assert sys.getrefcount(msg) - baseline < 200
    assert [e.msg.body for e in queue] == [b"head", b"tail"]
    assert queue.pop().msg.body == b"head" and queue.pop().msg.body == b"tail"
