"""Recovery: replay every segment in order and rebuild the index and the durable state.

Replay does not depend on record order for correctness (ids are never reused, queue order is
message-id order), so compaction may copy records forward freely. The first bad checksum or
short record ends the log: that segment is cut there and later ones are removed, and the log
says so.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from mq._core import records as R
from mq._core.message import Message
from mq.store.arguments import decode_arguments
from mq.store.index import Index
from mq.store.segments import Segment, Tomb, loc, segment_path

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
    damaged: str | None = None  # what was cut off, if anything
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
    for i, number in enumerate(numbers):
        path = segment_path(directory, number)
        with open(path, "rb") as fh:
            data = fh.read()
        entries, end, error = R.scan(data, 0, bodies)
        length = len(data)
        del data
        seg = Segment(number, path, end)
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
        if error is not None:
            cut = length - end
            recovered.damaged = f"segment {path}: {error} at offset {end}; cut off {cut} bytes"
            log.warning("store: damaged tail in %s: %s at offset %d; cutting off %d bytes "
                        "and keeping the %d records before it", path, error, end, cut,
                        len(entries))
            os.truncate(path, end)
            for later in numbers[i + 1:]:
                log.warning("store: removing segment %s after the damage",
                            segment_path(directory, later))
                os.unlink(segment_path(directory, later))
            break
    recovered.next_id = max_id + 1
    # Topology.
    for obj_id, (seg, off, size, f) in sorted(topo.items()):
        rtype, flags, args = f[0], f[2], decode_arguments(f[-1])
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
    for rq in recovered.queues:
        entries = index.queues[rq.store_qid]
        delivered: dict[int, int] = {}
        for mid, (seg, off, size, expires) in sorted(enqs.get(rq.store_qid, {}).items()):
            m = msgs.get(mid)
            if m is None:
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
    log.info("store: recovered %d exchanges, %d queues, %d bindings, %d messages from %d "
             "segments in %s", len(recovered.exchanges), len(recovered.queues),
             len(recovered.bindings), len(objects), len(index.segments), directory)
    return recovered
