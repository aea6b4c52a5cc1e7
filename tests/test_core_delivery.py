"""A channel's unsettled deliveries (mq._core.delivery.Deliveries) against a plain Python
model, by hypothesis: deliveries to consumers (with and without no_ack, through
Deliveries.add and through QueueCore.dispatch), basic.get deliveries, ack with and without
multiple (tag 0 included) for known and unknown tags, take/release (settle now or at a
commit), take/restore (tx.rollback), take_all (recover, channel close), and long runs so that
the window's front is trimmed (B-CON-3, B-CON-4, B-CON-6, B-CON-7, B-CON-8, B-CON-9, B-TX-1:
what the channel-level behaviour is built on)."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from hypothesis import settings, strategies as st
from hypothesis.stateful import (Bundle, RuleBasedStateMachine, consumes, initialize,
                                 invariant, rule)
from hypothesis.stateful import multiple as no_result
from pamqp import frame as pamqp_frame
from pamqp.commands import Basic

from mq._core.delivery import ConsumerCore, Deliveries, Output, QueueCore
from mq._core.message import Message
from mq._core.msgqueue import Entry, MessageQueue

PROPS = Basic.Properties().marshal()


def make_entry(seq: int) -> Entry:
    return Entry(Message("ex", "rk", PROPS, b"%d" % seq), seq, 0, 0.0)


class Queue(QueueCore):
    """As mq.broker.queue.Queue builds on QueueCore, minimally: what settle() hands to the
    store (store_qid set) is logged, in call order, as (queue, entries)."""

    def __init__(self, name: str, log: list, deleted: bool = False) -> None:
        self.name = name
        self.log = log
        self.ready = MessageQueue(0)
        self.store_qid = 1
        self.deleted = deleted
        self._plain = True

    def _unstore(self, entries: list) -> None:
        self.log.append((self, list(entries)))

    def _publish(self, msg: Message) -> bool:  # only plain messages here
        raise AssertionError("not a plain message")

    def _handed_out(self, entry: Entry, no_ack: bool) -> None:  # no store ids here
        raise AssertionError("not a stored message")

    def __repr__(self) -> str:
        return f"<Queue {self.name}>"


class Consumer(ConsumerCore):
    """As mq.amqp.consumer.ChannelConsumer builds on ConsumerCore, minimally."""

    def __init__(self, deliveries: Deliveries, queue: Queue, tag: str, no_ack: bool,
                 prefetch: int) -> None:
        self.deliveries = deliveries
        self.queue = queue
        self.tag = tag
        self.no_ack = no_ack
        self.exclusive = False
        self.priority = 0
        self.prefetch = prefetch

    def __repr__(self) -> str:
        return f"<Consumer {self.tag}>"


@dataclass
class Model:
    """The reference: unsettled deliveries by tag and the counts read from them (a taken
    delivery is out of `records` but still counted until released)."""
    records: dict = field(default_factory=dict)  # tag -> (entry, queue, consumer)
    counted: int = 0
    consumer_unacked: dict = field(default_factory=dict)
    queue_unacked: dict = field(default_factory=dict)
    queue_acked: dict = field(default_factory=dict)
    last_tag: int = 0
    settled: list = field(default_factory=list)  # what settle() should have logged

    def __repr__(self) -> str:
        return f"Model(tags={sorted(self.records)}, counted={self.counted})"

    def count(self, queue, consumer, n: int) -> None:
        self.queue_unacked[queue] = self.queue_unacked.get(queue, 0) + n
        if consumer is not None:
            self.consumer_unacked[consumer] = self.consumer_unacked.get(consumer, 0) + n
            self.counted += n

    def select(self, tag: int, multiple: bool) -> list[int] | None:
        """The tags an ack/nack/reject of (tag, multiple) names; None for an unknown tag."""
        if tag == 0 and multiple:
            return sorted(self.records)
        if tag not in self.records:
            return None
        return sorted(t for t in self.records if t <= tag) if multiple else [tag]

    def runs(self, tags: list[int]) -> list[tuple]:
        """settle() calls for these tags: in tag order, one per run of the same queue."""
        out: list[tuple] = []
        for tag in tags:
            entry, queue, _ = self.records[tag]
            if out and out[-1][0] is queue:
                out[-1][1].append(entry)
            else:
                out.append((queue, [entry]))
        return out


def has_room(model: Model, deliveries: Deliveries, consumer: Consumer) -> bool:
    if consumer.no_ack:
        return True
    unacked = model.consumer_unacked.get(consumer, 0)
    return (not consumer.prefetch or unacked < consumer.prefetch) and \
        (not deliveries.limit or model.counted < deliveries.limit)


# A tag for ack/take: ("known", i) names the i-th unsettled tag (mod their number; 0 when
# there is none), ("raw", t) any tag a client can send (unknown ones included: settled, never
# given, ahead of the counter, past 2**63).
TAGS = st.one_of(st.tuples(st.just("known"), st.integers(0, 1000)),
                 st.tuples(st.just("raw"), st.integers(0, 600) | st.just(2**64 - 1)))


class DeliveriesMachine(RuleBasedStateMachine):
    """One channel, three queues (the third deleted: settle() must not reach its store) and
    consumers on them, against the model."""

    taken = Bundle("taken")

    @initialize(limit=st.sampled_from([0, 0, 1, 3, 10]),
                specs=st.lists(st.tuples(st.integers(0, 2), st.booleans(),
                                         st.sampled_from([0, 0, 1, 2, 5])),
                               min_size=1, max_size=4))
    def start(self, limit: int, specs: list[tuple[int, bool, int]]) -> None:
        self.log: list = []
        self.frames: list[bytes] = []
        self.deliveries = Deliveries(7, Output(self.frames.append))
        self.deliveries.limit = limit
        self.queues = [Queue("q0", self.log), Queue("q1", self.log),
                       Queue("q2", self.log, deleted=True)]
        self.consumers = [Consumer(self.deliveries, self.queues[q], f"c{i}", no_ack, prefetch)
                          for i, (q, no_ack, prefetch) in enumerate(specs)]
        self.model = Model()
        self.seq = 0

    # ---- deliveries -------------------------------------------------------------------

    def _entry(self) -> Entry:
        self.seq += 1
        return make_entry(self.seq)

    def _deliver(self, consumer: Consumer | None, queue: Queue) -> None:
        """B-CON-3, B-CON-9: the next tag; kept unless the consumer is no_ack."""
        tag = self.deliveries.next_tag()
        self.model.last_tag += 1
        assert tag == self.model.last_tag
        if consumer is not None and consumer.no_ack:
            return
        entry = self._entry()
        self.deliveries.add(tag, entry, queue, consumer)
        self.model.records[tag] = (entry, queue, consumer)
        self.model.count(queue, consumer, 1)

    @rule(index=st.integers(0, 3))
    def deliver(self, index: int) -> None:
        consumer = self.consumers[index % len(self.consumers)]
        self._deliver(consumer, consumer.queue)

    @rule(q=st.integers(0, 2))
    def get(self, q: int) -> None:
        """B-CON-9: a basic.get delivery (no consumer): counted for the queue only."""
        self._deliver(None, self.queues[q])

    @rule(n=st.integers(65, 200), sources=st.lists(st.integers(-3, 3), min_size=1, max_size=4))
    def burst(self, n: int, sources: list[int]) -> None:
        """A long run of deliveries (consumers and gets in turn), so the window grows past
        the front-trimming threshold."""
        for i in range(n):
            s = sources[i % len(sources)]
            if s < 0:
                self._deliver(None, self.queues[-s - 1])
            else:
                self.deliver(s)

    @rule(index=st.integers(0, 3))
    def dispatch(self, index: int) -> None:
        """B-CON-4: the real path (QueueCore.dispatch -> ConsumerCore.deliver):
        delivered only with room (per-consumer prefetch, channel's global limit), under the
        next tag, kept unless no_ack."""
        consumer = self.consumers[index % len(self.consumers)]
        queue = consumer.queue
        expected = has_room(self.model, self.deliveries, consumer)
        assert consumer.has_room() == expected
        queue._groups = [(0, deque([consumer]))]
        queue.consumer_count = 1
        self.seq += 1
        before = len(self.frames)
        entry = queue.ready.push(Message("ex", "rk", PROPS, b"%d" % self.seq), 0.0)
        queue.dispatch(0.0)
        queue._groups = []
        queue.consumer_count = 0
        if not expected:
            assert len(self.frames) == before and queue.ready.count == 1
            queue.ready.purge()
            return
        assert len(self.frames) == before + 1 and queue.ready.count == 0
        _, channel, method = pamqp_frame.unmarshal(self.frames[-1])
        self.model.last_tag += 1
        assert channel == 7 and isinstance(method, Basic.Deliver)
        assert method.delivery_tag == self.model.last_tag == self.deliveries.last_tag
        assert method.consumer_tag == consumer.tag
        if not consumer.no_ack:
            self.model.records[self.model.last_tag] = (entry, queue, consumer)
            self.model.count(queue, consumer, 1)

    # ---- settling ---------------------------------------------------------------------

    def _resolve(self, spec: tuple[str, int]) -> int:
        kind, value = spec
        if kind == "raw":
            return value
        tags = sorted(self.model.records)
        return tags[value % len(tags)] if tags else 0

    def _ack(self, tag: int, multiple: bool) -> bool:
        """B-CON-6: ack (tag, multiple): settled in tag order, in runs per queue; unknown
        tags (never given, already settled, taken) are refused with nothing changed."""
        model = self.model
        tags = model.select(tag, multiple)
        refill: dict = {}
        logged = len(self.log)
        ok = self.deliveries.ack(tag, multiple, refill)
        if tags is None:
            assert ok is False and refill == {} and len(self.log) == logged
            return False
        assert ok is True
        expected = [(q, entries) for q, entries in model.runs(tags) if not q.deleted]
        got = self.log[logged:]
        assert [(q, [e.seq for e in es]) for q, es in got] == \
            [(q, [e.seq for e in es]) for q, es in expected]
        assert all(a is b for (_, es), (_, xs) in zip(got, expected) for a, b in zip(es, xs))
        model.settled.extend(expected)
        consumers = set()
        for t in tags:
            entry, queue, consumer = model.records.pop(t)
            model.count(queue, consumer, -1)
            if not queue.deleted:
                model.queue_acked[queue] = model.queue_acked.get(queue, 0) + 1
            if consumer is not None:
                consumers.add(consumer)
        assert set(refill) == {c.queue for c in consumers}
        assert all(v is None for v in refill.values())
        return True

    @rule(spec=TAGS, multiple=st.booleans())
    def ack(self, spec: tuple[str, int], multiple: bool) -> None:
        self._ack(self._resolve(spec), multiple)

    @rule()
    def ack_everything(self) -> None:
        """B-CON-6: ack(0, multiple=True) settles everything outstanding."""
        assert self._ack(0, True)
        assert len(self.deliveries) == 0

    @rule(n=st.integers(1, 150), order=st.sampled_from(["forward", "reverse", "odd-even"]),
          keep_first=st.booleans())
    def ack_run(self, n: int, order: str, keep_first: bool) -> None:
        """Many single acks in a row, in order or not (so the front is trimmed, or holes
        pile up behind an unsettled first one)."""
        tags = sorted(self.model.records)
        if keep_first:
            tags = tags[1:]
        tags = tags[:n]
        if order == "reverse":
            tags.reverse()
        elif order == "odd-even":
            tags = tags[1::2] + tags[0::2]
        for tag in tags:
            assert self._ack(tag, False)

    @rule(target=taken, spec=TAGS, multiple=st.booleans())
    def take(self, spec: tuple[str, int], multiple: bool):
        """What a nack/reject (or an ack inside a transaction) names is taken out, still
        counted; None for an unknown tag (B-CON-6)."""
        return self._take(self._resolve(spec), multiple)

    @rule(target=taken)
    def take_all(self):
        """B-CON-7, B-CON-8: recover / channel close take every unsettled delivery."""
        return self._take(0, True, everything=True)

    def _take(self, tag: int, multiple: bool, everything: bool = False):
        model = self.model
        tags = model.select(tag, multiple)
        out = self.deliveries.take_all() if everything else self.deliveries.take(tag, multiple)
        if tags is None:
            assert out is None
            return no_result()
        assert [r[0] for r in out] == tags
        for record in out:
            entry, queue, consumer = model.records.pop(record[0])
            assert record[1] is entry and record[2] is queue and record[3] is consumer
        return out

    @rule(records=consumes(taken))
    def release(self, records: list) -> None:
        """Taken deliveries settled (nack/reject, or at tx.commit): no longer counted."""
        self.deliveries.release(records)
        for _, _, queue, consumer in records:
            self.model.count(queue, consumer, -1)

    @rule(records=consumes(taken))
    def restore(self, records: list) -> None:
        """B-TX-1: tx.rollback: the taken deliveries are unsettled again under their tags
        (even when their tags were trimmed from the window's front meanwhile)."""
        self.deliveries.restore(records)
        for tag, entry, queue, consumer in records:
            assert tag not in self.model.records
            self.model.records[tag] = (entry, queue, consumer)

    # ---- invariants -------------------------------------------------------------------

    @invariant()
    def same_counts(self) -> None:
        if not hasattr(self, "deliveries"):
            return
        model, d = self.model, self.deliveries
        assert len(d) == d.count == len(model.records)
        assert d.counted == model.counted
        assert d.last_tag == model.last_tag
        for consumer in self.consumers:
            assert consumer.unacked == model.consumer_unacked.get(consumer, 0)
            assert consumer.unacked >= 0
        for queue in self.queues:
            assert queue.unacked == model.queue_unacked.get(queue, 0)
            assert queue.acked == model.queue_acked.get(queue, 0)
        assert d.counted == sum(model.consumer_unacked.values())

    @invariant()
    def settled_in_tag_order(self) -> None:
        if not hasattr(self, "deliveries"):
            return
        assert len(self.log) == len(self.model.settled)
        for (q, entries), (mq_, expected) in zip(self.log, self.model.settled):
            assert q is mq_ and [e.seq for e in entries] == [e.seq for e in expected]


DeliveriesMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=50,
                                               deadline=None)
TestDeliveries = DeliveriesMachine.TestCase
TestDeliveries.__doc__ = """B-CON-3, B-CON-4, B-CON-6, B-CON-7, B-CON-9, B-TX-1: Deliveries behaves as
the plain model for random operation sequences: same unsettled tags and records, same
channel, consumer and queue counts, acks settled in tag order in runs per queue."""


# ---- the same contract on fixed sequences (the paths hypothesis may rarely reach) ---------

def _setup():
    log: list = []
    d = Deliveries(1, Output(lambda data: None))
    q0, q1 = Queue("q0", log), Queue("q1", log)
    c = Consumer(d, q0, "c", False, 0)
    return d, log, q0, q1, c


def _add(d, entries, queue, consumer, n, seq0=0) -> list[int]:
    tags = []
    for i in range(n):
        tag = d.next_tag()
        entry = make_entry(seq0 + i + 1)
        entries[tag] = entry
        d.add(tag, entry, queue, consumer)
        tags.append(tag)
    return tags


def test_unknown_tags_change_nothing() -> None:
    """B-CON-6: tag 0 without multiple, a tag past 2**63, a tag ahead of the counter, a
    settled tag: ack is False, take is None, and nothing moves."""
    d, log, q0, _, c = _setup()
    entries: dict = {}
    _add(d, entries, q0, c, 3)
    assert d.ack(2, False, {})
    for tag, mult in [(0, False), (2**64 - 1, True), (4, False), (4, True), (2, False), (2, True)]:
        assert d.ack(tag, mult, {}) is False
        assert d.take(tag, mult) is None
    assert len(d) == 2 and c.unacked == 2 and q0.unacked == 2 and d.counted == 2
    assert [[e.seq for e in es] for _, es in log] == [[2]]


def test_multiple_ack_over_holes_settles_runs_per_queue() -> None:
    """B-CON-6: ack(multiple) over slots settled before and over no-ack tags settles the
    rest in tag order, one settle() per run of the same queue."""
    d, log, q0, q1, c = _setup()
    noack = Consumer(d, q1, "n", True, 0)
    entries: dict = {}
    t = _add(d, entries, q0, c, 2)                  # 1, 2
    d.next_tag()                                    # 3: no-ack (noack consumer)
    t += _add(d, entries, q1, None, 2, 10)          # 4, 5: gets from q1
    t += _add(d, entries, q0, c, 2, 20)             # 6, 7
    assert d.ack(4, False, {})                      # a hole
    refill: dict = {}
    assert d.ack(6, True, refill)
    assert [(q.name, [e.seq for e in es]) for q, es in log] == \
        [("q1", [11]), ("q0", [1, 2]), ("q1", [12]), ("q0", [21])]
    assert set(refill) == {q0} and noack.unacked == 0
    assert len(d) == 1 and c.unacked == 1 and d.counted == 1
    assert q0.unacked == 1 and q1.unacked == 0
    assert d.ack(0, True, {}) and len(d) == 0 and q0.unacked == 0 and c.unacked == 0


def test_restore_below_the_trimmed_front() -> None:
    """B-TX-1: a rollback restores taken deliveries under their tags after more than 64 later
    ones were settled (the window's front was trimmed past them)."""
    d, log, q0, q1, c = _setup()
    entries: dict = {}
    tags = _add(d, entries, q0, c, 100)
    taken = d.take(3, True)                         # tags 1..3, in a transaction
    assert [r[0] for r in taken] == [1, 2, 3]
    for tag in tags[3:80]:                          # 77 single acks: the front is dropped
        assert d.ack(tag, False, {})
    assert len(d) == 20 and c.unacked == 23 and d.counted == 23
    d.restore(taken)
    assert len(d) == 23
    assert d.ack(2, False, {})
    assert d.take(80, False) is None and d.ack(79, False, {}) is False
    assert [r[0] for r in d.take(1, True)] == [1]
    rest = d.take_all()
    assert [r[0] for r in rest] == [3] + tags[80:]
    assert all(r[1] is entries[r[0]] for r in rest)
    d.release(rest)
    assert len(d) == 0 and c.unacked == 1 and q0.unacked == 1   # tag 1, taken, not released


def test_restore_after_everything_else_settled() -> None:
    """B-TX-1: restore into an emptied window (all other deliveries settled), then more
    deliveries: tags keep their order."""
    d, log, q0, _, c = _setup()
    entries: dict = {}
    _add(d, entries, q0, c, 70)
    taken = d.take(5, False)
    assert d.ack(70, True, {})
    assert len(d) == 0 and c.unacked == 1
    d.restore(taken)
    more = _add(d, entries, q0, c, 3, 100)
    assert [r[0] for r in d.take_all()] == [5] + more and c.unacked == 4


def test_out_of_order_single_acks() -> None:
    """B-CON-6: single acks in any order settle exactly the named delivery."""
    d, log, q0, _, c = _setup()
    entries: dict = {}
    tags = _add(d, entries, q0, c, 200)
    order = tags[1::2][::-1] + tags[0::2]
    for tag in order:
        assert d.ack(tag, False, {})
        assert d.ack(tag, False, {}) is False
    assert [es[0].seq for _, es in log] == order
    assert len(d) == 0 and c.unacked == 0 and q0.unacked == 0 and q0.acked == 200
