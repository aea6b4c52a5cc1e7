"""The store under SIGKILL: a real broker process with publishers (confirms) and consumers
(acking most, holding some) on durable queues, killed at a random moment, restarted on the
same data dir, and checked exactly against what the clients saw:

- B-DUR-3: every confirmed message that the client did not ack is there (none lost), once;
- B-DUR-2: the order within a queue holds, and every message that had been delivered to a
  client comes back with redelivered=True;
- B-DUR-4 is about acks the broker had made durable, which a client cannot observe (the
  broker does not confirm an ack): an acked message that comes back is counted, not failed.

Message bodies carry "publisher-id sequence" (then padding), so that losses, duplicates and
order are checked message by message. The broker runs with small segments
(--store-segment-size), so that the load fills many of them between kills and mostly dead
ones are compacted or removed while it runs; the report says how many were made and removed.

A short run (3 rounds) is part of the default tests; the soak test (-m soak) runs 200
(MQ_CRASH_ROUNDS). MQ_CRASH_SEED=N replays a run's random choices (not its timing)."""
from __future__ import annotations

import logging
import os
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import pika
import pytest
from pika.exceptions import AMQPConnectionError, ChannelWrongStateError

from mq.testing import BrokerProcess

PERSISTENT = pika.BasicProperties(delivery_mode=2)
QUEUES = ("crash.a", "crash.b")
PUBLISHERS_PER_QUEUE = 2
PREFETCH = 200
HOLD = 0.02        # share of deliveries a consumer keeps unacked...
HOLD_MAX = 40      # ...up to this many (then it acks the oldest it holds)
PAUSE = 0.05      # chance that a consumer pauses (50..300 ms) after a read
KEEP_MAX = 1000    # the check after a restart leaves up to this many in each queue
ROUND_MIN = 600    # confirmed messages in a round before the kill may come (~2 MB)
BROKER_ARGS = ("--store-segment-size", str(512 * 1024))
# What a client sees when the broker is killed under it; anything else (a nack, a closed
# channel, a body that is not ours) ends its thread with an error that fails the run.
GONE = (AMQPConnectionError, ChannelWrongStateError, OSError)

Mid = tuple[str, int]  # (publisher id, sequence)


def body_of(mid: Mid, rng: random.Random) -> bytes:
    # 0.5..6 KB: segments fill fast, and a kill often lands mid-batch.
    return b"%s %d " % (mid[0].encode(), mid[1]) + b"x" * rng.randint(500, 6000)


def mid_of(body: bytes) -> Mid:
    pub, seq, padding = body.split(b" ", 2)
    if padding.strip(b"x"):
        raise ValueError(f"not a body of ours: {body[:60]!r}")
    return pub.decode(), int(seq)


@dataclass
class Report:
    seed: int
    rounds: int = 0
    published: int = 0
    confirmed: int = 0
    delivered: int = 0
    acked: int = 0
    checked: int = 0                # messages found and checked after the restarts
    lost: list[Mid] = field(default_factory=list)          # B-DUR-3
    duplicated: list[Mid] = field(default_factory=list)
    unknown: list[Mid] = field(default_factory=list)       # never published to that queue
    out_of_order: list[tuple[str, Mid, Mid]] = field(default_factory=list)
    # B-DUR-2: (round, id, ms from its delivery to the kill: negative when the client read
    # it after the kill, from its socket buffer)
    not_redelivered: list[tuple[int, Mid, float]] = field(default_factory=list)
    resurrected: list[Mid] = field(default_factory=list)   # B-DUR-4: see Model.gone
    acked_came_back: int = 0        # allowed: the ack may not have been written yet
    redelivered_unseen: int = 0     # redelivered=True, not seen by a client (sent, unread)
    segments_made: int = 0          # highest segment number at the end
    segments_left: int = 0          # segment files at the end
    kills_mid_batch: int = 0        # kills with publishes awaiting their confirm

    def summary(self) -> str:
        return (f"seed {self.seed}: {self.rounds} kills, {self.published} published, "
                f"{self.confirmed} confirmed, {self.delivered} delivered, {self.acked} acked "
                f"({self.acked_came_back} came back after a kill), {self.checked} checked after "
                f"restarts; lost {len(self.lost)}, duplicated {len(self.duplicated)}, "
                f"resurrected {len(self.resurrected)}, "
                f"out of order {len(self.out_of_order)}, delivered but back with "
                f"redelivered=False {len(self.not_redelivered)} ({self.redelivered_unseen} "
                f"redelivered ones no client had read); {self.kills_mid_batch} kills with a "
                f"publish awaiting its confirm; {self.segments_made} segments made, "
                f"{self.segments_left} left")


class Model:
    """What the clients know, shared by their threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.queue_of: dict[str, str] = {}            # publisher id -> its queue
        self.must_have: dict[str, set[Mid]] = {q: set() for q in QUEUES}
        self.acked: set[Mid] = set()                  # acks sent (durable or not)
        # Handed to a client (and maybe still in the queue) -> when it was read.
        self.delivered: dict[Mid, float] = {}
        self.killed_at = 0.0
        # Acked, and then missing after a restart: the broker had the ack (or the message
        # was never written); it must never appear again.
        self.gone: set[Mid] = set()
        self.published = self.confirmed = self.deliveries = self.acks = 0
        self.unconfirmed = 0                          # publishes in flight at the kill


class Client(threading.Thread):
    """A pika client of the broker under test, on a connection of its own, until the broker
    goes away; another failure is kept in `error` (reported by crash_rounds). `ready` is set
    once it is subscribed or publishing (or has failed)."""

    def __init__(self, name: str, url: str, queue: str, model: Model, seed: float) -> None:
        super().__init__(daemon=True, name=name)
        self.url, self.queue, self.model = url, queue, model
        self.rng = random.Random(seed)
        self.ready = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        conn = None
        try:
            conn = pika.BlockingConnection(pika.URLParameters(self.url))
            self.work(conn.channel())
        except GONE:
            pass
        except Exception as exc:  # noqa: BLE001 - reported by crash_rounds
            self.error = exc
        finally:
            self.ready.set()
            _drop(conn)

    def work(self, ch: Any) -> None:
        raise NotImplementedError


class Publisher(Client):
    """Persistent messages to one durable queue with confirms, one at a time, until the
    broker goes away. A message is in the model's must_have once its confirm came."""

    def __init__(self, url: str, queue: str, pub_id: str, model: Model, seed: float) -> None:
        super().__init__(f"publisher {pub_id}", url, queue, model, seed)
        self.pub_id = pub_id

    def work(self, ch: Any) -> None:
        model, seq = self.model, 0
        with model.lock:
            model.queue_of[self.pub_id] = self.queue
        ch.confirm_delivery()
        self.ready.set()
        while True:
            mid = (self.pub_id, seq)
            with model.lock:
                model.published += 1
                model.unconfirmed += 1
            ch.basic_publish("", self.queue, body_of(mid, self.rng), PERSISTENT)
            with model.lock:
                model.unconfirmed -= 1
                model.confirmed += 1
                if mid not in model.acked:  # a consumer may have had it (and acked it) first
                    model.must_have[self.queue].add(mid)
            seq += 1


class Consumer(Client):
    """Consumes one queue (prefetch PREFETCH), acks most deliveries at once and holds a few
    unacked (HOLD), until the broker goes away."""

    def __init__(self, url: str, queue: str, model: Model, seed: float,
                 start_after: float = 0.0) -> None:
        super().__init__(f"consumer {queue}", url, queue, model, seed)
        self.start_after = start_after
        self.held: list[tuple[int, Mid]] = []

    def work(self, ch: Any) -> None:
        ch.basic_qos(prefetch_count=PREFETCH)
        self.ready.set()
        # Starting late and pausing now and then, it leaves a backlog that is on disk
        # before it is delivered (a delivery of a message just published shares the
        # flusher's batch with the message itself, so it tells less).
        time.sleep(self.start_after)
        ch.basic_consume(self.queue, self.on_message)
        while True:
            ch.connection.process_data_events(time_limit=0.05)
            if self.rng.random() < PAUSE:
                time.sleep(self.rng.uniform(0.05, 0.3))

    def on_message(self, ch: Any, method: Any, props: Any, body: bytes) -> None:
        mid, model = mid_of(body), self.model
        with model.lock:
            model.delivered[mid] = time.monotonic()
            model.deliveries += 1
        if self.rng.random() < HOLD:
            self.held.append((method.delivery_tag, mid))
            if len(self.held) <= HOLD_MAX:
                return
            tag, mid = self.held.pop(0)
        else:
            tag = method.delivery_tag
        with model.lock:  # counted before it is sent: it may or may not reach the broker
            model.acked.add(mid)
            model.must_have[self.queue].discard(mid)
            model.acks += 1
        ch.basic_ack(tag)


def _drop(conn: Any) -> None:
    """Forget a connection whose broker is gone (closing it politely would wait)."""
    if conn is None:
        return
    try:
        if conn.is_open:
            conn.close()
    except Exception:  # noqa: BLE001 - the socket is dead; nothing to tell anyone
        pass


def _segments(broker: BrokerProcess) -> list[int]:
    log_dir = os.path.join(broker.data_dir, "log")
    return sorted(int(n[:-4]) for n in os.listdir(log_dir) if n.endswith(".seg"))


def check_queues(broker: BrokerProcess, model: Model, report: Report, round_: int,
                 rng: random.Random) -> None:
    """After a restart: take every message of each queue (one consumer, no prefetch limit),
    check it against the model, then ack the older ones and leave up to KEEP_MAX (the
    newest) in the queue, redelivered, for the next round."""
    conn = pika.BlockingConnection(pika.URLParameters(broker.url))
    try:
        for queue in QUEUES:
            ch = conn.channel()
            count = ch.queue_declare(queue, durable=True, passive=True).method.message_count
            got: list[tuple[Mid, bool, int]] = []
            if count:
                for method, _, body in ch.consume(queue, inactivity_timeout=15):
                    assert method is not None, \
                        f"{queue}: {len(got)} of {count} messages came in 15 s"
                    got.append((mid_of(body), method.redelivered, method.delivery_tag))
                    if len(got) == count:
                        break
            _check_one(queue, got, model, report, round_)
            keep = min(count, rng.randint(0, KEEP_MAX))
            if count - keep:
                ch.basic_ack(got[count - keep - 1][2], multiple=True)
            kept = {m for m, _, _ in got[count - keep:]}
            with model.lock:
                # What is in the queue now is known exactly: the kept ones, all delivered.
                model.acked.update(m for m, _, _ in got[:count - keep])
                now = time.monotonic()
                model.delivered = {m: t for m, t in model.delivered.items()
                                   if model.queue_of[m[0]] != queue}
                model.delivered.update((m, now) for m in kept)
                model.must_have[queue] = kept
            ch.close()  # the kept ones go back to their places, redelivered
    finally:
        conn.close()


def _check_one(queue: str, got: list[tuple[Mid, bool, int]], model: Model, report: Report,
               round_: int) -> None:
    ids = [m for m, _, _ in got]
    present = set(ids)
    report.checked += len(ids)
    with model.lock:
        report.lost += sorted(model.must_have[queue] - present)
        report.unknown += [m for m in present if model.queue_of.get(m[0]) != queue]
        report.resurrected += sorted(present & model.gone)
        acked = {m for m in model.acked if model.queue_of[m[0]] == queue}
        report.acked_came_back += len(acked & present)
        model.gone |= acked - present
        model.acked -= acked
        for mid, redelivered, _ in got:
            if mid in model.delivered and not redelivered:
                age = (model.killed_at - model.delivered[mid]) * 1000
                report.not_redelivered.append((round_, mid, round(age, 1)))
            elif redelivered and mid not in model.delivered:
                report.redelivered_unseen += 1
    if len(present) != len(ids):
        seen: set[Mid] = set()
        report.duplicated += [m for m in ids if m in seen or seen.add(m)]
    last: dict[str, Mid] = {}
    for mid in ids:
        before = last.get(mid[0])
        if before is not None and before[1] >= mid[1]:
            report.out_of_order.append((queue, before, mid))
        last[mid[0]] = mid


def crash_rounds(broker: BrokerProcess, rounds: int, seed: int | None = None,
                 load_seconds: tuple[float, float] = (0.3, 2.0)) -> Report:
    """`rounds` times: run the load, SIGKILL the broker at a random moment, restart it on
    the same data dir and check every queue. Returns what was found (nothing asserted)."""
    seed = int(os.environ.get("MQ_CRASH_SEED", "0")) or seed or random.randrange(1, 1 << 30)
    rng = random.Random(seed)
    report, model = Report(seed), Model()
    conn = pika.BlockingConnection(pika.URLParameters(broker.url))
    for queue in QUEUES:
        conn.channel().queue_declare(queue, durable=True)
    conn.close()
    made = 0
    for round_ in range(1, rounds + 1):
        load = rng.uniform(*load_seconds)
        threads: list[Any] = [Consumer(broker.url, q, model, rng.random(),
                                       rng.uniform(0, load / 2)) for q in QUEUES]
        threads += [Publisher(broker.url, q, f"r{round_}{q[-1]}{i}", model, rng.random())
                    for q in QUEUES for i in range(PUBLISHERS_PER_QUEUE)]
        for thread in threads:
            thread.start()
        confirmed = model.confirmed
        for thread in threads:
            assert thread.ready.wait(20), f"{thread.name} did not connect"
        deadline = time.monotonic() + 20
        while model.confirmed - confirmed < ROUND_MIN and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(load)
        model.killed_at = time.monotonic()
        broker.kill()
        for thread in threads:
            thread.join(20)
            assert not thread.is_alive(), f"{thread.name} still runs after the kill"
            assert thread.error is None, f"{thread.name}: {thread.error!r}"
        report.kills_mid_batch += model.unconfirmed > 0
        model.unconfirmed = 0
        made = max([made, *_segments(broker)])
        broker.start()
        check_queues(broker, model, report, round_, rng)
        report.rounds = round_
    report.published, report.confirmed = model.published, model.confirmed
    report.delivered, report.acked = model.deliveries, model.acks
    report.segments_made = max([made, *_segments(broker)])
    report.segments_left = len(_segments(broker))
    print(report.summary())
    return report


def assert_no_loss_and_order(report: Report) -> None:
    assert report.lost == [], f"confirmed messages lost (B-DUR-3): {report.lost[:20]}; " \
                              + report.summary()
    assert report.duplicated == [], f"duplicated: {report.duplicated[:20]}"
    assert report.resurrected == [], (
        f"acked messages that a restart had shown gone came back after a later kill "
        f"(B-DUR-4): {report.resurrected[:20]}; " + report.summary())
    assert report.unknown == [], f"in the wrong queue: {report.unknown[:20]}"
    assert report.out_of_order == [], \
        f"order broken (B-DUR-2): {report.out_of_order[:20]}; " + report.summary()


def assert_redelivered(report: Report) -> None:
    assert report.not_redelivered == [], (
        f"in {len({r for r, _, _ in report.not_redelivered})} of {report.rounds} rounds, "
        f"{len(report.not_redelivered)} messages delivered to a client before a kill came "
        f"back with redelivered=False (B-DUR-2), (round, id, ms from delivery to kill): "
        f"{report.not_redelivered[:10]}; "
        + report.summary())


@pytest.fixture(autouse=True, scope="module")
def quiet_pika() -> Iterator[None]:
    """pika logs every connection the kills cut as an error, with a traceback."""
    logger = logging.getLogger("pika")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


# ---- the default run: 3 rounds, shared by the checks below ----------------------------

@pytest.fixture(scope="module")
def three_rounds() -> Iterator[Report]:
    broker = BrokerProcess(args=BROKER_ARGS)
    try:
        broker.start()
        yield crash_rounds(broker, 3)
    finally:
        broker.cleanup()


def test_crash_loses_no_confirmed_message_and_keeps_order(three_rounds: Report) -> None:
    """B-DUR-3, B-DUR-2 (order): publishers with confirms and acking consumers run while the
    broker is SIGKILLed at random moments; after each restart every confirmed, unacked
    message is there exactly once, in its publisher's order."""
    assert_no_loss_and_order(three_rounds)
    assert three_rounds.confirmed >= 3 * ROUND_MIN, three_rounds.summary()


def test_crash_delivered_messages_come_back_redelivered(three_rounds: Report) -> None:
    """B-DUR-2: a message that a consumer had received (and not acked, or acked too late)
    before the kill comes back with redelivered=True."""
    assert_redelivered(three_rounds)


def test_crash_load_rolls_and_reclaims_segments(three_rounds: Report) -> None:
    """B-DUR-5 under crashes: the load fills more than one segment (the head is sealed and
    compacted or removed), and the log does not keep every segment it made."""
    assert three_rounds.segments_made >= 8, three_rounds.summary()
    assert three_rounds.segments_left < three_rounds.segments_made, three_rounds.summary()


@pytest.mark.soak
@pytest.mark.timeout(3600)
def test_crash_soak() -> None:
    """B-DUR-3, B-DUR-2, B-DUR-4 (as far as a client sees it): the crash rounds, 200 of
    them (MQ_CRASH_ROUNDS=N for another number), every check. About 2 s a round."""
    broker = BrokerProcess(args=BROKER_ARGS)
    try:
        broker.start()
        report = crash_rounds(broker, int(os.environ.get("MQ_CRASH_ROUNDS", "200")))
    finally:
        broker.cleanup()
    assert_no_loss_and_order(report)
    assert_redelivered(report)


# ---- issue 12 item 8: delivered, then killed at once -----------------------------------

ATTEMPTS = 8  # each shows the bug about 4 times in 5 on a 2-core machine (while it is there)


@pytest.mark.parametrize("how", ["consume", "get"])
def test_kill_right_after_delivery_comes_back_redelivered(how: str) -> None:
    """B-DUR-2: a backlog of confirmed persistent messages; a consumer (or basic.get) takes
    some without acking and the broker is SIGKILLed as soon as the first one arrives. Each
    message the client received comes back redelivered=True. (Fails while the broker sends
    a delivery before the store has written its DLV record: the delivery frame leaves on
    the event loop, the record is only queued for the flusher thread.)"""
    broker = BrokerProcess()
    bad: list[tuple[int, int]] = []
    received_total = 0
    try:
        broker.start()
        for attempt in range(ATTEMPTS):
            conn = pika.BlockingConnection(pika.URLParameters(broker.url))
            ch = conn.channel()
            ch.queue_declare("burst", durable=True)
            ch.confirm_delivery()
            for i in range(300):
                ch.basic_publish("", "burst", b"%d" % (attempt * 1000 + i), PERSISTENT)
            received: list[int] = []
            if how == "consume":
                def on_message(chan: Any, method: Any, props: Any, body: bytes) -> None:
                    received.append(int(body))
                    if len(received) == 1:
                        broker.proc.kill()

                consumer = conn.channel()
                consumer.basic_qos(prefetch_count=10)  # a short read: the kill comes sooner
                consumer.basic_consume("burst", on_message)
                try:
                    while True:
                        conn.process_data_events(time_limit=0.5)
                except GONE:
                    pass
            else:
                method, _, body = ch.basic_get("burst")
                broker.proc.kill()
                received.append(int(body))
            _drop(conn)
            broker.kill()  # reaps it
            broker.start()
            conn = pika.BlockingConnection(pika.URLParameters(broker.url))
            ch = conn.channel()
            back: dict[int, bool] = {}
            while True:
                method, _, body = ch.basic_get("burst")
                if method is None:
                    break
                back[int(body)] = method.redelivered
                ch.basic_ack(method.delivery_tag)
            conn.close()
            assert len(back) == 300, f"attempt {attempt}: {len(back)} of 300 came back"
            received_total += len(received)
            bad += [(attempt, n) for n in received if not back[n]]
    finally:
        broker.cleanup()
    assert received_total >= ATTEMPTS
    assert bad == [], (f"{len(bad)} of {received_total} messages received before the kill came "
                       f"back with redelivered=False (B-DUR-2), (attempt, body): {bad[:10]}")
