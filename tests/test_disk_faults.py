"""B-DUR-8: a failed write or fsync (disk full, I/O error) never yields a confirm, a
tx.commit-ok or a declare-ok for what it covers: publishes waiting for the disk are nacked,
the commit or durable declare fails with 541 and the disk error, a disk alarm blocks
publishers at once, and everything resumes when writes succeed again; nothing confirmed is
lost. Faults come from a real full disk (a small tmpfs as the data dir) or from the store's
test seam (MQ_TEST_FAULT_FILE, mq/store/segments.py), against real broker processes; the
store's retry (cut back to the last fsync, write again from memory) is also checked alone."""
from __future__ import annotations

import asyncio
import errno
import os
import shutil
import struct
import subprocess
import tempfile
import time
from typing import Iterator

import pika
import pytest
from pamqp import commands as spec
from pika.exceptions import ChannelClosedByBroker, NackError
from exqutil import drain
from rawamqp import RawClient

from mq._core.message import Message
from mq.store import Store, segments
from mq.testing import BrokerProcess

PERSISTENT = pika.BasicProperties(delivery_mode=2)
PROPS = spec.Basic.Properties(delivery_mode=2)


def connect(broker: BrokerProcess) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(broker.url))


def closed_with_disk_error(exc: ChannelClosedByBroker, text: str) -> bool:
    return exc.reply_code == 541 and "disk write failed" in exc.reply_text \
        and text in exc.reply_text


class Publisher:
    """A raw confirm-mode publisher with many publishes in flight: every publish must come
    back as an ack or a nack; connection.blocked/unblocked are noted with their time."""

    def __init__(self, port: int) -> None:
        self.client = RawClient(port, timeout=10)
        self.client.handshake(capabilities={"connection.blocked": True,
                                            "publisher_confirms": True, "basic.nack": True})
        self.client.open_channel(1)
        self.client.send_method(1, spec.Confirm.Select())
        self.client.expect("Confirm.SelectOk")
        self.seq = 0
        self.outstanding: dict[int, int] = {}  # publish seq -> message number
        self.acked: set[int] = set()
        self.nacked: set[int] = set()
        self.events: list[tuple[str, float]] = []

    def publish(self, queue: str, number: int, size: int) -> None:
        self.seq += 1
        self.outstanding[self.seq] = number
        self.client.send_method(1, spec.Basic.Publish(exchange="", routing_key=queue))
        self.client.send_content(1, body_of(number, size), PROPS)

    def poll(self, timeout: float) -> None:
        """Handle the next frame from the broker (TimeoutError: silence)."""
        _, method = self.client.recv_method(timeout)
        name = method.name
        if name in ("Basic.Ack", "Basic.Nack"):
            tags = [t for t in self.outstanding if t <= method.delivery_tag] \
                if method.multiple else [method.delivery_tag]
            for tag in tags:
                (self.acked if name == "Basic.Ack" else self.nacked).add(
                    self.outstanding.pop(tag))
        elif name == "Connection.Blocked":
            self.events.append(("blocked", time.monotonic()))
        elif name == "Connection.Unblocked":
            self.events.append(("unblocked", time.monotonic()))
        else:
            raise AssertionError(f"unexpected {method!r}")

    def settle_all(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.outstanding:
            self.poll(max(0.1, deadline - time.monotonic()))

    def wait_for(self, event: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while not any(e == event for e, _ in self.events):
            self.poll(max(0.1, deadline - time.monotonic()))
        return next(t for e, t in self.events if e == event)


def body_of(number: int, size: int) -> bytes:
    return struct.pack(">I", number) + bytes([number % 251]) * (size - 4)


def numbers_in(broker: BrokerProcess, queue: str, size: int) -> set[int]:
    """Every message number in the queue (each body checked whole), taken with basic.get."""
    conn = connect(broker)
    ch = conn.channel()
    found = set()
    for body in drain(ch, queue):
        number = struct.unpack(">I", body[:4])[0]
        assert body == body_of(number, size)
        found.add(number)
    conn.close()
    return found


# ---- a real full disk -----------------------------------------------------------------

@pytest.fixture
def small_disk() -> Iterator[str]:
    """A 48 MB tmpfs, mounted for the test (skipped where mounting is not permitted)."""
    path = tempfile.mkdtemp(prefix="mq-full-disk-")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", path],
                          capture_output=True, text=True)
    if done.returncode != 0:
        os.rmdir(path)
        pytest.skip(f"cannot mount a tmpfs for the full-disk test (needs root or "
                    f"CAP_SYS_ADMIN): {done.stderr.strip() or done.returncode}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], capture_output=True)
        os.rmdir(path)


@pytest.mark.timeout(180)
def test_full_disk_nacks_blocks_refuses_durable_changes_and_resumes(small_disk: str) -> None:
    """B-DUR-8 on a real full disk: persistent publishes with confirms until the tmpfs data
    dir is full: every publish gets an ack or a nack, never silence; the publisher gets
    connection.blocked right after the first failure; a durable queue.declare fails with
    the disk error while it is full; once space is freed the broker writes again
    (unblocked, the publishes left waiting are confirmed, new ones acked); and every acked
    message is there after a restart, whole."""
    size = 64 * 1024
    ballast = os.path.join(small_disk, "ballast")
    with open(ballast, "wb") as fh:
        fh.write(b"\0" * (12 * 1024 * 1024))
    log_dir = tempfile.mkdtemp(prefix="mq-full-disk-log-")
    broker = BrokerProcess(data_dir=small_disk, args=(
        "--disk-free-limit", "1",            # only the failed write raises the disk alarm
        "--queue-memory-budget", "0",        # no paging: the log alone fills the disk
        "--store-segment-size", str(4 * 1024 * 1024)))
    broker.log_path = os.path.join(log_dir, "broker.log")
    broker.start()
    try:
        conn = connect(broker)
        conn.channel().queue_declare("fill", durable=True)
        pub = Publisher(broker.port)
        number = 0
        deadline = time.monotonic() + 60
        while not pub.nacked:
            assert time.monotonic() < deadline, "the disk never filled"
            while len(pub.outstanding) < 16:
                pub.publish("fill", number, size)
                number += 1
            pub.poll(10)  # silence for 10 s fails the test
        first_nack = time.monotonic()
        assert len(pub.acked) > 300  # ~20 MB went in before the disk was full
        pub.publish("fill", number, size)  # the next publish meets the alarm: blocked
        number += 1
        blocked_at = pub.wait_for("blocked", 5)
        assert blocked_at - first_nack < 2.0
        # Durable changes fail with the error while the disk is full; others work.
        ch = conn.channel()
        with pytest.raises(ChannelClosedByBroker) as refused:
            ch.queue_declare("durable-while-full", durable=True)
        assert closed_with_disk_error(refused.value, "No space left on device"), refused.value
        conn.channel().queue_declare("transient-while-full", durable=False)
        # Space comes back: writes resume, the alarm clears, confirms come again.
        os.unlink(ballast)
        pub.wait_for("unblocked", 10)
        pub.settle_all(10)
        later = set(range(number, number + 20))
        for n in sorted(later):
            pub.publish("fill", n, size)
        pub.settle_all(10)
        assert later <= pub.acked
        conn.channel().queue_declare("durable-after", durable=True)
        conn.close()
        pub.client.close()
        broker.restart()
        conn = connect(broker)
        conn.channel().queue_declare("durable-after", durable=True, passive=True)
        conn.close()
        found = numbers_in(broker, "fill", size)
        assert pub.acked <= found, f"{len(pub.acked - found)} acked messages lost"
    finally:
        broker.stop()
        shutil.rmtree(log_dir, ignore_errors=True)


# ---- the test seam: I/O errors and a full disk on demand --------------------------------

def set_fault(path: str, word: str) -> None:
    with open(path + ".tmp", "w") as fh:
        fh.write(word)
    os.replace(path + ".tmp", path)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fault,text", [("eio", "Input/output error"),
                                        ("enospc", "No space left on device")])
def test_write_faults_fail_commits_declares_and_confirms_then_resume(
        fault_file: str, fault: str, text: str) -> None:
    """B-DUR-8 with the store's fault seam: with faults on, a durable declare waiting for
    the disk fails with 541 and the error text, so does a tx.commit of persistent work,
    confirms are nacks and the publisher is blocked; transient work goes on. With faults
    off, all resumes: unblocked, acks, commit-ok, declare-ok. A commit whose write fails
    while it waits fails too. After kill -9 every acked or committed message and every
    declared-ok queue is there."""
    broker = BrokerProcess().start()
    try:
        conn = connect(broker)
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare("safe", durable=True)
        for i in range(10):
            ch.basic_publish("", "safe", f"ok{i}".encode(), PERSISTENT)  # acked (else raises)
        tx_conn = connect(broker)
        tx = tx_conn.channel()
        tx.tx_select()
        tx.basic_publish("", "safe", b"tx-refused", PERSISTENT)  # held until commit

        set_fault(fault_file, fault)
        # The first write to fail: the declare waiting for it gets the error.
        with pytest.raises(ChannelClosedByBroker) as refused:
            conn.channel().queue_declare("during", durable=True)
        assert closed_with_disk_error(refused.value, text), refused.value
        # Writes are failing now: a commit of persistent work fails without effect...
        with pytest.raises(ChannelClosedByBroker) as refused:
            tx.tx_commit()
        assert closed_with_disk_error(refused.value, text), refused.value
        # ... a confirm is a nack, and the publisher is blocked by the disk alarm.
        events: list[str] = []
        conn.add_on_connection_blocked_callback(lambda _c, f: events.append(f.method.reason))
        conn.add_on_connection_unblocked_callback(lambda _c, _f: events.append("unblocked"))
        with pytest.raises(NackError):
            ch.basic_publish("", "safe", b"nacked", PERSISTENT)
        deadline = time.monotonic() + 3
        while not events and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.1)
        assert events == ["low on disk"]
        # Other connections go on with what needs no disk (a publish would block them too).
        other = connect(broker)
        other_ch = other.channel()
        other_ch.queue_declare("safe", durable=True, passive=True)
        other_ch.queue_declare("transient", durable=False)
        assert other_ch.basic_get("transient")[0] is None

        set_fault(fault_file, "")
        deadline = time.monotonic() + 5
        while events[-1] != "unblocked" and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.1)
        assert events[-1] == "unblocked"
        ch.basic_publish("", "safe", b"after", PERSISTENT)  # acked
        other_ch.queue_declare("declared-after", durable=True)
        tx = other.channel()
        tx.tx_select()
        tx.basic_publish("", "safe", b"committed", PERSISTENT)
        tx.tx_commit()
        # A commit whose write fails while it waits for the disk fails too.
        tx.basic_publish("", "safe", b"maybe", PERSISTENT)
        set_fault(fault_file, fault)
        with pytest.raises(ChannelClosedByBroker) as refused:
            tx.tx_commit()
        assert closed_with_disk_error(refused.value, text), refused.value
        set_fault(fault_file, "")
        deadline = time.monotonic() + 5
        while True:  # acked once the store writes again (nacked, and blocked, until then)
            assert time.monotonic() < deadline, events
            try:
                ch.basic_publish("", "safe", b"last", PERSISTENT)
                break
            except NackError:
                while events[-1] != "unblocked" and time.monotonic() < deadline:
                    conn.process_data_events(time_limit=0.1)
        broker.restart(kill=True)
        conn = connect(broker)
        ch = conn.channel()
        ch.queue_declare("declared-after", durable=True, passive=True)
        bodies = drain(ch, "safe")
        must = [f"ok{i}".encode() for i in range(10)] + [b"after", b"committed", b"last"]
        firsts = [b for i, b in enumerate(bodies) if b in must and b not in bodies[:i]]
        assert firsts == must  # in order (a nacked copy of "last" may come first)
        assert b"tx-refused" not in bodies
        assert set(bodies) - set(must) <= {b"nacked", b"maybe", b"last"}  # nacked: may be kept
        conn.close()
    finally:
        broker.cleanup()


# ---- the store alone: keep, cut back, write again ---------------------------------------

def persistent(body: bytes) -> Message:
    return Message("ex", "rk", b"\x10\x00\x02", body)


@pytest.mark.parametrize("fault", ["eio", "enospc"])
def test_store_keeps_the_batch_cuts_back_and_writes_again(
        fault: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """B-DUR-8 in the store: a failed write or fsync fails every waiter at once and tells
    on_failure; the records stay in memory (readable); each retry cuts the segment back to
    its last fsynced length, so the file never holds a torn or doubled record; when writes
    work again on_failure(None) comes and everything is durable and recovered exactly."""
    directory = tempfile.mkdtemp(prefix="mq-store-fault-")
    fault_path = os.path.join(directory, "fault")
    monkeypatch.setattr(segments, "_fault_file", fault_path)
    reports: list = []
    answers: list = []
    try:
        store = Store(os.path.join(directory, "data"))
        store.open()
        q = store.declare_queue("/", "q", False, {})
        good = [persistent(b"good%d" % i * 50) for i in range(100)]
        for msg in good:
            store.enqueue(q, msg)
        store.sync()

        async def main() -> None:
            store.on_failure = reports.append
            store.start(asyncio.get_running_loop())
            set_fault(fault_path, fault)
            for i in range(100):
                store.enqueue(q, persistent(b"kept%d" % i * 50))
            store.when_durable(answers.append)
            while not answers:
                await asyncio.sleep(0.01)
            assert isinstance(answers[0], OSError)
            assert answers[0].errno == (errno.EIO if fault == "eio" else errno.ENOSPC)
            assert reports == [answers[0]] and store.failed is answers[0]
            head = store._head
            assert head.flushed < head.size  # not fsynced: kept in memory
            assert store.read_message(min(store._index.queues[q])).body == good[0].body
            last = max(store._index.queues[q])
            assert store.read_message(last).body == b"kept99" * 50  # from memory
            store.when_durable(answers.append)  # failing: answered at once
            assert answers[1] is store.failed
            await asyncio.sleep(1.2)  # two more attempts, each cut back first
            assert os.path.getsize(head.path) <= head.size
            set_fault(fault_path, "")
            while store.failed is not None:
                await asyncio.sleep(0.01)
            assert reports[-1] is None
            assert store.durable_seq == store.seq
            assert os.path.getsize(head.path) == head.size == head.flushed

        asyncio.run(main())
        store.close()
        again = Store(store.directory)
        recovered = again.open()
        bodies = [m.body for m, _, _ in recovered.queues[0].messages]
        assert bodies == [m.body for m in good] + [b"kept%d" % i * 50 for i in range(100)]
        again.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.timeout(120)
def test_paging_on_a_full_disk_keeps_messages_in_memory(small_disk: str) -> None:
    """B-DUR-8, B-FLOW-3: a queue past its memory budget pages transient messages out to
    the data dir; when that disk is full, the write is refused and the messages stay in
    memory: the publisher's connection stays open, every message is delivered whole and in
    order, and the broker says why in its log."""
    size = 10 * 1024
    ballast = os.path.join(small_disk, "ballast")
    with open(ballast, "wb") as fh:
        fh.write(b"\0" * (44 * 1024 * 1024))  # about 4 MB left for paging
    log_dir = tempfile.mkdtemp(prefix="mq-full-disk-log-")
    broker = BrokerProcess(data_dir=small_disk, args=(
        "--disk-free-limit", "1", "--queue-memory-budget", str(64 * 1024)))
    broker.log_path = os.path.join(log_dir, "broker.log")
    broker.start()
    try:
        conn = connect(broker)
        ch = conn.channel()
        ch.queue_declare("paged")
        ch.confirm_delivery()
        count = 1000  # 10 MB: more than the disk has left
        for n in range(count):
            ch.basic_publish("", "paged", body_of(n, size))
        got = drain(ch, "paged")
        conn.close()
        assert got == [body_of(n, size) for n in range(count)]
        with open(broker.log_path) as fh:
            assert "paged messages stay in memory until the disk takes them" in fh.read()
    finally:
        broker.stop()
        shutil.rmtree(log_dir, ignore_errors=True)
