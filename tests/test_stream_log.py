"""A stream's log on its own (mq.store.streams, B-STREAM-2, B-STREAM-4, B-STREAM-5): records
appended through a real Store (flushed synchronously here), read back by offset across
segment files, retention of whole segments from the head, and recovery after a torn tail."""
from __future__ import annotations

import os

import pytest
from hypothesis import given, settings, strategies as st

from mq.store import Store
from mq.store.streams import Cursor, StreamLog


def _open(store: Store, directory: str, segment_bytes: int = 1000,
          max_bytes: int | None = None) -> StreamLog:
    log = StreamLog(store, directory, segment_bytes, max_bytes, None)
    log.open()
    store.watch(log)
    return log


def _append(store: Store, log: StreamLog, bodies: list[bytes]) -> None:
    for body in bodies:
        log.append("", "s", b"\x00\x00", body)
    store.sync()  # durable: committed


def _read(log: StreamLog, offset: int) -> list[tuple[int, bytes]]:
    cursor = Cursor(log, offset)
    out = []
    while (record := cursor.next()) is not None:
        out.append((record.offset, record.body))
    return out


@pytest.fixture
def store(data_dir: str):
    s = Store(data_dir)
    s.open()
    yield s
    s.close()


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(0, 700), min_size=1, max_size=60),
       start=st.integers(-5, 70))
def test_read_from_any_offset_across_segments(tmp_path_factory, sizes, start) -> None:
    """B-STREAM-2: whatever the segment boundaries, a reader from any offset gets every
    record from there on, in order, with consecutive offsets; before the first it starts at
    the first, past the end it gets nothing yet."""
    directory = str(tmp_path_factory.mktemp("stream"))
    store = Store(directory)
    store.open()
    try:
        log = _open(store, os.path.join(directory, "streams", "1"), segment_bytes=900)
        bodies = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
        _append(store, log, bodies)
        got = _read(log, start)
        first = max(start, 0)
        assert got == [(i, bodies[i]) for i in range(first, len(bodies))]
    finally:
        store.close()


def test_uncommitted_records_are_not_read(store: Store, data_dir: str) -> None:
    """B-STREAM-2: a reader sees a record only once it is durable."""
    log = _open(store, os.path.join(data_dir, "streams", "1"))
    log.append("", "s", b"\x00\x00", b"a")
    assert _read(log, 0) == []
    store.sync()
    assert _read(log, 0) == [(0, b"a")]


def test_a_reader_goes_on_as_records_arrive(store: Store, data_dir: str) -> None:
    """B-STREAM-2: a cursor at the end picks up records appended later, across a new
    segment."""
    log = _open(store, os.path.join(data_dir, "streams", "1"), segment_bytes=300)
    cursor = Cursor(log, 0)
    seen = []
    for round_ in range(5):
        _append(store, log, [b"r%d-%d" % (round_, i) + b"x" * 80 for i in range(3)])
        while (record := cursor.next()) is not None:
            seen.append(record.offset)
    assert seen == list(range(15))
    assert len(log.segments) > 1


def test_retention_by_bytes_removes_whole_segments_from_the_head(store: Store,
                                                               data_dir: str) -> None:
    """B-STREAM-4: past x-max-length-bytes, the oldest whole segments go; a reader from
    "first" starts at the new first offset; the files are gone from disk."""
    directory = os.path.join(data_dir, "streams", "1")
    log = _open(store, directory, segment_bytes=1000, max_bytes=3000)
    _append(store, log, [b"x" * 200 for _ in range(40)])
    store.sync()  # the removals are done by the flusher
    assert log.first_offset > 0
    assert log.size <= 3000 + 1000
    got = _read(log, 0)
    assert got[0][0] == log.first_offset and got[-1][0] == 39
    files = sorted(os.listdir(directory))
    assert files[0] == f"{log.first_offset:020d}.seg"


def test_reopen_finds_the_end_and_cuts_a_torn_tail(data_dir: str) -> None:
    """B-STREAM-2: after a restart the next offset follows the last whole record; a torn
    last record is cut."""
    store = Store(data_dir)
    store.open()
    directory = os.path.join(data_dir, "streams", "1")
    log = _open(store, directory, segment_bytes=10_000)
    _append(store, log, [b"m%d" % i for i in range(10)])
    store.close()
    path = os.path.join(directory, f"{0:020d}.seg")
    with open(path, "ab") as fh:
        fh.write(b"\x00\x00\x00\x40torn")
    store = Store(data_dir)
    store.open()
    try:
        log = _open(store, directory, segment_bytes=10_000)
        assert log.next_offset == 10
        assert [b for _, b in _read(log, 0)] == [b"m%d" % i for i in range(10)]
        _append(store, log, [b"after"])
        assert _read(log, 10) == [(10, b"after")]
    finally:
        store.close()


def test_a_deleted_streams_directory_is_gone_after_a_restart(mq_fresh_broker) -> None:
    """B-STREAM-4: deleting a stream removes its files; what a crash left of them is
    removed at the next start."""
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(mq_fresh_broker.url))
    ch = conn.channel()
    ch.queue_declare("gone", durable=True, arguments={"x-queue-type": "stream"})
    ch.queue_declare("kept", durable=True, arguments={"x-queue-type": "stream"})
    ch.confirm_delivery()
    ch.basic_publish("", "gone", b"x")
    ch.basic_publish("", "kept", b"y")
    ch.queue_delete("gone")
    conn.close()
    mq_fresh_broker.restart(kill=True)
    streams = os.path.join(mq_fresh_broker.data_dir, "streams")
    assert len(os.listdir(streams)) == 1
    conn = pika.BlockingConnection(pika.URLParameters(mq_fresh_broker.url))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=5)
    got = []
    ch.basic_consume("kept", lambda c, m, p, b: got.append(b),
                     arguments={"x-stream-offset": "first"})
    conn.process_data_events(1)
    conn.close()
    assert got == [b"y"]
