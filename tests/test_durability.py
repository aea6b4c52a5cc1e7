"""Durability end to end: real brokers (mq_fresh_broker) restarted cleanly or killed with
SIGKILL, checked with pika the way a user would."""
from __future__ import annotations

import os
import random
import threading
import time
from typing import Iterator

import pika
import pytest
from pamqp import commands as spec
from pika.exceptions import AMQPError, ChannelClosedByBroker
from rawamqp import RawClient

from mq.testing import BrokerProcess, run_broker

PERSISTENT = pika.BasicProperties(delivery_mode=2)


def connect(broker: BrokerProcess) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(broker.url))


def exists(conn: pika.BlockingConnection, kind: str, name: str) -> bool:
    """Passive declare on a channel of its own; 404 means absent."""
    ch = conn.channel()
    try:
        if kind == "queue":
            ch.queue_declare(name, passive=True)
        else:
            ch.exchange_declare(name, "direct", passive=True)
    except ChannelClosedByBroker as exc:
        assert exc.reply_code == 404
        return False
    ch.close()
    return True


def drain(ch, queue: str) -> list[tuple]:
    """(body, redelivered, properties) of every ready message, taken with basic.get+ack."""
    out = []
    while True:
        method, props, body = ch.basic_get(queue)
        if method is None:
            return out
        out.append((body, method.redelivered, props))
        ch.basic_ack(method.delivery_tag)


def synced(conn: pika.BlockingConnection, queue: str) -> None:
    """One confirmed persistent publish (body b"sync") on a channel of its own: the broker
    handles a connection's frames in order, so its confirm covers everything published
    before it on this connection (cheaper than confirming thousands one by one)."""
    ch = conn.channel()
    ch.confirm_delivery()
    ch.basic_publish("", queue, b"sync", PERSISTENT)
    ch.close()


def segment_bytes(broker: BrokerProcess) -> int:
    log_dir = os.path.join(broker.data_dir, "log")
    return sum(os.path.getsize(os.path.join(log_dir, n)) for n in os.listdir(log_dir))


@pytest.mark.parametrize("kill", [False, True], ids=["restart", "kill-9"])
def test_durable_topology_survives_non_durable_does_not(mq_fresh_broker: BrokerProcess,
                                                        kill: bool) -> None:
    """B-DUR-1: durable exchanges, queues and bindings (queue and exchange-to-exchange, with
    arguments) survive a restart and kill -9; non-durable ones, and deleted ones, don't."""
    conn = connect(mq_fresh_broker)
    ch = conn.channel()
    ch.exchange_declare("d-topic", "topic", durable=True,
                        arguments={"alternate-exchange": "d-fanout"})
    ch.exchange_declare("d-fanout", "fanout", durable=True)
    ch.exchange_declare("d-headers", "headers", durable=True)
    ch.exchange_declare("t-direct", "direct", durable=False)
    ch.exchange_declare("d-deleted", "direct", durable=True)
    ch.queue_declare("d-q", durable=True, arguments={"x-max-priority": 4, "x-max-length": 100})
    ch.queue_declare("d-alt", durable=True)
    ch.queue_declare("d-hq", durable=True)
    ch.queue_declare("d-deleted-q", durable=True)
    ch.queue_declare("t-q", durable=False)
    ch.queue_bind("d-q", "d-topic", "a.*")
    ch.queue_bind("d-alt", "d-fanout", "")
    ch.queue_bind("d-hq", "d-headers", "", arguments={"x-match": "all", "k": "v"})
    ch.exchange_bind("d-headers", "d-topic", "h.#")   # exchange-to-exchange
    ch.queue_bind("t-q", "d-topic", "#")              # binding to a non-durable queue
    ch.queue_bind("d-q", "d-topic", "gone.*")
    ch.queue_unbind("d-q", "d-topic", "gone.*")
    ch.exchange_delete("d-deleted")
    ch.queue_delete("d-deleted-q")
    conn.close()

    mq_fresh_broker.restart(kill=kill)

    conn = connect(mq_fresh_broker)
    for name in ("d-topic", "d-fanout", "d-headers"):
        assert exists(conn, "exchange", name)
    for name in ("t-direct", "d-deleted"):
        assert not exists(conn, "exchange", name)
    for name in ("d-q", "d-alt", "d-hq"):
        assert exists(conn, "queue", name)
    for name in ("t-q", "d-deleted-q"):
        assert not exists(conn, "queue", name)
    ch = conn.channel()
    # Arguments came back: redeclaring with other ones is refused as for any queue.
    with pytest.raises(ChannelClosedByBroker) as err:
        ch.queue_declare("d-q", durable=True, arguments={"x-max-priority": 5})
    assert err.value.reply_code == 406
    ch = conn.channel()
    ch.basic_publish("d-topic", "a.b", b"to d-q")
    ch.basic_publish("d-topic", "gone.x", b"unbound key: to the alternate")
    ch.basic_publish("d-topic", "h.x", b"e2e", pika.BasicProperties(headers={"k": "v"}))
    assert [m[0] for m in drain(ch, "d-q")] == [b"to d-q"]
    assert [m[0] for m in drain(ch, "d-alt")] == [b"unbound key: to the alternate"]
    assert [m[0] for m in drain(ch, "d-hq")] == [b"e2e"]
    conn.close()


@pytest.mark.parametrize("kill", [False, True], ids=["restart", "kill-9"])
def test_persistent_messages_survive_in_order_with_properties(mq_fresh_broker: BrokerProcess,
                                                              kill: bool) -> None:
    """B-DUR-2: persistent messages in a durable queue come back in order with their
    properties, headers and priority; one delivered but not acked comes back
    redelivered=true (after kill -9 every message does, as in RabbitMQ 3.10: the broker
    cannot tell which deliveries the crash kept it from recording); transient ones and
    those in non-durable queues are gone."""
    conn = connect(mq_fresh_broker)
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare("plain", durable=True)
    ch.queue_declare("prio", durable=True, arguments={"x-max-priority": 9})
    ch.queue_declare("transient-q", durable=False)
    ch.exchange_declare("fan", "fanout", durable=True)
    for q in ("plain", "prio", "transient-q"):
        ch.queue_bind(q, "fan")
    for i in range(20):
        props = pika.BasicProperties(
            delivery_mode=1 if i % 4 == 3 else 2, priority=i % 10, content_type="text/plain",
            correlation_id=f"c{i}", message_id=f"m{i}", timestamp=1700000000 + i,
            headers={"n": i, "s": "x" * i, "nested": {"list": [1, "two", True]}})
        ch.basic_publish("fan", "", b"body %d" % i, props)
    # Delivered, not acked, on a connection that is still open when the broker goes.
    holder = connect(mq_fresh_broker)
    hch = holder.channel()
    method, _, held = hch.basic_get("plain")
    assert held == b"body 0" and not method.redelivered
    ch.basic_publish("", "plain", b"sync", PERSISTENT)  # confirmed: everything before is on disk
    conn.close()

    mq_fresh_broker.restart(kill=kill)

    conn = connect(mq_fresh_broker)
    ch = conn.channel()
    persistent = [i for i in range(20) if i % 4 != 3]
    plain = drain(ch, "plain")
    assert [b for b, _, _ in plain] == [b"body %d" % i for i in persistent] + [b"sync"]
    assert [r for _, r, _ in plain] == [True] + [kill] * len(persistent)
    for (body, _, props), i in zip(plain, persistent):
        assert (props.delivery_mode, props.priority, props.content_type, props.correlation_id,
                props.message_id, props.timestamp) == \
            (2, i % 10, "text/plain", f"c{i}", f"m{i}", 1700000000 + i)
        assert props.headers == {"n": i, "s": "x" * i, "nested": {"list": [1, "two", True]}}
    prio = [b for b, _, _ in drain(ch, "prio")]
    assert prio == [b"body %d" % i for i in sorted(persistent, key=lambda i: (-(i % 10), i))]
    assert not exists(conn, "queue", "transient-q")
    conn.close()


def test_ttl_deadline_still_honoured_after_restart(mq_fresh_broker: BrokerProcess) -> None:
    """B-DUR-2: the expiry deadline is absolute: a message whose TTL runs out during the
    downtime or after the restart expires on time, not TTL-after-restart."""
    conn = connect(mq_fresh_broker)
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare("ttl-q", durable=True, arguments={"x-message-ttl": 60000})
    published = time.time()
    ch.basic_publish("", "ttl-q", b"short", pika.BasicProperties(delivery_mode=2,
                                                                  expiration="2500"))
    ch.basic_publish("", "ttl-q", b"long", PERSISTENT)
    conn.close()
    mq_fresh_broker.restart(kill=True)
    conn = connect(mq_fresh_broker)
    ch = conn.channel()
    if time.time() - published < 2.0:
        assert ch.queue_declare("ttl-q", passive=True).method.message_count == 2
    time.sleep(max(0.0, published + 3.0 - time.time()))
    assert [b for b, _, _ in drain(ch, "ttl-q")] == [b"long"]
    conn.close()


@pytest.mark.parametrize("kill", [False, True], ids=["restart", "kill-9"])
def test_acked_messages_do_not_come_back(mq_fresh_broker: BrokerProcess, kill: bool) -> None:
    """B-DUR-4: acked (and no-ack consumed, and purged) messages stay gone after a restart."""
    conn = connect(mq_fresh_broker)
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare("acks", durable=True)
    ch.queue_declare("purged", durable=True)
    for i in range(10):
        ch.basic_publish("", "acks", b"%d" % i, PERSISTENT)
        ch.basic_publish("", "purged", b"%d" % i, PERSISTENT)
    for _ in range(4):
        method, _, _ = ch.basic_get("acks")
        ch.basic_ack(method.delivery_tag)
    ch.basic_get("acks", auto_ack=True)
    ch.queue_purge("purged")
    # A confirmed publish after the acks: its fsync covers them too (same connection, in order).
    ch.basic_publish("", "acks", b"sync", PERSISTENT)
    conn.close()
    mq_fresh_broker.restart(kill=kill)
    conn = connect(mq_fresh_broker)
    ch = conn.channel()
    assert [b for b, _, _ in drain(ch, "acks")] == [b"5", b"6", b"7", b"8", b"9", b"sync"]
    assert drain(ch, "purged") == []
    conn.close()


def test_drained_queue_returns_disk(mq_fresh_broker: BrokerProcess) -> None:
    """B-DUR-5: after a queue with ~30 MB of persistent messages is drained, the store's
    segment files shrink back to near zero."""
    conn = connect(mq_fresh_broker)
    ch = conn.channel()
    ch.queue_declare("big", durable=True)
    body = os.urandom(10_000)
    for i in range(3000):
        ch.basic_publish("", "big", body, PERSISTENT)
    synced(conn, "big")
    assert segment_bytes(mq_fresh_broker) > 30_000_000
    ch.basic_qos(prefetch_count=500)
    count = 0
    for method, _, _ in ch.consume("big", inactivity_timeout=5):
        assert method is not None, f"only {count} of 3001 arrived"
        ch.basic_ack(method.delivery_tag)
        count += 1
        if count == 3001:
            break
    ch.cancel()
    deadline = time.monotonic() + 10
    while segment_bytes(mq_fresh_broker) > 100_000 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert segment_bytes(mq_fresh_broker) <= 100_000
    conn.close()
    mq_fresh_broker.restart()
    conn = connect(mq_fresh_broker)
    assert conn.channel().queue_declare("big", passive=True).method.message_count == 0
    conn.close()


def _publish_numbered(broker: BrokerProcess, queue: str, count: int) -> None:
    conn = connect(broker)
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare(queue, durable=True)
    for i in range(count):
        ch.basic_publish("", queue, b"n%03d" % i + b"." * 50, PERSISTENT)
    conn.close()


@pytest.mark.parametrize("damage", ["truncate", "corrupt"])
def test_torn_tail_is_cut_and_the_broker_starts(mq_fresh_broker: BrokerProcess,
                                                damage: str) -> None:
    """B-DUR-6: a torn (truncated) last record is detected, cut off and logged; B-DUR-7: a
    corrupt one followed by an intact record is detected by its checksum, skipped and logged;
    either way the broker starts with every message before it."""
    _publish_numbered(mq_fresh_broker, "torn", 20)
    mq_fresh_broker.stop()
    log_dir = os.path.join(mq_fresh_broker.data_dir, "log")
    last = os.path.join(log_dir, sorted(os.listdir(log_dir))[-1])
    size = os.path.getsize(last)
    if damage == "truncate":
        os.truncate(last, size - 7)           # inside the last ENQ record
    else:
        with open(last, "r+b") as fh:         # inside the last message's body
            fh.seek(size - 60)
            fh.write(b"!")
    mq_fresh_broker.start()
    reported = "damaged tail" if damage == "truncate" else "damaged records"
    assert reported in mq_fresh_broker.log()
    conn = connect(mq_fresh_broker)
    got = [b[:4] for b, _, _ in drain(conn.channel(), "torn")]
    assert got == [b"n%03d" % i for i in range(19)]
    conn.close()


def test_newer_data_format_is_refused(mq_fresh_broker: BrokerProcess) -> None:
    """The data directory's format version is checked at start: a newer one is refused with
    a message saying so."""
    mq_fresh_broker.stop()
    with open(os.path.join(mq_fresh_broker.data_dir, "format"), "w") as fh:
        fh.write("mq-data-format 99\n")
    with pytest.raises(RuntimeError, match="has format 99, written by a newer mq"):
        mq_fresh_broker.start()


class CrashingPublisher:
    """Publishes numbered persistent messages with confirms, one by one, reconnecting after
    each crash; every few messages it takes one with basic.get and acks it. Keeps what was
    confirmed, which messages were acked, and which acks are known durable (a confirmed
    publish followed them on the same connection)."""

    def __init__(self, broker: BrokerProcess, queue: str) -> None:
        self.broker = broker
        self.queue = queue
        self.next = 0
        self.confirmed: set[int] = set()
        self.acked: set[int] = set()
        self.acked_durable: set[int] = set()
        self.stop = threading.Event()
        self.connected = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self._session()
            except (AMQPError, OSError, ConnectionError):
                self.connected.clear()
                time.sleep(0.05)

    def _session(self) -> None:
        conn = connect(self.broker)
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare(self.queue, durable=True)
        self.connected.set()
        pending_acks: list[int] = []
        while not self.stop.is_set():
            n = self.next
            self.next += 1
            ch.basic_publish("", self.queue, b"%d" % n, PERSISTENT)
            self.confirmed.add(n)
            self.acked_durable.update(pending_acks)
            pending_acks = []
            if n % 5 == 4:
                method, _, body = ch.basic_get(self.queue)
                if method is not None:
                    self.acked.add(int(body))
                    ch.basic_ack(method.delivery_tag)
                    pending_acks.append(int(body))
        conn.close()


def crash_rounds(broker: BrokerProcess, rounds: int) -> None:
    publisher = CrashingPublisher(broker, "crash")
    thread = threading.Thread(target=publisher.run, daemon=True)
    thread.start()
    rng = random.Random()
    for _ in range(rounds):
        assert publisher.connected.wait(20)
        time.sleep(rng.uniform(0.1, 0.6))
        broker.restart(kill=True)
    assert publisher.connected.wait(20)
    time.sleep(0.2)
    publisher.stop.set()
    thread.join(20)
    conn = connect(broker)
    got = [int(b) for b, _, _ in drain(conn.channel(), "crash")]
    conn.close()
    present = set(got)
    # An ack sent just before a crash may or may not have made it: such a message may be
    # either there or gone; every other confirmed one must be there.
    assert publisher.confirmed - publisher.acked - present == set(), "confirmed messages lost"
    assert publisher.acked_durable & present == set(), "acked messages came back"
    assert got == sorted(got), "messages out of order"
    assert len(publisher.confirmed) > 20 * rounds
    print(f"crash rounds: {rounds} kills, {len(publisher.confirmed)} confirmed, "
          f"{len(publisher.acked)} acked ({len(publisher.acked_durable)} known durable), "
          f"{len(got)} left in the queue, {len(got) - len(present)} duplicates, 0 lost")


def test_crash_never_loses_a_confirmed_message(mq_fresh_broker: BrokerProcess) -> None:
    """B-DUR-3, B-PUB-6, B-DUR-4: a publisher with confirms runs while the broker is killed
    (SIGKILL) at random moments; after each restart every confirmed message is there, acked
    ones are gone, the order holds. A short round here; the soak test runs many."""
    crash_rounds(mq_fresh_broker, 3)


@pytest.mark.soak
@pytest.mark.timeout(600)
def test_crash_soak(mq_fresh_broker: BrokerProcess) -> None:
    """B-DUR-3, B-PUB-6: the crash test, 40 rounds."""
    crash_rounds(mq_fresh_broker, 40)


def test_dead_lettering_between_durable_queues_survives_a_crash(
        mq_fresh_broker: BrokerProcess) -> None:
    """B-DLX-6: persistent messages rejected from a durable queue into a durable dead-letter
    queue, with the broker killed midway: each is in one of the two queues (or both: a
    duplicate), none is lost, and the dead-lettered ones keep persistence and x-death."""
    conn = connect(mq_fresh_broker)
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare("dlx-target", durable=True)
    ch.queue_declare("dlx-source", durable=True,
                     arguments={"x-dead-letter-exchange": "",
                                "x-dead-letter-routing-key": "dlx-target"})
    for i in range(300):
        ch.basic_publish("", "dlx-source", b"%d" % i, PERSISTENT)
    conn.close()

    def reject_all() -> None:
        try:
            c = connect(mq_fresh_broker)
            cch = c.channel()
            cch.basic_qos(prefetch_count=20)
            for method, _, _ in cch.consume("dlx-source", inactivity_timeout=5):
                if method is None:
                    break
                cch.basic_reject(method.delivery_tag, requeue=False)
        except (AMQPError, OSError):
            pass

    rejecter = threading.Thread(target=reject_all, daemon=True)
    rejecter.start()
    time.sleep(random.uniform(0.05, 0.2))
    mq_fresh_broker.restart(kill=True)
    rejecter.join(20)

    conn = connect(mq_fresh_broker)
    ch = conn.channel()
    source = {int(b) for b, _, _ in drain(ch, "dlx-source")}
    target = drain(ch, "dlx-target")
    assert source | {int(b) for b, _, _ in target} == set(range(300))
    for _, _, props in target:
        assert props.delivery_mode == 2
        assert props.headers["x-death"][0]["queue"] == "dlx-source"
        assert props.headers["x-death"][0]["reason"] == "rejected"
    conn.close()


def test_tx_commit_ok_means_on_disk(mq_fresh_broker: BrokerProcess) -> None:
    """B-DUR-3 with transactions: once tx.commit-ok arrives, the committed persistent
    publishes and acks survive an immediate kill -9."""
    conn = connect(mq_fresh_broker)
    ch = conn.channel()
    ch.queue_declare("txq", durable=True)
    ch.tx_select()
    for i in range(50):
        ch.basic_publish("", "txq", b"%d" % i, PERSISTENT)
    ch.tx_commit()
    for _ in range(10):
        method, _, _ = ch.basic_get("txq")
        ch.basic_ack(method.delivery_tag)
    ch.tx_commit()
    mq_fresh_broker.restart(kill=True)
    conn = connect(mq_fresh_broker)
    assert [b for b, _, _ in drain(conn.channel(), "txq")] == [b"%d" % i for i in range(10, 50)]
    conn.close()


def test_server_named_durable_queue_survives(mq_fresh_broker: BrokerProcess) -> None:
    """B-DUR-1, B-DUR-2: a durable queue with a server-chosen name (amq.gen-...) comes back
    with its messages."""
    conn = connect(mq_fresh_broker)
    ch = conn.channel()
    ch.confirm_delivery()
    name = ch.queue_declare("", durable=True).method.queue
    assert name.startswith("amq.gen-")
    ch.basic_publish("", name, b"kept", PERSISTENT)
    conn.close()
    mq_fresh_broker.restart(kill=True)
    conn = connect(mq_fresh_broker)
    assert [b for b, _, _ in drain(conn.channel(), name)] == [b"kept"]
    conn.close()


def rss_bytes(broker: BrokerProcess) -> int:
    with open(f"/proc/{broker.proc.pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture
def small_budget_broker() -> Iterator[BrokerProcess]:
    """A broker whose durable queues keep at most 64 KB of bodies in memory."""
    with run_broker(args=("--queue-memory-budget", "65536")) as broker:
        yield broker


def test_backlog_beyond_the_memory_budget_waits_on_disk(
        small_budget_broker: BrokerProcess) -> None:
    """B-DUR-2 with paging: a durable queue's persistent backlog beyond its memory budget
    lives on disk only (the broker's memory hardly grows), and comes back intact, in
    priority order, through consumers, basic.get, dead lettering and a kill -9."""
    broker = small_budget_broker
    conn = connect(broker)
    ch = conn.channel()
    ch.queue_declare("dead", durable=True)
    ch.queue_declare("paged", durable=True, arguments={
        "x-max-priority": 3, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dead"})
    synced(conn, "paged")
    assert drain(ch, "paged")[0][0] == b"sync"
    before = rss_bytes(broker)
    filler = os.urandom(20_000)
    for i in range(3000):   # 60 MB of bodies
        ch.basic_publish("", "paged", b"%04d" % i + filler, pika.BasicProperties(
            delivery_mode=2, priority=i % 4, headers={"i": i}))
    synced(conn, "dead")
    grown = rss_bytes(broker) - before
    assert grown < 30_000_000, f"broker grew by {grown} bytes for 60 MB of paged messages"
    conn.close()
    broker.restart(kill=True)

    conn = connect(broker)
    ch = conn.channel()
    expected = sorted(range(3000), key=lambda i: (-(i % 4), i))
    method, props, body = ch.basic_get("paged")
    assert (body[:4], body[4:], props.headers) == (b"%04d" % expected[0], filler,
                                                   {"i": expected[0]})
    ch.basic_reject(method.delivery_tag, requeue=False)   # dead-lettered with its body
    got = []
    ch.basic_qos(prefetch_count=200)
    for method, props, body in ch.consume("paged", inactivity_timeout=5):
        assert method is not None
        assert body[4:] == filler and props.headers == {"i": int(body[:4])}
        got.append(int(body[:4]))
        ch.basic_ack(method.delivery_tag)
        if len(got) == 2999:
            break
    ch.cancel()
    assert got == expected[1:]
    dead = drain(ch, "dead")
    assert [(b[:4], b[4:]) for b, _, _ in dead] == [(b"sync", b""),
                                                    (b"%04d" % expected[0], filler)]
    conn.close()


def test_confirms_wait_for_fsync_and_stay_in_order(mq_fresh_broker: BrokerProcess) -> None:
    """B-PUB-6: persistent publishes to a durable queue are confirmed after the fsync,
    transient ones at once, yet the acks never get ahead of an unconfirmed sequence number
    (a multiple=true ack covers only confirmed ones); a kill -9 right after the last ack
    loses nothing."""
    client = RawClient(mq_fresh_broker.port)
    client.handshake()
    client.open_channel(1)
    client.send_method(1, spec.Queue.Declare(queue="dq", durable=True))
    client.expect("Queue.DeclareOk")
    client.send_method(1, spec.Queue.Declare(queue="tq"))
    client.expect("Queue.DeclareOk")
    client.send_method(1, spec.Confirm.Select())
    client.expect("Confirm.SelectOk")
    for i in range(40):
        persistent = i % 2 == 0
        client.send_method(1, spec.Basic.Publish(exchange="", routing_key="dq" if persistent
                                                 else "tq"))
        client.send_content(1, b"%d" % i, spec.Basic.Properties(
            delivery_mode=2 if persistent else 1))
    confirmed = 0
    while confirmed < 40:
        ack = client.expect("Basic.Ack")
        assert ack.multiple or ack.delivery_tag == confirmed + 1, \
            f"ack for {ack.delivery_tag} while {confirmed + 1} was not confirmed"
        assert ack.delivery_tag > confirmed
        confirmed = ack.delivery_tag
    mq_fresh_broker.restart(kill=True)
    client.close()
    conn = connect(mq_fresh_broker)
    assert [b for b, _, _ in drain(conn.channel(), "dq")] == [b"%d" % i for i in range(0, 40, 2)]
    conn.close()


@pytest.mark.parametrize("kill", [False, True], ids=["restart", "kill-9"])
def test_a_backlog_beyond_the_memory_budget_comes_back_in_priority_order(kill: bool) -> None:
    """B-DUR-2, B-PRI-1: after a restart, a durable priority queue whose backlog is far
    beyond the queue memory budget (most of it stays on disk as references to the log) gives
    every message back once, highest priority first and in publish order within a priority,
    with its body, TTL and the redelivered flag of those delivered before."""
    broker = BrokerProcess(args=("--management-port", "0", "--queue-memory-budget", "65536"))
    broker.start()
    try:
        conn = connect(broker)
        ch = conn.channel()
        ch.queue_declare("backlog", durable=True, arguments={"x-max-priority": 3})
        sent = [(i % 5, b"%05d" % i + b"." * 500) for i in range(2000)]  # priority 4 caps at 3
        for priority, body in sent:
            ch.basic_publish("", "backlog", body, pika.BasicProperties(
                delivery_mode=2, priority=priority,
                expiration="3600000" if priority == 0 else None))
        # One message delivered and not acked: it comes back redelivered.
        method, _, first = ch.basic_get("backlog")
        synced(conn, "backlog")
        conn.close()
        broker.restart(kill=kill)
        conn = connect(broker)
        ch = conn.channel()
        got = drain(ch, "backlog")
        conn.close()
    finally:
        broker.cleanup()
    bodies = [body for body, _, _ in got if body != b"sync"]
    expected = [body for _, body in sorted(sent, key=lambda pb: -min(pb[0], 3))]
    assert bodies == expected  # (the one taken before the restart first: it was the head)
    assert [red for body, red, _ in got if body == first] == [True]
    assert sum(red for _, red, _ in got) == (len(got) if kill else 1)
    assert all(props.expiration == "3600000" for body, _, props in got
               if body != b"sync" and int(body[:5]) % 5 == 0)
