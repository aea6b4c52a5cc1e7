"""Compaction: the live records of a sealed, mostly dead segment are copied to the head, so
that the segment can be deleted. A record is live when the index still points at it (or, for
a tombstone, lists it). Replay does not depend on record order, so copies may go anywhere.

A broker compacts a segment in pieces between other work (log.py), so the index may change
between pieces: each record is judged live when its piece is copied. Every copy takes its
record's share out of the segment's live counts; when the whole file has been read and
something is still counted live, a live record was not found in the file (damaged on disk
since it was written) and the segment must be kept: recovery repairs it at the next start.
"""
from __future__ import annotations

from typing import Callable

from mq._core import records as R
from mq.store.index import Index
from mq.store.segments import Segment, loc

Append = Callable[[bytes], tuple[Segment, int]]

PIECE = 16 * 1024  # bytes of a segment scanned at once by a broker


def compact(seg: Segment, data: bytes, index: Index, append: Append) -> None:
    """Copy what is live of seg (whose file holds data) forward with append, in one go."""
    copy_live(seg, data, R.scan(data, 0, False)[0], index, append)


def scan_piece(data: bytes, pos: int) -> tuple[list, int]:
    """The records that start in about PIECE bytes of data from pos, and where the next piece
    starts. A record cut by the piece's end is left for the next piece (records the scanner
    may find inside its extent are parts of its body, not records); one longer than a piece
    makes the piece grow. Damage inside a piece is skipped as records.scan skips it."""
    size = PIECE
    while True:
        piece = data[pos:pos + size]
        entries, damaged = R.scan(piece, 0, False)
        if pos + len(piece) >= len(data):
            return [(pos + off, n, f) for off, n, f in entries], len(data)
        cut = next((off for off, _, _, why in damaged if why.startswith("truncated")), None)
        if cut is None:
            return [(pos + off, n, f) for off, n, f in entries], pos + len(piece)
        if cut > 0:
            return [(pos + off, n, f) for off, n, f in entries if off < cut], pos + cut
        size *= 2


def copy_live(seg: Segment, data: bytes, entries: list, index: Index, append: Append) -> None:
    """Copy the live ones of seg's records `entries` ((offset, size, fields) with offsets in
    data, seg's file) forward with append."""
    def copy(off: int, size: int) -> int:
        new_seg, new_off = append(data[off:off + size])  # unchanged: its CRC still holds
        index.live(new_seg, size)
        seg.live_count -= 1
        seg.live_bytes -= size
        return loc(new_seg, new_off)

    base = seg.number << 32
    for off, size, f in entries:
        location, rtype = base | off, f[0]
        if rtype == R.MSG:
            m = index.msgs.get(f[1])
            if m is not None and m >> 32 == location:
                index.msgs[f[1]] = copy(off, size) << 32 | size
        elif rtype == R.ENQ or rtype == R.DLV:
            entries_of = (index.queues if rtype == R.ENQ else index.dlvs).get(f[1])
            if entries_of is not None and entries_of.get(f[2]) == location:
                entries_of[f[2]] = copy(off, size)
        elif rtype == R.ACK or rtype == R.DELETE:
            tomb = seg.tombs.pop(off, None)
            if tomb is not None:
                new = copy(off, size)
                tomb.seg, tomb.off = index.segments[new >> 32], new & 0xFFFFFFFF
                tomb.seg.tombs[tomb.off] = tomb
        else:
            t = index.topo.get(f[1])
            if t is not None and t[0] == location:
                index.topo[f[1]] = (copy(off, size), t[1], t[2])
