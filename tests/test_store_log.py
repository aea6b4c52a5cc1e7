"""Unit tests of the message store (mq/store): round trip, recovery, torn tails and damaged
records, compaction, format checks and group commit. No broker here: the store alone, on a temporary directory."""
from __future__ import annotations

import asyncio
import gc
import os
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from mq._core import records as R
from mq._core.message import Message
from mq.store import Store, StoreError


def persistent(body: bytes, priority: int | None = None, rk: str = "rk") -> Message:
    """A delivery_mode=2 message (optionally with a priority) as a publish would make it."""
    if priority is None:
        props = b"\x10\x00\x02"
    else:
        props = b"\x18\x00\x02" + bytes((priority,))
    return Message("ex", rk, props, body)


def reopen(store: Store, **kw) -> tuple[Store, object]:
    store.close()
    again = Store(store.directory, **kw)
    return again, again.open()


def bodies(recovered, name: str) -> list[bytes]:
    (queue,) = [q for q in recovered.queues if q.name == name]
    return [m.body for m, _, _ in queue.messages]


def test_round_trip_topology_and_messages(data_dir: str) -> None:
    """B-DUR-1, B-DUR-2: topology, messages (order, properties, expiry) survive a reopen."""
    store = Store(data_dir)
    assert store.open().queues == []
    store.declare_exchange("/", "logs", "topic", False, False, {"alternate-exchange": "ae"})
    store.declare_exchange("/", "ae", "fanout", True, True, {})
    qa = store.declare_queue("/", "a", False, {"x-max-priority": 5})
    qb = store.declare_queue("/", "b", False, {})
    store.bind("/", "logs", False, "a", "#", {})
    store.bind("/", "logs", True, "ae", "k", {"x-match": "any"})
    shared = persistent(b"to both", priority=3)
    store.enqueue(qa, shared, 1234.5)
    store.enqueue(qb, shared)
    for i in range(5):
        store.enqueue(qa, persistent(b"m%d" % i))
    store.sync()
    # The shared message is written once.
    with open(os.path.join(data_dir, "log", "00000001.seg"), "rb") as fh:
        assert fh.read().count(b"to both") == 1

    store, rec = reopen(store)
    assert sorted(rec.exchanges) == [("/", "ae", "fanout", True, True, {}),
                                     ("/", "logs", "topic", False, False,
                                      {"alternate-exchange": "ae"})]
    assert sorted(rec.bindings) == [("/", "logs", False, "a", "#", {}),
                                    ("/", "logs", True, "ae", "k", {"x-match": "any"})]
    (a,) = [q for q in rec.queues if q.name == "a"]
    assert a.arguments == {"x-max-priority": 5}
    assert [m.body for m, _, _ in a.messages] == [b"to both"] + [b"m%d" % i for i in range(5)]
    first, expires, redelivered = a.messages[0]
    assert (first.priority, first.delivery_mode, first.exchange, first.routing_key) == (3, 2, "ex", "rk")
    assert expires == 1234.5 and not redelivered
    assert bodies(rec, "b") == [b"to both"]
    (b,) = [q for q in rec.queues if q.name == "b"]
    assert b.stored[0][0] == a.stored[0][0] == first.store_id  # one record for both queues
    store.close()


def test_acks_deletes_and_redelivered(data_dir: str) -> None:
    """B-DUR-2, B-DUR-4: acked messages stay gone; delivered ones come back redelivered;
    deleted queues, exchanges and bindings stay deleted."""
    store = Store(data_dir)
    store.open()
    q = store.declare_queue("/", "q", False, {})
    gone = store.declare_queue("/", "gone", False, {})
    store.declare_exchange("/", "x", "direct", False, False, {})
    store.bind("/", "x", False, "q", "k", {})
    msgs = [persistent(b"%d" % i) for i in range(6)]
    for m in msgs:
        store.enqueue(q, m)
    store.enqueue(gone, persistent(b"lost with its queue"))
    store.ack(q, msgs[0].store_id)
    store.ack(q, msgs[3].store_id)
    store.delivered(q, msgs[1].store_id)
    store.delete_queue("/", "gone")
    store.unbind("/", "x", False, "q", "k", {})
    store.delete_exchange("/", "x")
    store.sync()
    store, rec = reopen(store)
    assert [q.name for q in rec.queues] == ["q"]
    assert rec.exchanges == [] and rec.bindings == []
    (queue,) = rec.queues
    assert [(m.body, red) for m, _, red in queue.messages] == [
        (b"1", True), (b"2", False), (b"4", False), (b"5", False)]
    # Acks after recovery work on the recovered ids.
    for m, _, _ in queue.messages:
        store.ack(queue.store_qid, m.store_id)
    store.sync()
    store, rec = reopen(store)
    assert rec.queues[0].messages == []
    store.close()


def test_redeclared_names_get_the_latest_definition(data_dir: str) -> None:
    """B-DUR-1: delete then redeclare with other arguments: the latest one is recovered."""
    store = Store(data_dir)
    store.open()
    old = store.declare_queue("/", "q", False, {"x-max-priority": 2})
    store.enqueue(old, persistent(b"old"))
    store.delete_queue("/", "q")
    new = store.declare_queue("/", "q", True, {})
    store.enqueue(new, persistent(b"new"))
    store.sync()
    store, rec = reopen(store)
    (queue,) = rec.queues
    assert (queue.auto_delete, queue.arguments, [m.body for m, _, _ in queue.messages]) == \
        (True, {}, [b"new"])
    store.close()


def _damage_point(data_dir: str, count: int, where: float) -> tuple[list, str, int]:
    """_write_numbered's records, the segment's path, and an offset in it at `where` (0..1)."""
    records = _write_numbered(data_dir, count)
    path = os.path.join(data_dir, "log", "00000001.seg")
    size = os.path.getsize(path)
    return records, path, min(int(where * size), size - 1)


def _write_numbered(data_dir: str, count: int) -> list[tuple[int, int, int]]:
    """count messages in queue 'q', in one segment; returns its records as (offset, size,
    number of the message it belongs to: -1 for the queue record)."""
    store = Store(data_dir)
    store.open()
    q = store.declare_queue("/", "q", False, {})
    for i in range(count):
        store.enqueue(q, persistent(b"message %d" % i + b"." * (i * 7 % 50)))
    store.sync()
    store.close()
    with open(os.path.join(data_dir, "log", "00000001.seg"), "rb") as fh:
        entries, damaged = R.scan(fh.read())
    assert damaged == []
    # Records go queue, then MSG and ENQ of message 0, of message 1, ...
    return [(off, size, (k - 1) // 2) for k, (off, size, _) in enumerate(entries)]


def _numbers(rec) -> list[bytes]:
    return [m.body.split(b".")[0] for q in rec.queues for m, _, _ in q.messages]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(count=st.integers(1, 40), where=st.floats(0, 1))
def test_torn_tail_keeps_everything_before_the_damage(count: int, where: float) -> None:
    """B-DUR-6: truncating the last segment at any offset (a torn write): the store opens,
    cuts the tail at the damage and keeps every message whose records lie before it."""
    data_dir = tempfile.mkdtemp(prefix="mq-store-torn-")
    try:
        records, path, damage = _damage_point(data_dir, count, where)
        os.truncate(path, damage)
        store = Store(data_dir)
        rec = store.open()
        expected = [b"message %d" % i for off, size, i in records[2::2] if off + size <= damage]
        assert _numbers(rec) == expected
        # A cut exactly between records looks like a shorter log; anything else is reported.
        boundaries = {0} | {off + size for off, size, _ in records}
        assert (rec.damaged is None) == (damage in boundaries)
        assert os.path.getsize(path) <= damage
        assert not os.path.exists(os.path.join(data_dir, "damaged"))  # a tail is just cut
        # The store keeps working after the cut.
        if rec.queues:
            store.enqueue(rec.queues[0].store_qid, persistent(b"after"))
            store.sync()
            store, rec2 = reopen(store)
            assert _numbers(rec2) == expected + [b"after"]
            assert rec2.damaged is None
        store.close()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(count=st.integers(1, 40), where=st.floats(0, 1), bit=st.integers(0, 7))
def test_a_flipped_bit_loses_only_its_record(count: int, where: float, bit: int) -> None:
    """B-DUR-6, B-DUR-7: a bit flipped anywhere in the (last) segment loses the one record
    holding it: the scanner reads on from the next record, so every message but the one
    whose MSG or ENQ record was hit comes back (none if the queue's record was hit). Only a
    bad last record is a tail, cut; anything else is kept aside and the segment written
    again without it; the next start finds it clean."""
    data_dir = tempfile.mkdtemp(prefix="mq-store-flip-")
    try:
        records, path, damage = _damage_point(data_dir, count, where)
        size = os.path.getsize(path)
        with open(path, "r+b") as fh:
            fh.seek(damage)
            byte = fh.read(1)[0]
            fh.seek(damage)
            fh.write(bytes((byte ^ (1 << bit),)))
        (hit,) = [r for r in records if r[0] <= damage < r[0] + r[1]]
        store = Store(data_dir)
        rec = store.open()
        expected = [] if hit[2] < 0 else \
            [b"message %d" % i for i in range(count) if i != hit[2]]
        assert _numbers(rec) == expected
        assert rec.damaged is not None and f"at offset {hit[0]};" in rec.damaged
        assert os.path.getsize(path) == size - hit[1]
        aside = os.listdir(os.path.join(data_dir, "damaged")) \
            if os.path.exists(os.path.join(data_dir, "damaged")) else []
        assert len(aside) == (0 if hit is records[-1] else 1)
        store.close()
        store = Store(data_dir)
        rec = store.open()
        assert rec.damaged is None and _numbers(rec) == expected
        store.close()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def test_damage_in_an_earlier_segment_keeps_the_later_ones(data_dir: str, caplog) -> None:
    """B-DUR-7: a bad record in an older segment costs that record only: the rest of the
    segment and the later segments are kept, and the log says where (tests/test_store_damage.py
    has more)."""
    store = Store(data_dir, segment_size=2048)
    store.open()
    q = store.declare_queue("/", "q", False, {})
    for i in range(100):
        store.enqueue(q, persistent(b"%03d" % i + b"x" * 60))
    store.sync()
    store.close()
    names = sorted(os.listdir(os.path.join(data_dir, "log")))
    assert len(names) > 3
    second = os.path.join(data_dir, "log", names[1])
    with open(second, "rb") as fh:
        entries, _ = R.scan(fh.read())
    (off, size, f), = [e for e in entries if e[0] <= 100 < e[0] + e[1]]
    with open(second, "r+b") as fh:
        fh.seek(100)
        fh.write(b"\xff\xff")
    store = Store(data_dir, segment_size=2048)
    rec = store.open()
    assert f"damaged records in {second} at offset {off}" in caplog.text
    assert "removing segment" not in caplog.text
    got = [m.body[:3] for m, _, _ in rec.queues[0].messages]
    assert f[0] in (R.MSG, R.ENQ)
    lost = (f[1] if f[0] == R.MSG else f[2]) - 2  # ids: the queue's is 1, message i's i + 2
    assert got == [b"%03d" % i for i in range(100) if i != lost]
    assert sorted(os.listdir(os.path.join(data_dir, "log"))) == names
    store.close()


def test_drained_queue_returns_to_near_zero_disk(data_dir: str) -> None:
    """B-DUR-5: once everything is acked, segments are removed."""
    store = Store(data_dir, segment_size=64 * 1024)
    store.open()
    q = store.declare_queue("/", "q", False, {})
    msgs = [persistent(b"x" * 1000) for _ in range(2000)]
    for m in msgs:
        store.enqueue(q, m)
    store.sync()
    assert store.disk_usage() > 2_000_000
    for m in msgs:
        store.ack(q, m.store_id)
    store.sync()
    store.sync()  # the unlinks queued by the first round
    on_disk = sum(os.path.getsize(os.path.join(data_dir, "log", n))
                  for n in os.listdir(os.path.join(data_dir, "log")))
    assert on_disk < 70 * 1024
    store, rec = reopen(store, segment_size=64 * 1024)
    assert [q.name for q in rec.queues] == ["q"] and rec.queues[0].messages == []
    store.close()


def test_compaction_keeps_live_records_in_order(data_dir: str) -> None:
    """B-DUR-5, B-DUR-2: mostly-dead segments are compacted; survivors keep their order,
    redelivered flag, and acks of compacted-away records stay effective."""
    store = Store(data_dir, segment_size=16 * 1024)
    store.open()
    q = store.declare_queue("/", "q", False, {})
    other = store.declare_queue("/", "other", False, {})
    msgs = [persistent(b"%04d" % i + b"y" * 200) for i in range(1000)]
    for m in msgs:
        store.enqueue(q, m)
    keep = msgs[::50]
    for m in keep[::2]:
        store.delivered(q, m.store_id)
    for m in msgs:
        if m not in keep:
            store.ack(q, m.store_id)
    for i in range(300):  # more traffic so that everything above is sealed and compacted
        m = persistent(b"o" * 200)
        store.enqueue(other, m)
        store.ack(other, m.store_id)
    store.sync()
    store.sync()
    assert store.disk_usage() < 120 * 1024
    store, rec = reopen(store, segment_size=16 * 1024)
    (queue,) = [x for x in rec.queues if x.name == "q"]
    assert [(m.body[:4], red) for m, _, red in queue.messages] == \
        [(m.body[:4], i % 2 == 0) for i, m in enumerate(keep)]
    store.close()


def test_newer_format_is_refused(data_dir: str) -> None:
    """The data directory's format version is checked: a newer one is refused clearly."""
    Store(data_dir).open()
    with open(os.path.join(data_dir, "format")) as fh:
        assert fh.read() == "mq-data-format 2\n"
    with open(os.path.join(data_dir, "format"), "w") as fh:
        fh.write("mq-data-format 3\n")
    with pytest.raises(StoreError, match="has format 3, written by a newer mq"):
        Store(data_dir).open()


def test_directory_in_use_is_refused(data_dir: str) -> None:
    store = Store(data_dir)
    store.open()
    with pytest.raises(StoreError, match="in use by another mq"):
        Store(data_dir).open()
    store.close()


def test_group_commit_shares_fsyncs_and_reports_on_the_loop(data_dir: str) -> None:
    """B-PUB-6: the flusher reports durability on the event loop; many appends share one
    fsync."""
    store = Store(data_dir)
    store.open()
    q = store.declare_queue("/", "q", False, {})
    reports: list[int] = []

    class Waiter:
        def store_durable(self, seq: int) -> bool:
            reports.append(seq)
            return True

    async def main() -> None:
        store.start(asyncio.get_running_loop())
        store.waiters.add(Waiter())
        for _ in range(20):
            for _ in range(500):
                store.enqueue(q, persistent(b"z" * 100))
            await asyncio.sleep(0)
        while store.durable_seq < store.seq:
            await asyncio.sleep(0.01)

    asyncio.run(main())
    assert reports == sorted(reports) and reports[-1] == store.seq
    assert len(reports) < 1000  # 10 000 records, far fewer fsyncs
    store, rec = reopen(store)
    assert len(rec.queues[0].messages) == 10_000
    store.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(st.tuples(st.sampled_from(["pub", "pub", "pub", "ack", "ack", "dlv",
                                               "delq", "sync", "reopen"]),
                              st.integers(0, 2), st.integers(0, 10_000)),
                    min_size=1, max_size=300))
def test_random_operations_match_a_model(ops: list) -> None:
    """B-DUR-2, B-DUR-4, B-DUR-5: any sequence of publishes, acks, deliveries, queue deletes,
    compactions (tiny segments) and reopenings recovers exactly what a simple model says."""
    data_dir = tempfile.mkdtemp(prefix="mq-store-model-")
    size = 1024
    try:
        store = Store(data_dir, segment_size=size)
        store.open()
        model: dict[str, list[list]] = {}   # queue name -> [[body, redelivered]] in order
        qids: dict[str, int] = {}
        ids: dict[bytes, int] = {}
        n = 0
        for op, q, pick in ops:
            name = f"q{q}"
            if name not in qids:
                qids[name] = store.declare_queue("/", name, False, {})
                model[name] = []
            qid, entries = qids[name], model[name]
            if op == "pub":
                n += 1
                msg = persistent(b"%d" % n + b"-" * (pick % 300))
                store.enqueue(qid, msg)
                ids[msg.body] = msg.store_id
                entries.append([msg.body, False])
            elif op in ("ack", "dlv") and entries:
                entry = entries[pick % len(entries)]
                if op == "ack":
                    store.ack(qid, ids[entry[0]])
                    entries.remove(entry)
                else:
                    store.delivered(qid, ids[entry[0]])
                    entry[1] = True
            elif op == "delq":
                store.delete_queue("/", name)
                del qids[name], model[name]
            elif op == "sync":
                store.sync()
            elif op == "reopen":
                store.sync()
                store, rec = reopen(store, segment_size=size)
                qids = {rq.name: rq.store_qid for rq in rec.queues}
                ids.update({m.body: m.store_id for rq in rec.queues for m, _, _ in rq.messages})
                assert {rq.name: [[m.body, red] for m, _, red in rq.messages]
                        for rq in rec.queues} == model
        store.sync()
        store.sync()
        store, rec = reopen(store, segment_size=size)
        assert {rq.name: [[m.body, red] for m, _, red in rq.messages]
                for rq in rec.queues} == model
        live = sum(len(body) + 100 for entries in model.values() for body, _ in entries)
        assert store.disk_usage() <= 4 * live + 4 * size
        store.close()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def test_recovery_leaves_bodies_on_disk(data_dir: str) -> None:
    """B-DUR-2: recovery hands each queue its messages as columns (store ids, expiries,
    redelivered flags, priorities, body sizes) without reading bodies; read_message() gives
    each its body back, also after compaction moved it."""
    store = Store(data_dir, segment_size=4096)
    store.open()
    q = store.declare_queue("/", "q", False, {})
    msgs = [persistent(b"%03d" % i + b"z" * 300, priority=i % 3) for i in range(40)]
    for i, m in enumerate(msgs):
        store.enqueue(q, m, expires_at=float(i) if i % 2 else 0.0)
    for m in msgs[:35]:
        store.ack(q, m.store_id)   # the survivors' segments get compacted
    store.sync()
    store.sync()
    store, rec = reopen(store, segment_size=4096)
    ids, expiries, redelivered, priorities, sizes = rec.queues[0].stored
    assert list(priorities) == [i % 3 for i in range(35, 40)]
    assert list(sizes) == [303] * 5
    assert list(expiries) == [float(i) if i % 2 else 0.0 for i in range(35, 40)]
    assert not any(redelivered)
    assert [store.read_message(mid).body for mid in ids] == [m.body for m in msgs[35:]]
    store.close()


def test_live_tombstones_are_not_walked_by_the_collector(data_dir: str) -> None:
    """B-DUR-9, B-DUR-4: 50,000 acks of messages in older segments leave 50,000 live
    tombstones, which the cyclic collector does not track (its full passes walked each, two
    objects a tombstone: with millions of acks out of order they stalled the loop for tens of
    ms); the acked messages stay gone after a reopen, the others stay."""
    store = Store(data_dir, 64 * 1024)
    store.open()
    q = store.declare_queue("/", "q", False, {})
    ids = []
    for i in range(100_000):
        msg = persistent(b"m%d" % i)
        store.enqueue(q, msg)
        ids.append(msg.store_id)
    gc.collect()
    tracked = len(gc.get_objects())
    for mid in ids[::2]:
        store.ack(q, mid)
    tombs = sum(len(seg.tombs) for seg in store._index.segments.values())
    assert tombs > 45_000
    assert len(gc.get_objects()) - tracked < 1_000
    store.sync()
    store.close()
    again = Store(data_dir, 64 * 1024)
    (queue,) = again.open().queues
    assert [m.body for m, _, _ in queue.messages] == [b"m%d" % i for i in range(1, 100_000, 2)]
    again.close()
