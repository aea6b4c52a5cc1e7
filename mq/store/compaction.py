"""Compaction: the live records of a sealed, mostly dead segment are copied to the head, so
that the segment can be deleted. A record is live when the index still points at it (or, for
a tombstone, lists it). Replay does not depend on record order, so copies may go anywhere."""
from __future__ import annotations

from typing import Callable

from mq._core import records as R
from mq.store.index import Index
from mq.store.segments import Segment, loc

Append = Callable[[bytes], tuple[Segment, int]]


def compact(seg: Segment, data: bytes, index: Index, append: Append) -> None:
    """Copy what is live of seg (whose file holds data) forward with append; afterwards seg
    holds nothing live and can be removed."""
    def copy(off: int, size: int) -> int:
        new_seg, new_off = append(data[off:off + size])  # unchanged: its CRC still holds
        index.live(new_seg, size)
        return loc(new_seg, new_off)

    base = seg.number << 32
    for off, size, f in R.scan(data, 0, False)[0]:
        location, rtype = base | off, f[0]
        if rtype == R.MSG:
            m = index.msgs.get(f[1])
            if m is not None and m >> 32 == location:
                index.msgs[f[1]] = copy(off, size) << 32 | size
        elif rtype == R.ENQ or rtype == R.DLV:
            entries = (index.queues if rtype == R.ENQ else index.dlvs).get(f[1])
            if entries is not None and entries.get(f[2]) == location:
                entries[f[2]] = copy(off, size)
        elif rtype == R.ACK or rtype == R.DELETE:
            live = seg.tombs.get(off)
            if live is not None:
                new = copy(off, size)
                tomb = live[1]
                tomb.seg, tomb.off = index.segments[new >> 32], new & 0xFFFFFFFF
                tomb.seg.tombs[tomb.off] = live
        else:
            t = index.topo.get(f[1])
            if t is not None and t[0] == location:
                index.topo[f[1]] = (copy(off, size), t[1], t[2])
    seg.live_count = seg.live_bytes = 0
    seg.tombs.clear()
