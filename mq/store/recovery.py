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
from dataclasses import dataclass, field

from mq._core import records as R
from mq._core.message import Message
from mq.store.arguments import ArgumentsError, decode_arguments
from mq.store.format import StoreError
from mq.store.index import Index
from mq.store.segments import Segment, Tomb, loc, segment_path, sync_dir

log = logging.getLogger("mq.store")

MSG, ENQ, DLV, ACK, DELETE = R.MSG, R.ENQ, R.DLV, R.ACK, R.DELETE  # ENQ..ACK: 2..4


@dataclass
class RecoveredQueue:
    vhost: str
    name: str
    auto_delete: bool
    arguments: dict
    store_qid: int
    # (message, absolute expiry or 0.0, redelivered), in queue order
    messages: list[tuple[Message, float, bool]] = field(default_factory=list)


@dataclass
class Recovered:
    """Durable state as found on disk, for the broker to rebuild itself from."""

    exchanges: list[tuple[str, str, str, bool, bool, dict]] = field(default_factory=list)
    queues: list[RecoveredQueue] = field(default_factory=list)
    # (vhost, source, destination is an exchange, destination, routing key, arguments)
    bindings: list[tuple[str, str, bool, str, str, dict]] = field(default_factory=list)
    damaged: str | None = None  # what was cut off or skipped, if anything
    next_id: int = 1            # the first id never used


def replay(directory: str, numbers: list[int], index: Index, bodies: bool) -> Recovered:
    """Read segments `numbers` of the log in `directory` into index. Without bodies, MSG
    records are read for their properties only (queues read bodies back when they need them)."""
    msgs: dict[int, tuple] = {}      # id -> (seg, off, size, fields)
    enqs: dict[int, dict[int, list]] = {}
    dlvs: dict[tuple[int, int], tuple] = {}
    topo: dict[int, tuple] = {}      # id -> (seg, off, size, fields)
    tombs: list[tuple[Segment, int, int, Segment]] = []  # (seg, off, size, pinned by)
    recovered = Recovered()
    max_id = 0
    _remove_repair_leftovers(directory)
    reports: list[str] = []
    for i, number in enumerate(numbers):
        path = segment_path(directory, number)
        with open(path, "rb") as fh:
            data = fh.read()
        entries, damaged = R.scan(data, 0, bodies)
        size = len(data)
        if damaged:
            entries, size = _repair(directory, path, data, entries, damaged,
                                    i == len(numbers) - 1, reports)
        del data
        seg = Segment(number, path, size)
        index.segments[number] = seg
        for off, size, f in entries:
            rtype = f[0]
            if f[1] > max_id:  # ids are never reused, whatever record names them
                max_id = f[1]
            if rtype == MSG:
                msgs[f[1]] = (seg, off, size, f)
                continue
            if ENQ <= rtype <= ACK and f[2] > max_id:
                max_id = f[2]
            if rtype == ENQ:
                enqs.setdefault(f[1], {})[f[2]] = [seg, off, size, f[3]]
            elif rtype == DLV:
                dlvs[(f[1], f[2])] = (seg, off, size)
            elif rtype == ACK:
                enq = enqs.get(f[1], {}).pop(f[2], None)
                if enq is not None and enq[0] is not seg:
                    tombs.append((seg, off, size, enq[0]))
            elif rtype == DELETE:
                put = topo.pop(f[1], None)
                if put is not None and put[0] is not seg:
                    tombs.append((seg, off, size, put[0]))
            else:
                topo[f[1]] = (seg, off, size, f)
    if reports:
        recovered.damaged = "; ".join(reports)
    recovered.next_id = max_id + 1
    # Topology.
    for obj_id, (seg, off, size, f) in sorted(topo.items()):
        rtype, flags, args = f[0], f[2], _arguments(seg, off, f)
        if rtype == R.QUEUE:
            key = ("q", f[3], f[4])
            recovered.queues.append(RecoveredQueue(f[3], f[4], bool(flags & 1), args, obj_id))
            index.queues[obj_id] = {}
        elif rtype == R.EXCHANGE:
            key = ("x", f[3], f[4])
            recovered.exchanges.append((f[3], f[4], f[5], bool(flags & 1), bool(flags & 2),
                                        args))
        else:
            key = ("b", f[3], f[4], bool(flags & 1), f[5], f[6], f[7])
            recovered.bindings.append((f[3], f[4], bool(flags & 1), f[5], f[6], args))
        index.put_topo(obj_id, key, seg, off, size)
    # Messages: each live queue's entries in message-id (= arrival) order.
    objects: dict[int, Message] = {}
    lost = 0
    for rq in recovered.queues:
        entries = index.queues[rq.store_qid]
        delivered: dict[int, int] = {}
        for mid, (seg, off, size, expires) in sorted(enqs.get(rq.store_qid, {}).items()):
            m = msgs.get(mid)
            if m is None:
                lost += 1  # its MSG record was damaged (no other way to lose it)
                continue
            msg = objects.get(mid)
            if msg is None:
                mseg, moff, msize, f = m
                msg = objects[mid] = Message(f[2], f[3], f[4], f[5])
                msg.store_id = mid
                index.live(mseg, msize)
                index.msgs[mid] = loc(mseg, moff) << 32 | msize
            else:
                index.shared[mid] = index.shared.get(mid, 1) + 1
            entries[mid] = loc(seg, off)
            index.live(seg, size)
            dlv = dlvs.get((rq.store_qid, mid))
            if dlv is not None:
                delivered[mid] = loc(dlv[0], dlv[1])
                index.live(dlv[0], dlv[2])
            rq.messages.append((msg, expires, dlv is not None))
        if delivered:
            index.dlvs[rq.store_qid] = delivered
    for seg, off, size, target in tombs:
        tomb = Tomb(seg, off)
        seg.tombs[off] = (size, tomb)
        index.live(seg, size)
        target.pins.append(tomb)
    index.dirty.update(index.segments.values())
    if lost and reports:  # (its intact ENQ stays, dead, until compacted: report it once)
        log.warning("store: %d queued messages lost: their message records were damaged",
                    lost)
    log.info("store: recovered %d exchanges, %d queues, %d bindings, %d messages from %d "
             "segments in %s", len(recovered.exchanges), len(recovered.queues),
             len(recovered.bindings), len(objects), len(index.segments), directory)
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


def _repair(directory: str, path: str, data: bytes, entries: list, damaged: list,
            last: bool, reports: list[str]) -> tuple[list, int]:
    """Deal with the damaged ranges of one segment (see the module doc); returns its intact
    records and its size as they now are on disk."""
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
        return entries, tail[0]
    aside = keep_aside(directory, path)
    # Written again without the damaged ranges: offsets move, the records do not change.
    moved, parts, at = [], [], 0
    for off, n, f in entries:
        parts.append(data[off:off + n])
        moved.append((at, n, f))
        at += n
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
                "damaged file is kept as %s", path, len(moved), at, size, aside)
    return moved, at


def _truncate(path: str, size: int) -> None:
    os.truncate(path, size)
    fd = os.open(path, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
        fd = os.open(dest, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
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
