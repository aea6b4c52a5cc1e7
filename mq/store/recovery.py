"""Recovery: replay every segment in order and rebuild the index and the durable state.

Replay does not depend on record order for correctness (ids are never reused, queue order is
message-id order), so compaction may copy records forward freely.

Damage (B-DUR-6, B-DUR-7): the scanner skips bad records and reads on from the next intact
one (records carry a magic and a CRC, see mq/_core/records.pyx), so damage costs the damaged
records only. Bad bytes at the very end of the last segment with no intact record after them
are a torn tail (a write a crash interrupted): the segment is truncated there (fsynced) and the
log says so. Anything else is mid-log damage: every intact record before and after it, and
every other segment, is kept; the log names the segment, offset and size of each damaged
range; the damaged file is kept aside as <data dir>/damaged/<segment>.<unix time>, and the
segment is written again without the damaged ranges (tmp file, fsync, rename, directory
fsync), so that the next start finds it clean. A message whose MSG record was damaged is
lost; a damaged ACK or DELETE brings back what it removed (a duplicate, not a loss).

Arguments that do not decode (a CRC-valid record the broker did not write that way: a
tampered directory) stop the start with StoreError naming the record (B-DUR-10).
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from array import array
from dataclasses import dataclass, field
from typing import Callable

from mq._core import records as R
from mq._core.message import Message
from mq._core.replay import Replay
from mq.store.arguments import ArgumentsError, decode_arguments
from mq.store.format import StoreError
from mq.store.index import Index
from mq.store.paging import StoredEntries
from mq.store.segments import Segment, Tomb, fsync_file, segment_path, sync_dir

log = logging.getLogger("mq.store")

@dataclass
class RecoveredQueue:
    vhost: str
    name: str
    auto_delete: bool
    arguments: dict
    store_qid: int
    # its messages in queue order, column by column (see mq.store.paging.StoredEntries):
    # store ids, absolute expiries (0.0: none), redelivered flags, priorities, body sizes
    stored: StoredEntries = field(default_factory=lambda: (array("q"), array("d"),
                                                           array("B"), array("B"), array("I")))
    read: Callable[[int], Message] | None = None  # the store's read_message

    @property
    def messages(self) -> list[tuple[Message, float, bool]]:
        """(message, expiry, redelivered) in queue order, read from the store (for tools and
        tests: the broker takes `stored` as it is)."""
        ids, expiries, redelivered = self.stored[:3]
        return [(self.read(mid), when, bool(red))
                for mid, when, red in zip(ids, expiries, redelivered)]


@dataclass
class Recovered:
    """Durable state as found on disk, for the broker to rebuild itself from."""

    exchanges: list[tuple[str, str, str, bool, bool, dict]] = field(default_factory=list)
    queues: list[RecoveredQueue] = field(default_factory=list)
    # (vhost, source, destination is an exchange, destination, routing key, arguments)
    bindings: list[tuple[str, str, bool, str, str, dict]] = field(default_factory=list)
    damaged: str | None = None  # what was cut off or skipped, if anything
    next_id: int = 1            # the first id never used


def replay(directory: str, numbers: list[int], index: Index, read: Callable[[int], Message],
           clean: bool = True) -> Recovered:
    """Read segments `numbers` of the log in `directory` into index. Bodies stay on disk:
    queues read back those they keep in memory with read(store id). After an unclean
    shutdown (clean false) every message comes back redelivered (see shutdown.py)."""
    state = Replay()
    recovered = Recovered()
    _remove_repair_leftovers(directory)
    reports: list[str] = []
    for i, number in enumerate(numbers):
        path = segment_path(directory, number)
        with open(path, "rb") as fh:
            data = fh.read()
        if not state.feed(data, number):
            data = _repair(directory, path, data, i == len(numbers) - 1, reports)
            state.feed(data, number)
        index.segments[number] = Segment(number, path, len(data))
        del data
    if reports:
        recovered.damaged = "; ".join(reports)
    recovered.next_id = state.max_id + 1
    segments = index.segments
    # Topology.
    for obj_id, (location, size, f) in sorted(state.topo.items()):
        seg = segments[location >> 32]
        rtype, flags, args = f[0], f[2], _arguments(seg, location & 0xFFFFFFFF, f)
        if rtype == R.QUEUE:
            key = ("q", f[3], f[4])
            recovered.queues.append(RecoveredQueue(f[3], f[4], bool(flags & 1), args, obj_id,
                                                   read=read))
        elif rtype == R.EXCHANGE:
            key = ("x", f[3], f[4])
            recovered.exchanges.append((f[3], f[4], f[5], bool(flags & 1), bool(flags & 2),
                                        args))
        else:
            key = ("b", f[3], f[4], bool(flags & 1), f[5], f[6], f[7])
            recovered.bindings.append((f[3], f[4], bool(flags & 1), f[5], f[6], args))
        index.put_topo(obj_id, key, seg, location & 0xFFFFFFFF, size)
    # Messages: each live queue's entries in message-id (= arrival) order, counted live per
    # segment in one array (a step per message in Python would cost seconds at 1M).
    first = numbers[0] if numbers else 0
    counts = array("q", bytes(16 * (numbers[-1] - first + 1))) if numbers else array("q")
    for rq in recovered.queues:
        entries, delivered, *columns = state.queue(rq.store_qid, index.msgs, index.shared,
                                                   counts, first)
        index.queues[rq.store_qid] = entries
        if delivered:
            index.dlvs[rq.store_qid] = delivered
        if not clean:
            columns[2] = array("B", b"\x01" * len(columns[2]))
        rq.stored = tuple(columns)
    for number, seg in segments.items():
        seg.live_count += counts[2 * (number - first)]
        seg.live_bytes += counts[2 * (number - first) + 1]
    for location, size, target in state.tombs:
        seg = segments[location >> 32]
        off = location & 0xFFFFFFFF
        tomb = Tomb(seg, off, size)
        seg.tombs[off] = tomb
        index.live(seg, size)
        segments[target].pins.append(tomb)
    index.dirty.update(segments.values())
    if state.lost and reports:  # (its intact ENQ stays, dead, until compacted: report it once)
        log.warning("store: %d queued messages lost: their message records were damaged",
                    state.lost)
    log.info("store: recovered %d exchanges, %d queues, %d bindings, %d messages from %d "
             "segments in %s", len(recovered.exchanges), len(recovered.queues),
             len(recovered.bindings), len(index.msgs), len(segments), directory)
    return recovered


def _arguments(seg: Segment, off: int, f: tuple) -> dict:
    try:
        return decode_arguments(f[-1])
    except ArgumentsError as exc:
        what = f"binding of {f[4]!r} to {f[5]!r}" if f[0] == R.BINDING else \
            f"{'queue' if f[0] == R.QUEUE else 'exchange'} {f[4]!r}"
        raise StoreError(f"{seg.path} offset {off}: the arguments of {what} in vhost {f[3]!r} "
                         f"are not an AMQP field table ({exc}); mq never writes that: the data "
                         f"directory was altered. Refusing to start") from None


def _repair(directory: str, path: str, data: bytes, last: bool, reports: list[str]) -> bytes:
    """Deal with the damaged ranges of one segment (see the module doc); returns its
    contents as they now are on disk: its intact records only."""
    entries, damaged = R.scan(data, 0, False)
    size = len(data)
    tail = damaged[-1] if last and damaged[-1][0] + damaged[-1][1] == size else None
    inner = [d for d in damaged if d is not tail]
    if tail is not None:
        off, length, _, why = tail
        log.warning("store: damaged tail in %s: %s at offset %d; cutting off %d bytes and "
                    "keeping the %d records before it", path, why, off, length,
                    sum(1 for e in entries if e[0] < off))
        reports.append(f"segment {path}: {why} at offset {off}; cut off {length} bytes")
    for off, length, count, why in inner:
        records = "1 record" if count else "how many records unknown"
        log.warning("store: damaged records in %s at offset %d: %s; dropped %d bytes (%s), "
                    "keeping the records before and after them and every other segment",
                    path, off, why, length, records)
        reports.append(f"segment {path}: {why} at offset {off}; dropped {length} bytes "
                       f"({records})")
    if not inner:
        _truncate(path, tail[0])
        return data[:tail[0]]
    aside = keep_aside(directory, path)
    # Written again without the damaged ranges: offsets move, the records do not change.
    parts = [data[off:off + n] for off, n, _ in entries]
    at = sum(map(len, parts))
    tmp = path + ".repair"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with os.fdopen(fd, "wb", closefd=False) as fh:
            fh.writelines(parts)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    sync_dir(os.path.dirname(path))
    log.warning("store: %s written again with its %d intact records (%d of %d bytes); the "
                "damaged file is kept as %s", path, len(parts), at, size, aside)
    return b"".join(parts)


def _truncate(path: str, size: int) -> None:
    os.truncate(path, size)
    fsync_file(path)


def keep_aside(directory: str, path: str) -> str:
    """A copy of the damaged file path as <directory>/damaged/<name>.<unix time> (a second
    link to it, else a copy), made durable; returns its path."""
    aside_dir = os.path.join(directory, "damaged")
    os.makedirs(aside_dir, exist_ok=True)
    base = os.path.join(aside_dir, f"{os.path.basename(path)}.{int(time.time())}")
    dest, n = base, 0
    while os.path.lexists(dest):
        n += 1
        dest = f"{base}.{n}"
    try:
        os.link(path, dest)
    except OSError:
        shutil.copyfile(path, dest)
        fsync_file(dest)
    sync_dir(aside_dir)
    sync_dir(directory)
    return dest


def _remove_repair_leftovers(directory: str) -> None:
    """A .repair file is a rewrite a crash interrupted: the segment itself is still whole."""
    log_dir = os.path.join(directory, "log")
    leftovers = [n for n in os.listdir(log_dir) if n.endswith(".seg.repair")] \
        if os.path.isdir(log_dir) else []
    for name in leftovers:
        os.unlink(os.path.join(log_dir, name))
    if leftovers:
        sync_dir(log_dir)
