"""The upgrade of a data directory from format 1 to 2 (B-DUR-7 framing, B-DUR-10 no pickle),
and directories that are not mq's: real files, real restarts of Store, real kills.

Format-1 data comes from tests/fixtures/format1/ (written by the store of commit 139323a, see
tests/format1_fixture.py) or, for bigger or doctored directories, from V1Log below: format 1
framed a record as the current framing minus the magic (`u32 length | u32 crc32 | type |
payload`, the same CRC), so frame[4:] is its format-1 form.
"""
from __future__ import annotations

import datetime
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from typing import Iterator

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker

import format1_fixture as fixture
from fieldvalues import same
from mq._core import records as R
from mq.store import Store, StoreError
from mq.store import migration
from mq.store.arguments import decode_arguments
from mq.testing import run_broker

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "fixtures", "format1")
ROOT = os.path.dirname(HERE)


@pytest.fixture(autouse=True)
def no_hook() -> Iterator[None]:
    yield
    migration.hook = None


def copy_fixture(data_dir: str) -> None:
    shutil.copytree(FIXTURE, data_dir, dirs_exist_ok=True)


def sorted_args(args: dict) -> dict:
    return dict(sorted(args.items()))


def summary(rec) -> dict:
    return {
        "exchanges": {(v, n): (t, ad, internal, args)
                      for v, n, t, ad, internal, args in rec.exchanges},
        "queues": {q.name: (q.auto_delete, q.arguments,
                            [(m.body, m.priority, exp, red) for m, exp, red in q.messages])
                   for q in rec.queues},
        "bindings": {(v, s, to_ex, d, k): args for v, s, to_ex, d, k, args in rec.bindings},
    }


def assert_fixture_recovered(rec) -> None:
    got, want = summary(rec), fixture.expected()
    assert set(got["exchanges"]) == set(want["exchanges"])
    for key, (t, ad, internal, args) in want["exchanges"].items():
        assert got["exchanges"][key][:3] == (t, ad, internal)
        assert same(sorted_args(args), got["exchanges"][key][3]), key
    assert set(got["queues"]) == set(want["queues"])
    for name, (ad, args, messages) in want["queues"].items():
        assert got["queues"][name][0] == ad
        assert same(sorted_args(args), got["queues"][name][1]), name
        assert got["queues"][name][2] == messages, name
    assert set(got["bindings"]) == set(want["bindings"])
    for key, args in want["bindings"].items():
        assert same(sorted_args(args), got["bindings"][key]), key


def assert_format2(data_dir: str) -> None:
    """The directory is format 2 through and through: no leftovers, no pickle."""
    with open(os.path.join(data_dir, "format")) as fh:
        assert fh.read() == "mq-data-format 2\n"
    assert sorted(n for n in os.listdir(data_dir) if n.startswith("log")) == ["log"]
    for name in os.listdir(os.path.join(data_dir, "log")):
        with open(os.path.join(data_dir, "log", name), "rb") as fh:
            data = fh.read()
        found, damaged = R.scan(data)
        assert damaged == []
        for _, _, f in found:
            if f[0] in (R.QUEUE, R.EXCHANGE, R.BINDING):
                decode_arguments(f[-1])
        assert b"\x80\x04\x95" not in data  # a protocol-4 pickle's opening


# ---- a format-1 writer, for directories the fixture does not cover ---------------------------

class V1Log:
    """Writes format-1 segments: records framed without the magic, arguments pickled."""

    def __init__(self, data_dir: str, segment_size: int = 64 * 1024) -> None:
        self.dir = data_dir
        self.segment_size = segment_size
        os.makedirs(os.path.join(data_dir, "log"), exist_ok=True)
        with open(os.path.join(data_dir, "format"), "w") as fh:
            fh.write("mq-data-format 1\n")
        self.number, self.size, self.next_id = 1, 0, 1

    def path(self, number: int) -> str:
        return os.path.join(self.dir, "log", f"{number:08d}.seg")

    def append(self, frame: bytes) -> None:
        record = frame[4:]  # format 1: the same frame without the magic
        if self.size and self.size + len(record) > self.segment_size:
            self.number, self.size = self.number + 1, 0
        with open(self.path(self.number), "ab") as fh:
            fh.write(record)
        self.size += len(record)

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def queue(self, name: str, args: dict | None = None, blob: bytes | None = None) -> int:
        qid = self.new_id()
        if blob is None:
            blob = pickle.dumps(sorted_args(args or {}), protocol=4)
        self.append(R.topology_record(R.QUEUE, qid, 0, ("/", name), blob))
        return qid

    def publish(self, qid: int, body: bytes) -> int:
        mid = self.new_id()
        self.append(R.message_record(mid, "", "q", b"\x10\x00\x02", body))
        self.append(R.enqueue_record(qid, mid, 0.0))
        return mid


def bodies(rec, name: str) -> list[bytes]:
    (queue,) = [q for q in rec.queues if q.name == name]
    return [m.body for m, _, _ in queue.messages]


# ---- the upgrade ------------------------------------------------------------------------------

def test_format1_directory_is_upgraded(data_dir: str, caplog) -> None:
    """B-DUR-10: a directory written by the format-1 store (arguments of every field type,
    shared messages, acks, delivered flags, deletes, several segments) comes back whole after
    the upgrade, and holds no pickle any more; a binding is still known by its arguments."""
    copy_fixture(data_dir)
    store = Store(data_dir, segment_size=fixture.SEGMENT_SIZE)
    rec = store.open()
    assert "upgrading data directory" in caplog.text
    assert_fixture_recovered(rec)
    assert_format2(data_dir)
    # The upgraded directory works: unbind by the same arguments, ack, and reopen.
    store.unbind("other", "x.headers", False, "typed", "", fixture.BINDING_ARGS)
    (q1,) = [q for q in rec.queues if q.name == "q1"]
    first = q1.messages[0][0]
    store.ack(q1.store_qid, first.store_id)
    store.sync()
    store.close()
    caplog.clear()
    store = Store(data_dir, segment_size=fixture.SEGMENT_SIZE)
    rec = store.open()
    assert "upgrading" not in caplog.text
    assert [b[1] for b in rec.bindings] == ["x.topic", "x.topic"]
    (q1,) = [q for q in rec.queues if q.name == "q1"]
    assert first.body not in [m.body for m, _, _ in q1.messages]
    store.close()


def test_broker_starts_on_a_format1_directory(data_dir: str) -> None:
    """B-DUR-10 end to end: a broker started on the format-1 fixture upgrades it and serves
    what it held, as a client sees it with pika: message counts, bodies with their
    redelivered flags and priorities, arguments (a redeclare with others is refused) and
    bindings (a publish is routed)."""
    copy_fixture(data_dir)
    want = fixture.expected()
    with run_broker(data_dir=data_dir) as broker:
        assert "upgrading data directory" in broker.log()
        conn = pika.BlockingConnection(pika.URLParameters(broker.url))
        ch = conn.channel()
        for name, (_, _, messages) in want["queues"].items():
            assert ch.queue_declare(name, passive=True).method.message_count == len(messages)
        got = []
        while True:
            method, props, data = ch.basic_get("q1")
            if method is None:
                break
            got.append((data, props.priority or 0, method.redelivered))
            ch.basic_ack(method.delivery_tag)
        assert sorted(got) == sorted((b, p, red) for b, p, _, red in want["queues"]["q1"][2])
        assert [p for _, p, _ in got] == sorted((p for _, p, _ in got), reverse=True)
        with pytest.raises(ChannelClosedByBroker) as err:
            ch.queue_declare("q1", durable=True, arguments={"x-max-priority": 4})
        assert err.value.reply_code == 406
        ch = conn.channel()
        ch.queue_declare("q1", durable=True, arguments={"x-max-priority": 5})
        ch.basic_publish("x.topic", "a.b", b"routed")
        method, _, data = ch.basic_get("q1", auto_ack=True)
        assert data == b"routed"
        conn.close()
    assert_format2(data_dir)


STEPS = [("segment", 1), ("segment", 5), ("converted", 1), ("ready", 1), ("committed", 1),
         ("moved-old", 1), ("switched", 1), ("cleaned", 1)]


@pytest.mark.parametrize("step,nth", STEPS, ids=[f"{s}-{n}" for s, n in STEPS])
def test_crash_at_each_step_of_the_upgrade(data_dir: str, step: str, nth: int) -> None:
    """A process killed (SIGKILL) right after any step of the upgrade leaves a directory the
    next start upgrades or finishes: everything comes back, in format 2."""
    copy_fixture(data_dir)
    code = f"""
import os, signal, sys
sys.path.insert(0, {ROOT!r})
from mq.store import Store, migration
seen = {{}}
def hook(name):
    seen[name] = seen.get(name, 0) + 1
    if name == {step!r} and seen[name] == {nth}:
        os.kill(os.getpid(), signal.SIGKILL)
migration.hook = hook
Store({data_dir!r}).open()
print("not killed")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    store = Store(data_dir, segment_size=fixture.SEGMENT_SIZE)
    assert_fixture_recovered(store.open())
    assert_format2(data_dir)
    store.close()


@pytest.mark.parametrize("step", sorted({s for s, _ in STEPS}))
def test_a_failure_at_each_step_leaves_a_directory_that_opens(data_dir: str,
                                                              step: str) -> None:
    """The same with an exception (an I/O error, say) in place of the kill: the start fails,
    the next one succeeds with everything."""
    copy_fixture(data_dir)

    def hook(name: str) -> None:
        if name == step:
            raise OSError(f"injected at {name}")

    migration.hook = hook
    with pytest.raises(OSError, match="injected"):
        Store(data_dir).open()
    migration.hook = None
    store = Store(data_dir, segment_size=fixture.SEGMENT_SIZE)
    assert_fixture_recovered(store.open())
    assert_format2(data_dir)
    store.close()


def test_kills_at_random_moments_of_a_long_upgrade(data_dir: str) -> None:
    """A bigger directory (some 12 MB in 48 segments), its upgrade killed at random moments
    again and again (mid-write included), then let finish: every message comes back once."""
    v1 = V1Log(data_dir, segment_size=256 * 1024)
    qid = v1.queue("q", {"x-max-length": 10**6})
    expected = []
    for i in range(12_000):
        body = b"%06d" % i + bytes(random.Random(i).getrandbits(8) for _ in range(20)) * 50
        v1.publish(qid, body)
        expected.append(body)
    assert v1.number >= 40
    code = f"""
import sys
sys.path.insert(0, {ROOT!r})
from mq.store import Store
Store(sys.argv[1]).open()
"""
    # How long a whole upgrade takes here (process start included), on a copy.
    trial = data_dir + "-trial"
    shutil.copytree(data_dir, trial)
    start = time.monotonic()
    subprocess.run([sys.executable, "-c", code, trial], check=True)
    took = time.monotonic() - start
    shutil.rmtree(trial)
    rng = random.Random(12)
    interrupted = 0
    for delay in sorted(rng.uniform(0.1 * took, took) for _ in range(6)):
        proc = subprocess.Popen([sys.executable, "-c", code, data_dir])
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        if proc.wait() == -signal.SIGKILL:
            with open(os.path.join(data_dir, "format")) as fh:
                interrupted += fh.read() != "mq-data-format 2\n" or \
                    any(os.path.exists(os.path.join(data_dir, n)) for n in
                        (migration.NEW_TMP, migration.NEW, migration.OLD))
    assert interrupted, "no kill landed inside the upgrade"
    store = Store(data_dir)
    rec = store.open()
    assert bodies(rec, "q") == expected
    assert rec.queues[0].arguments == {"x-max-length": 10**6}
    assert_format2(data_dir)
    store.close()


def test_damage_in_a_format1_directory(data_dir: str, caplog) -> None:
    """B-DUR-6/7 in the upgrade: a bad record in an older format-1 segment costs that record
    (the old framing has no magic: the next record is looked for at every offset), the damaged
    file is kept aside; a torn tail of the last segment is cut."""
    v1 = V1Log(data_dir, segment_size=8 * 1024)
    qid = v1.queue("q")
    for i in range(200):
        v1.publish(qid, b"%04d" % i + b"-" * 100)
    assert v1.number >= 3
    second = v1.path(2)
    with open(second, "r+b") as fh:
        fh.seek(3000)
        fh.write(b"\x00\x00\x00\x00")
    os.truncate(v1.path(v1.number), os.path.getsize(v1.path(v1.number)) - 10)
    store = Store(data_dir)
    rec = store.open()
    got = bodies(rec, "q")
    assert 195 <= len(got) < 200
    assert got == sorted(got) and got[-1][:4] < b"0199" and b"0150" in [b[:4] for b in got]
    assert f"damaged records in {second} at offset" in caplog.text
    assert "damaged tail in" in caplog.text
    (aside,) = os.listdir(os.path.join(data_dir, "damaged"))
    assert aside.startswith("00000002.seg.")
    assert_format2(data_dir)
    store.close()


# ---- directories that are not mq's --------------------------------------------------------

class _Payload:
    """What a tampered pickle does when loaded: create a file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_tampered_pickle_is_refused_and_not_run(data_dir: str, tmp_path) -> None:
    """B-DUR-10: a format-1 directory whose arguments pickle would run code (here: create a
    file) is refused with a clear error; the code does not run; the directory is left as it
    was, and refused again at the next start."""
    witness = str(tmp_path / "pwned")
    v1 = V1Log(data_dir)
    qid = v1.queue("fine", {"x-max-length": 5})
    v1.publish(qid, b"kept")
    v1.queue("evil", blob=pickle.dumps({"x-evil": _Payload(witness)}, protocol=4))
    for _ in range(2):
        with pytest.raises(StoreError, match=r"offset \d+ \(queue 'evil' in vhost '/'\): the "
                                             r"arguments are not a pickle of plain data.*"
                                             r"refers to io\.open.*nothing in it was run"):
            Store(data_dir).open()
        assert not os.path.exists(witness)
        with open(os.path.join(data_dir, "format")) as fh:
            assert fh.read() == "mq-data-format 1\n"
        assert sorted(os.listdir(os.path.join(data_dir, "log"))) == ["00000001.seg"]


@pytest.mark.parametrize("args,error", [
    (pickle.dumps({"a": {1, 2}}, protocol=4), "set value"),
    (pickle.dumps({"a": 2**70}, protocol=4), "out of the range"),
    (pickle.dumps(["not", "a", "dict"], protocol=4), "a list, not a table"),
    (pickle.dumps({"a": datetime.timedelta(1)}, protocol=4), "timedelta value"),
    (b"\x80\x04garbage", "not a pickle of plain data"),
    (pickle.dumps({"a": 1}, protocol=2) + b"trailing", None),
])
def test_format1_arguments_that_are_not_plain_tables(data_dir: str, args: bytes,
                                                     error: str | None) -> None:
    """Pickled arguments that are no plain AMQP table are refused by name, not guessed at."""
    v1 = V1Log(data_dir)
    v1.queue("q", blob=args)
    if error is None:    # pickle stops at its STOP opcode: trailing bytes are ignored
        store = Store(data_dir)
        assert store.open().queues[0].arguments == {"a": 1}
        store.close()
        return
    with pytest.raises(StoreError, match=error):
        Store(data_dir).open()


@pytest.mark.parametrize("content", [b"\x00\xff\xfe garbage", b"mq-data-format two\n",
                                     b"", b"mq-data-format 0\n", b"mq-data-format \xd9\xa3\n",
                                     b"something else 2\n"])
def test_garbage_format_file_is_refused(data_dir: str, content: bytes) -> None:
    """A format file that mq did not write stops the start with a clear error; nothing in
    the directory is read or changed."""
    copy_fixture(data_dir)
    with open(os.path.join(data_dir, "format"), "wb") as fh:
        fh.write(content)
    with pytest.raises(StoreError, match="not an mq format file|which no mq ever wrote"):
        Store(data_dir).open()
    assert sorted(os.listdir(os.path.join(data_dir, "log"))) == \
        sorted(os.listdir(os.path.join(FIXTURE, "log")))


def test_segments_without_a_format_file_are_refused(data_dir: str) -> None:
    copy_fixture(data_dir)
    os.unlink(os.path.join(data_dir, "format"))
    with pytest.raises(StoreError, match="holds log segments but no format file"):
        Store(data_dir).open()
    assert not os.path.exists(os.path.join(data_dir, "format"))


def test_upgrade_waits_for_no_other_broker(data_dir: str) -> None:
    """The upgrade runs under the directory's lock: a running store holds it, and a second
    one is refused as for any directory in use."""
    copy_fixture(data_dir)
    store = Store(data_dir)
    store.open()
    with open(os.path.join(data_dir, "format"), "w") as fh:   # pretend: not upgraded yet
        fh.write("mq-data-format 1\n")
    with pytest.raises(StoreError, match="in use by another mq"):
        Store(data_dir).open()
    store.close()
