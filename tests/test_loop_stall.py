"""B-DUR-9: waiting for the disk never blocks other connections. A durable declare or a
tx.commit holds only its own connection until the fsync (the loop goes on); compaction reads
a segment in a worker thread and copies in slices; and the event loop's worst stall is
measured under a flat-out persistent publisher and acking consumer (compaction), a transient
backlog past the queue memory budget (paging) and a probe's round trips.

The stall is measured two ways: a probe client's basic.qos round trips every few ms (from
a process of its own, the load comes from other processes), and the broker's own lag timer
(mq/server.py: the worst lateness of a 10 ms timer, logged at shutdown). Run it alone for
the figure: `python tests/test_loop_stall.py [seconds] [segment-size] [budget] [backlog]`.
"""
from __future__ import annotations

import asyncio
import gc
import multiprocessing
import os
import re
import shutil
import struct
import sys
import tempfile
import time
from typing import Any, Callable, Iterator

import pytest
from pamqp import commands as spec
from pamqp import frame as pamqp_frame
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

sys.path.insert(0, os.path.dirname(__file__))
from rawamqp import RawClient  # noqa: E402

from mq._core.message import Message  # noqa: E402
from mq.store import Store  # noqa: E402
from mq.store import log as store_log  # noqa: E402
from mq.testing import BrokerProcess  # noqa: E402

STALL_TARGET = 0.050


# ---- holding one connection for the disk -----------------------------------------------

def qos_round_trip(client: RawClient) -> float:
    sent = time.perf_counter()
    client.send_method(1, spec.Basic.Qos(prefetch_count=10))
    client.expect("Basic.QosOk", timeout=10)
    return time.perf_counter() - sent


def test_a_durable_declare_waits_for_the_disk_without_stopping_the_others(
        fault_file: str) -> None:
    """B-DUR-9: with fsyncs taking 0.5 s, a durable queue.declare (and a tx.commit) is
    answered after the fsync, and the method sent right behind it on the same connection is
    answered after it (order kept), while another connection's round trips stay fast: the
    wait holds one connection, not the event loop."""
    broker = BrokerProcess().start()
    try:
        waiting, other = RawClient(broker.port), RawClient(broker.port)
        for client in (waiting, other):
            client.handshake()
            client.open_channel(1)
        with open(fault_file, "w") as fh:
            fh.write("slow")
        sent = time.perf_counter()
        waiting.send_method(1, spec.Queue.Declare(queue="slow-durable", durable=True))
        waiting.send_method(1, spec.Basic.Qos(prefetch_count=5))
        trips = []
        while time.perf_counter() - sent < 0.4:
            trips.append(qos_round_trip(other))
        waiting.expect("Queue.DeclareOk", timeout=10)
        declared = time.perf_counter() - sent
        waiting.expect("Basic.QosOk")
        assert declared >= 0.45  # it did wait for the slow fsync
        assert len(trips) > 20 and max(trips) < 0.2, max(trips)
        # A commit of persistent work waits the same way, alone.
        waiting.send_method(1, spec.Tx.Select())
        waiting.expect("Tx.SelectOk")
        waiting.send_method(1, spec.Basic.Publish(exchange="", routing_key="slow-durable"))
        waiting.send_content(1, b"persistent", spec.Basic.Properties(delivery_mode=2))
        sent = time.perf_counter()
        waiting.send_method(1, spec.Tx.Commit())
        trips = []
        while time.perf_counter() - sent < 0.4:
            trips.append(qos_round_trip(other))
        waiting.expect("Tx.CommitOk", timeout=10)
        assert time.perf_counter() - sent >= 0.45
        assert max(trips) < 0.2, max(trips)
        waiting.close()
        other.close()
    finally:
        broker.cleanup()


# ---- compaction, big deletes and purges in slices ---------------------------------------

async def _lag_until(done: Callable[[], bool], what: str, lags: list[float]) -> None:
    """Sleep 2 ms at a time until done() (failing with `what` after 30 s), recording how late
    each wake-up is."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not done():
        assert loop.time() - start < 30, what
        before = loop.time()
        await asyncio.sleep(0.002)
        lags.append(loop.time() - before - 0.002)


def _run_then_reopen(store: Store, main: Callable[[list[float]], Any]
                     ) -> tuple[dict[str, list[bytes]], set[int]]:
    """Start the store's flusher on a new loop and run main(lags) there; the loop must never
    have been late by STALL_TARGET. The collector is frozen first, as the broker does after
    recovery: the set-up is not the loop's work. Then the store is closed and reopened:
    returns the bodies of each queue it finds, and its segment numbers."""
    lags: list[float] = []

    async def run() -> None:
        store.start(asyncio.get_running_loop())
        await main(lags)

    gc.collect()
    gc.freeze()
    try:
        asyncio.run(run())
    finally:
        gc.unfreeze()
    assert len(lags) > 10 and max(lags) < STALL_TARGET, max(lags)
    store.close()
    again = Store(store.directory)
    queues = {q.name: [m.body for m, _, _ in q.messages] for q in again.open().queues}
    segments = set(again._index.segments)
    again.close()
    return queues, segments


def test_compaction_runs_in_slices_off_a_busy_loop() -> None:
    """B-DUR-9: a full 32 MiB segment of small records, mostly acked, is compacted while a
    timer measures the loop's lateness: the file is read in a worker thread and the records
    copied a few ms at a time (compaction.compact() on the loop took 0.3-2 s for such a
    segment). Afterwards the old segment is gone and a reopen finds exactly the live
    messages, in order."""
    directory = tempfile.mkdtemp(prefix="mq-compact-slices-")
    try:
        store = Store(directory)
        store.open()
        q = store.declare_queue("/", "q", False, {})
        ids = []
        while store._head.number == 1:
            msg = Message("ex", "rk", b"\x10\x00\x02", b"m%d" % len(ids) * 10)
            store.enqueue(q, msg)
            ids.append(msg.store_id)
        store.sync()
        keep = ids[::7]
        bodies = [b"m%d" % i * 10 for i in range(0, len(ids), 7)]

        async def main(lags: list[float]) -> None:
            kept = set(keep)
            for i in range(0, len(ids), 5000):  # acks as consumers would send them
                for mid in ids[i:i + 5000]:
                    if mid not in kept:
                        store.ack(q, mid)
                await asyncio.sleep(0)
            store.when_durable(lambda exc: None)
            await _lag_until(lambda: 1 not in store._index.segments,
                             "segment 1 was never compacted", lags)

        queues, segments = _run_then_reopen(store, main)
        assert queues == {"q": bodies}
        assert 1 not in segments
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_deleting_a_big_durable_queue_runs_in_slices() -> None:
    """B-DUR-9: deleting a durable queue that holds 400,000 messages (some delivered and
    unacked, some shared with another queue) does not hold the loop (letting them all go in
    one step took about 0.3 s; a delayed exchange holding 1M, 0.8 s). Meanwhile and after,
    the other queue keeps its messages: segments with nothing else live are removed, and a
    reopen finds only the other queue, with exactly its messages, in order."""
    directory = tempfile.mkdtemp(prefix="mq-delete-slices-")
    try:
        store = Store(directory)
        store.open()
        big = store.declare_queue("/", "big", False, {})
        other = store.declare_queue("/", "other", False, {})
        kept = []
        for i in range(400_000):
            msg = Message("ex", "rk", b"\x10\x00\x02", b"m%d" % i)
            store.enqueue(big, msg)
            if i % 1000 == 0:
                store.enqueue(other, msg)
                kept.append(msg.body)
            if i % 3 == 0:
                store.delivered(big, msg.store_id)
        store.sync()
        assert len(store._index.segments) >= 2

        async def main(lags: list[float]) -> None:
            asyncio.get_running_loop().call_later(0.02, store.delete_queue, "/", "big")
            await _lag_until(lambda: 1 not in store._index.segments,
                             "segment 1 was never freed", lags)

        queues, _ = _run_then_reopen(store, main)
        assert queues == {"other": kept}
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _chunks(ids: list[int]) -> Iterator[list[int]]:
    """ids as a queue's paged-out messages give them (a read chunk of references at a time)."""
    for i in range(0, len(ids), 35_000):
        yield ids[i:i + 35_000]


def test_a_big_purge_acks_in_slices_and_a_close_writes_the_rest() -> None:
    """B-DUR-9, B-DUR-4: the acks of a purge of 200,000 persistent messages are written a
    slice at a time while the loop stays free (all at once held it for about 0.5 s; a purge
    of 1M for 3 s), and a store closed before they are all written writes the rest first: a
    reopen finds both purged queues empty and the untouched one whole."""
    directory = tempfile.mkdtemp(prefix="mq-purge-slices-")
    try:
        store = Store(directory)
        store.open()
        queues = {name: store.declare_queue("/", name, False, {})
                  for name in ("big", "closed", "kept")}
        ids: dict[str, list[int]] = {name: [] for name in queues}
        for i in range(200_000):
            for name in ("big", "closed") if i % 40 else queues:
                msg = Message("ex", "rk", b"\x10\x00\x02", b"%s%d" % (name.encode(), i))
                store.enqueue(queues[name], msg)
                ids[name].append(msg.store_id)
        store.sync()

        async def main(lags: list[float]) -> None:
            purged: list[bool] = []
            asyncio.get_running_loop().call_later(
                0.02, lambda: (store.ack_all(queues["big"], _chunks(ids["big"])),
                               purged.append(True)))
            await _lag_until(lambda: purged and not store._acking,
                             "the acks were never all written", lags)
            store.ack_all(queues["closed"], _chunks(ids["closed"]))
            assert store._acking  # the rest is close()'s

        queues, _ = _run_then_reopen(store, main)
        assert queues == {"big": [], "closed": [],
                          "kept": [b"kept%d" % i for i in range(0, 200_000, 40)]}
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# ---- the worst stall under load ----------------------------------------------------------

def _frames(routing_key: str, body: bytes, count: int, persistent: bool) -> bytes:
    one = pamqp_frame.marshal(spec.Basic.Publish(exchange="", routing_key=routing_key), 1)
    props = spec.Basic.Properties(delivery_mode=2 if persistent else 1)
    one += pamqp_frame.marshal(ContentHeader(0, len(body), props), 1)
    one += pamqp_frame.marshal(ContentBody(body), 1)
    return one * count


def _chunk(queue: str, size: int, persistent: bool) -> bytes:
    """64 publishes; persistent ones send 1 in 16 to "kept" (never consumed), so that the
    segments the acks empty still hold live records: compaction copies them."""
    body = b"p" * size
    if not persistent:
        return _frames(queue, body, 64, False)
    return (_frames(queue, body, 15, True) + _frames("kept", body, 1, True)) * 4


def _publisher(port: int, queue: str, size: int, persistent: bool, until: float,
               limit: int, counter: Any) -> None:
    """Publishes flat out (no confirms) until `until` or `limit` messages; the broker's
    credit flow decides the pace. At a lower CPU priority than the broker and the probe,
    so that the load does not take the broker's CPU on a small machine."""
    os.nice(10)
    client = RawClient(port, timeout=60)
    client.handshake()
    client.open_channel(1)
    chunk = _chunk(queue, size, persistent)
    sent = 0
    while time.time() < until and (not limit or sent < limit):
        client.send(chunk)
        sent += 64
    counter.value = sent
    client.close()


def _consumer(port: int, queue: str, start: float, until: float, counter: Any) -> None:
    """Consumes with manual acks (prefetch 500, an ack for every 100) from `start`, at a
    lower CPU priority (as the publishers)."""
    os.nice(10)
    time.sleep(max(0.0, start - time.time()))
    client = RawClient(port, timeout=60)
    client.handshake()
    client.open_channel(1)
    client.send_method(1, spec.Basic.Qos(prefetch_count=500))
    client.expect("Basic.QosOk")
    client.send_method(1, spec.Basic.Consume(queue=queue, consumer_tag="c"))
    client.expect("Basic.ConsumeOk")
    count = 0
    while time.time() < until:
        try:
            ftype, _, payload = client.recv_raw(timeout=1)
        except TimeoutError:
            continue
        if ftype == 1 and payload[:4] == b"\x00\x3c\x00\x3c":  # basic.deliver
            tag = struct.unpack_from(">Q", payload, 5 + payload[4])[0]
            count += 1
            if count % 100 == 0:
                client.send_method(1, spec.Basic.Ack(delivery_tag=tag, multiple=True))
    counter.value = count
    client.close()


def measure_stall(seconds: float, segment_size: int, budget: int, backlog: int = 40_000) -> dict:
    """Run the load for `seconds` against a broker of its own (with `backlog` transient 4 KB
    messages to page out and in, 0: none); the probe's round trips and the broker's own
    loop lag, in seconds."""
    broker = BrokerProcess(args=("--store-segment-size", str(segment_size),
                                 "--queue-memory-budget", str(budget))).start()
    procs = []
    try:
        setup = RawClient(broker.port)
        setup.handshake()
        setup.open_channel(1)
        for name in ("work", "kept"):
            setup.send_method(1, spec.Queue.Declare(queue=name, durable=True))
            setup.expect("Queue.DeclareOk")
        setup.send_method(1, spec.Queue.Declare(queue="backlog", durable=False))
        setup.expect("Queue.DeclareOk")
        setup.close()
        now = time.time()
        until = now + seconds
        ctx = multiprocessing.get_context("fork")
        counts = {name: ctx.Value("q", 0) for name in
                  ("persistent_sent", "persistent_consumed", "backlog_sent", "backlog_consumed")}
        procs = [
            ctx.Process(target=_publisher, args=(broker.port, "work", 1024, True, until, 0,
                                                 counts["persistent_sent"])),
            ctx.Process(target=_consumer, args=(broker.port, "work", now, until,
                                                counts["persistent_consumed"])),
        ]
        if backlog:
            # 4 KB transient messages, far past the budget: paged out, then read back by a
            # consumer that starts halfway.
            procs += [
                ctx.Process(target=_publisher, args=(broker.port, "backlog", 4096, False,
                                                     until, backlog, counts["backlog_sent"])),
                ctx.Process(target=_consumer, args=(broker.port, "backlog",
                                                    now + seconds / 2, until,
                                                    counts["backlog_consumed"])),
            ]
        for proc in procs:
            proc.start()
        probe = RawClient(broker.port, timeout=30)
        probe.handshake()
        probe.open_channel(1)
        trips = []
        while time.time() < until:
            trips.append(qos_round_trip(probe))
            time.sleep(0.005)
        probe.close()
        for proc in procs:
            proc.join(30)
        broker.stop()
        lag = re.findall(r"event loop lag worst_ms=([\d.]+)", broker.log())
        trips.sort()
        return {"probes": len(trips), "probe_max": trips[-1],
                "probe_p99": trips[int(len(trips) * 0.99)],
                "probe_p50": trips[len(trips) // 2],
                "loop_lag_max": float(lag[-1]) / 1000 if lag else None,
                **{name: value.value for name, value in counts.items()}}
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
        broker.cleanup()


def test_worst_stall_under_compaction_and_paging() -> None:
    """B-DUR-9, B-FLOW-4: 10 s of flat-out persistent publishing with an acking consumer (4
    MiB segments; 1 in 16 messages kept in another queue, so that compaction copies) and a
    160 MB transient backlog past a 4 MB queue budget (paged out, then in): the probe's
    worst basic.qos round trip and the broker's worst loop lag stay bounded. A guard
    against gross regressions (a blocking wait or a whole-segment compaction on the loop
    stalls for 0.2-2 s) with a bound of 250 ms, not the 50 ms target: the machine that runs
    the tests is shared, and other processes take the CPU from the broker (the soak test
    holds the target)."""
    result = measure_stall(10, 4 * 1024 * 1024, 4 * 1024 * 1024)
    print(result)
    assert result["probes"] > 200
    assert result["loop_lag_max"] is not None and result["loop_lag_max"] < 0.25, result
    assert result["probe_max"] < 0.25, result


@pytest.mark.soak
def test_worst_stall_soak() -> None:
    """The same for 60 s with 32 MiB segments (the default: compaction of big segments),
    against the 50 ms target. Measured on a 2-core machine: worst probe round trip 13 ms,
    worst loop lag 14 ms, 3.3M persistent messages consumed (before B-DUR-9: 190-200 ms).
    Stalls this load does not show remain outside the store: a consumer far behind a
    persistent queue makes it page references out, and paging a 1 MB chunk of them back
    in reads up to ~40k stored messages in one turn (mq/store/paging.py take, ~135 ms);
    with a big queue memory budget a gen-2 garbage collection walks every message in
    memory (Message and Entry objects are GC-tracked: ~100 ms for 50k)."""
    result = measure_stall(60, 32 * 1024 * 1024, 4 * 1024 * 1024)
    print(result)
    assert result["loop_lag_max"] < STALL_TARGET and result["probe_max"] < STALL_TARGET, result


if __name__ == "__main__":
    args = sys.argv[1:]
    print(measure_stall(float(args[0]) if args else 30,
                        int(args[1]) if len(args) > 1 else store_log.DEFAULT_SEGMENT_SIZE,
                        int(args[2]) if len(args) > 2 else 4 * 1024 * 1024,
                        int(args[3]) if len(args) > 3 else 40_000))
