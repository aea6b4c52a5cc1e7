"""Damage in the store's log (B-DUR-6, B-DUR-7): real segment files, real restarts of Store,
and one real broker checked with pika.

Only a torn tail (bad bytes at the very end of the last segment) is cut; damage anywhere else
costs the damaged records and nothing more: every other record and segment is kept, the log
names segment, offset and size, the damaged file is kept aside under damaged/, and what
recovery changes on disk is fsynced.
"""
from __future__ import annotations

import logging
import os
from typing import Iterator

import pika
import pytest

from mq._core import records as R
from mq._core.message import Message
from mq.store import Store, StoreError
from mq.store import recovery
from mq.testing import run_broker

PROPS = b"\x10\x00\x02"   # delivery_mode=2


@pytest.fixture(autouse=True)
def store_log(caplog) -> Iterator:
    caplog.set_level(logging.INFO, logger="mq.store")
    yield caplog


def body(i: int) -> bytes:
    return b"m%05d|" % i + b"x" * 1000   # ~1 KB, as in the report


def fill(data_dir: str, count: int, segment_size: int) -> dict[int, int]:
    """count persistent messages in queue 'q'; returns message number -> store id."""
    store = Store(data_dir, segment_size=segment_size)
    store.open()
    q = store.declare_queue("/", "q", False, {"x-max-priority": 3})
    ids = {}
    for i in range(count):
        msg = Message("", "q", PROPS, body(i))
        store.enqueue(q, msg)
        ids[i] = msg.store_id
    store.sync()
    store.close()
    return ids


def segments(data_dir: str) -> list[str]:
    log_dir = os.path.join(data_dir, "log")
    return [os.path.join(log_dir, n) for n in sorted(os.listdir(log_dir))]


def records_of(path: str) -> list[tuple[int, int, tuple]]:
    with open(path, "rb") as fh:
        found, damaged = R.scan(fh.read(), 0, False)
    assert damaged == []
    return found


def hit_by(path: str, start: int, length: int) -> list[tuple[int, int, tuple]]:
    """The records of path that overlap bytes [start, start + length)."""
    return [r for r in records_of(path) if r[0] < start + length and start < r[0] + r[1]]


def flip(path: str, offset: int, length: int = 4) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        data = fh.read(length)
        fh.seek(offset)
        fh.write(bytes(b ^ 0xFF for b in data))


def lost_numbers(hit: list, ids: dict[int, int]) -> set[int]:
    """Message numbers whose MSG or ENQ record is among hit."""
    by_id = {v: k for k, v in ids.items()}
    return {by_id[f[1] if f[0] == R.MSG else f[2]] for _, _, f in hit
            if f[0] in (R.MSG, R.ENQ)}


def recovered_numbers(rec) -> list[int]:
    (queue,) = rec.queues
    return [int(m.body[1:6]) for m, _, _ in queue.messages]


def test_mid_log_damage_loses_only_the_damaged_records(data_dir: str, store_log) -> None:
    """B-DUR-7, the reported case scaled down: thousands of confirmed 1 KB messages over
    several segments, 4 bytes flipped in the middle of segment 2. Every message but the one
    whose record was hit comes back, in order; all segments are kept; the log names the
    segment, offset and size; the damaged file is kept aside; the next start is clean."""
    ids = fill(data_dir, 3000, 256 * 1024)
    names = segments(data_dir)
    assert len(names) >= 4
    second = names[1]
    size = os.path.getsize(second)
    middle = size // 2
    hit = hit_by(second, middle, 4)
    with open(second, "rb") as fh:
        original = fh.read()
    flip(second, middle)
    with open(second, "rb") as fh:
        damaged_bytes = fh.read()

    store = Store(data_dir, segment_size=256 * 1024)
    rec = store.open()
    lost = lost_numbers(hit, ids)
    assert len(lost) == 1
    assert recovered_numbers(rec) == [i for i in range(3000) if i not in lost]
    assert segments(data_dir) == names      # nothing after the damage removed
    (off, length) = (hit[0][0], sum(r[1] for r in hit))
    assert f"damaged records in {second} at offset {off}: checksum mismatch; dropped " \
           f"{length} bytes (1 record)" in store_log.text
    assert "1 queued messages lost" in store_log.text
    assert "damaged tail" not in store_log.text
    (aside,) = os.listdir(os.path.join(data_dir, "damaged"))
    assert aside.startswith(os.path.basename(second) + ".")
    with open(os.path.join(data_dir, "damaged", aside), "rb") as fh:
        assert fh.read() == damaged_bytes
    # The segment was written again without the damaged record: the rest byte for byte.
    with open(second, "rb") as fh:
        assert fh.read() == original[:off] + original[off + length:]
    assert rec.damaged is not None and str(off) in rec.damaged

    # The store works on, and the next start finds nothing to report.
    more = Message("", "q", PROPS, body(3000))
    store.enqueue(rec.queues[0].store_qid, more)
    store.sync()
    store.close()
    store_log.clear()
    store = Store(data_dir, segment_size=256 * 1024)
    rec = store.open()
    assert recovered_numbers(rec) == [i for i in range(3001) if i not in lost]
    assert rec.damaged is None and "damaged" not in store_log.text
    assert len(os.listdir(os.path.join(data_dir, "damaged"))) == 1
    store.close()


def test_damage_in_the_last_segment_followed_by_intact_records_is_not_cut(
        data_dir: str, store_log) -> None:
    """B-DUR-7: bad bytes in the last segment with intact records after them are no torn
    tail: reading resumes after them and everything after is kept."""
    ids = fill(data_dir, 400, 1024 * 1024)
    (only,) = segments(data_dir)
    size = os.path.getsize(only)
    at = size // 3
    hit = hit_by(only, at, 4)
    flip(only, at)
    store = Store(data_dir)
    rec = store.open()
    lost = lost_numbers(hit, ids)
    assert recovered_numbers(rec) == [i for i in range(400) if i not in lost]
    assert 398 in recovered_numbers(rec) and 399 in recovered_numbers(rec)
    assert "damaged tail" not in store_log.text
    assert f"damaged records in {only} at offset {hit[0][0]}" in store_log.text
    assert os.path.getsize(only) == size - sum(r[1] for r in hit)
    assert len(os.listdir(os.path.join(data_dir, "damaged"))) == 1
    store.close()


@pytest.mark.parametrize("garbage", [b"", b"\x00" * 3000, b"\xfe\xedmq\x00\x00\x00\x09junk"])
def test_torn_tail_is_still_cut(data_dir: str, store_log, garbage: bytes, monkeypatch) -> None:
    """B-DUR-6: a torn write at the end of the last segment (a partial record, maybe followed
    by bytes that are no record: zeros, a magic with nothing valid behind it) is cut off and
    logged, the cut fsynced; no copy is kept (a crash tears a tail, not the disk)."""
    ids = fill(data_dir, 50, 1024 * 1024)
    (only,) = segments(data_dir)
    last_msg = [r for r in records_of(only) if r[2][0] == R.MSG][-1]
    cut = last_msg[0] + 40                     # inside message 49's record
    os.truncate(only, cut)
    with open(only, "ab") as fh:
        fh.write(garbage)
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(recovery.os, "fsync",
                        lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")),
                                    real_fsync(fd))[1])
    store = Store(data_dir)
    rec = store.open()
    assert recovered_numbers(rec) == list(range(49))
    assert f"damaged tail in {only}" in store_log.text
    assert os.path.getsize(only) == last_msg[0]
    assert only in synced
    assert not os.path.exists(os.path.join(data_dir, "damaged"))
    assert ids
    store.close()


def test_damaged_headers_and_several_records(data_dir: str, store_log) -> None:
    """B-DUR-7: a hit on a record's length (the scanner cannot skip by it) and a hit spanning
    several records: each range is skipped up to the next intact record, the log gives the
    byte count, and no intact record is lost."""
    ids = fill(data_dir, 300, 1024 * 1024)
    (only,) = segments(data_dir)
    found = records_of(only)
    first = found[100]                            # its length field
    run = found[200:205]                          # across five records
    flip(only, first[0] + 4, 2)
    flip(only, run[0][0] + 20, run[-1][0] - run[0][0])
    store = Store(data_dir)
    rec = store.open()
    lost = lost_numbers([first] + run, ids)
    assert recovered_numbers(rec) == [i for i in range(300) if i not in lost]
    assert f"at offset {first[0]}" in store_log.text
    span = run[-1][0] + run[-1][1] - run[0][0]
    assert f"at offset {run[0][0]}: checksum mismatch; dropped {span} bytes (how many " \
           f"records unknown)" in store_log.text
    store.close()


def test_a_record_inside_a_message_body_is_not_taken_for_one(data_dir: str) -> None:
    """B-DUR-7: a message whose body holds log records (the magic, lengths, CRCs: say a
    backup of a segment sent as a message) is one record; when it is damaged, the records in
    its body are not recovered as if they were the store's."""
    store = Store(data_dir)
    store.open()
    q = store.declare_queue("/", "q", False, {})
    inner = R.topology_record(R.QUEUE, 999, 0, ("/", "phantom"), b"\x00\x00\x00\x00") + \
        R.message_record(1000, "", "phantom", PROPS, b"phantom") + \
        R.enqueue_record(999, 1000, 0.0)
    assert R.scan(inner)[1] == []
    before = Message("", "q", PROPS, b"before")
    carrier = Message("", "q", PROPS, b"image:" + inner)
    after = Message("", "q", PROPS, b"after")
    for m in (before, carrier, after):
        store.enqueue(q, m)
    store.sync()
    store.close()
    (only,) = segments(data_dir)
    (msg,) = [r for r in records_of(only) if r[2][0] == R.MSG and r[2][1] == carrier.store_id]
    flip(only, msg[0] + 8, 1)                    # its CRC
    store = Store(data_dir)
    rec = store.open()
    assert [q.name for q in rec.queues] == ["q"]
    assert [m.body for m, _, _ in rec.queues[0].messages] == [b"before", b"after"]
    assert rec.next_id <= after.store_id + 1      # no id from the phantom records
    store.close()


def test_unknown_record_type_is_skipped_as_damage(data_dir: str, store_log) -> None:
    """A record with a valid frame and CRC but a type mq never wrote (a foreign or newer
    writer) is not interpreted: it is skipped and reported like any damaged record."""
    fill(data_dir, 10, 1024 * 1024)
    (only,) = segments(data_dir)
    found = records_of(only)
    with open(only, "rb") as fh:
        data = fh.read()
    cut = found[5][0]
    strange = R.frame(b"\x63" + b"\x00" * 16)
    with open(only, "wb") as fh:
        fh.write(data[:cut] + strange + data[cut:])
    store = Store(data_dir)
    rec = store.open()
    assert recovered_numbers(rec) == list(range(10))
    assert f"at offset {cut}: malformed record: unknown record type 99" in store_log.text
    store.close()


def test_arguments_that_do_not_decode_are_refused(data_dir: str) -> None:
    """B-DUR-10: a topology record whose arguments are not an AMQP table (a tampered
    directory: its CRC is valid) stops the start with a clear error naming it."""
    fill(data_dir, 3, 1024 * 1024)
    (only,) = segments(data_dir)
    with open(only, "ab") as fh:
        fh.write(R.topology_record(R.EXCHANGE, 500, 0, ("/", "x", "direct"),
                                   b"\x80\x03cos\nsystem\n."))
    with pytest.raises(StoreError, match=r"offset \d+: the arguments of exchange 'x' in "
                                         r"vhost '/' are not an AMQP field table"):
        Store(data_dir).open()


def _filled(data_dir: str, segment_size: int, count: int) -> tuple[Store, int, list[Message]]:
    """An open store with count persistent messages in queue 'q', on disk."""
    store = Store(data_dir, segment_size=segment_size)
    store.open()
    q = store.declare_queue("/", "q", False, {})
    msgs = [Message("", "q", PROPS, body(i)) for i in range(count)]
    for m in msgs:
        store.enqueue(q, m)
    store.sync()
    return store, q, msgs


def test_compaction_reads_across_a_damaged_range(data_dir: str, store_log) -> None:
    """B-DUR-7 while running: when a sealed segment damaged after the start is compacted,
    the scanner reads past the damage, so the live records after it are copied forward and
    survive the segment's removal."""
    store, q, msgs = _filled(data_dir, 64 * 1024, 300)
    first = segments(data_dir)[0]
    in_first = [r for r in records_of(first) if r[2][0] == R.MSG]
    victim, keep = in_first[3], in_first[-5:]
    keep_ids = {r[2][1] for r in keep}
    flip(first, victim[0] + 100)                  # a record that is acked below
    for m in msgs:
        if m.store_id not in keep_ids:
            store.ack(q, m.store_id)
    store.sync()
    store.sync()
    assert not os.path.exists(first)              # compacted and removed
    store.close()
    store = Store(data_dir, segment_size=64 * 1024)
    rec = store.open()
    assert [m.store_id for m, _, _ in rec.queues[0].messages] == sorted(keep_ids)
    assert rec.damaged is None
    store.close()


def test_broker_restarts_over_mid_log_damage() -> None:
    """B-DUR-7 end to end, as reported: a broker (256 KB segments) takes 3000 confirmed
    persistent 1 KB messages, is stopped, and 4 bytes in the middle of its second segment
    are flipped. Restarted, it hands every other message back in order, says in its log
    which segment and offset were damaged, and keeps the damaged file aside."""
    persistent = pika.BasicProperties(delivery_mode=2)
    with run_broker(args=("--store-segment-size", str(256 * 1024))) as broker:
        conn = pika.BlockingConnection(pika.URLParameters(broker.url))
        ch = conn.channel()
        ch.queue_declare("big", durable=True)
        for i in range(3000):
            ch.basic_publish("", "big", body(i), persistent)
        confirm = conn.channel()     # its confirm covers what the connection sent before
        confirm.confirm_delivery()
        confirm.basic_publish("", "big", b"m03000|sync", persistent)
        conn.close()
        broker.stop()

        names = segments(broker.data_dir)
        assert len(names) >= 4
        number_of = {}               # message id -> its number, from every segment
        for name in names:
            with open(name, "rb") as fh:
                for _, _, f in R.scan(fh.read())[0]:
                    if f[0] == R.MSG:
                        number_of[f[1]] = int(f[5][1:6])
        second = names[1]
        middle = os.path.getsize(second) // 2
        hit = hit_by(second, middle, 4)
        lost = {number_of[f[1] if f[0] == R.MSG else f[2]] for _, _, f in hit}
        flip(second, middle)

        broker.start()
        assert f"damaged records in {second} at offset {hit[0][0]}" in broker.log()
        conn = pika.BlockingConnection(pika.URLParameters(broker.url))
        ch = conn.channel()
        got = []
        while True:
            method, _, data = ch.basic_get("big")
            if method is None:
                break
            got.append(int(data[1:6]))
            ch.basic_ack(method.delivery_tag)
        conn.close()
        assert len(lost) == 1
        assert got == [i for i in range(3001) if i not in lost]
        assert len(os.listdir(os.path.join(broker.data_dir, "damaged"))) == 1


def test_compaction_keeps_a_segment_damaged_after_it_was_written(data_dir: str, store_log) -> None:
    """B-DUR-7: a live record damaged on disk while the broker runs is not found when its
    segment is compacted; the segment is then kept (not removed with the record the index
    still points at), and the next start repairs it, losing only that record."""
    store, q, msgs = _filled(data_dir, 32768, 70)
    first = os.path.join(data_dir, "log", "00000001.seg")
    keep = msgs[1:3]  # in the first segment, kept live
    with open(first, "r+b") as fh:  # flip a byte in the body of a live message
        data = fh.read()
        at = data.index(keep[0].body) + 10
        fh.seek(at)
        fh.write(bytes([data[at] ^ 0xFF]))
    for m in msgs:
        if m not in keep:
            store.ack(q, m.store_id)
    store.sync()
    store.sync()
    assert os.path.exists(first)  # kept: compaction could not copy the damaged record
    assert "were not found when it was read back for compaction" in store_log.text
    store.close()
    store = Store(data_dir, segment_size=32768)
    rec = store.open()
    assert [m.body for m, _, _ in rec.queues[0].messages] == [keep[1].body]
    store.close()


def test_compaction_pieces_do_not_take_records_inside_a_body_for_records() -> None:
    """B-DUR-7: compaction scans a segment piece by piece; a message cut by a piece's end
    whose body holds a record image (a log stored as a message) is read whole in the next
    piece, and the image is not taken for a record: the pieces give exactly the records a
    scan of the whole segment gives."""
    from mq.store.compaction import PIECE, scan_piece
    inner = R.enqueue_record(7, 8, 0.0) + R.ref_record(R.ACK, 7, 8)
    records = [R.message_record(i, "", "q", PROPS, b"x" * (PIECE // 3)) for i in range(1, 3)]
    records.append(R.message_record(3, "", "q", PROPS, inner * 50 + b"y" * PIECE))
    records += [R.enqueue_record(1, i, 0.0) for i in range(1, 4)]
    data = b"".join(records)
    whole, damaged = R.scan(data, 0, False)
    assert not damaged
    got, pos = [], 0
    while pos < len(data):
        entries, pos = scan_piece(data, pos)
        got += entries
    assert [(off, n) for off, n, _ in got] == [(off, n) for off, n, _ in whole]
