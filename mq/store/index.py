"""The store's index: where each live record is, and how much of each segment is live.

Every record is either live (part of the current state) or dead. A segment whose records
are all dead is deleted; one with few live records is compacted (compaction.py). A deleting
record (ACK, DELETE: a tombstone) stays live only while the record it cancels still exists
in an older segment: that segment "pins" it.
"""
from __future__ import annotations

from mq._core import records as R
from mq._core.idmap import IdMap
from mq.store.segments import Segment, Tomb, loc

# Framed sizes of the fixed-size records.
ENQ_SIZE = R.HEADER_SIZE + 25
REF_SIZE = R.HEADER_SIZE + 17   # DLV, ACK


class Index:
    def __init__(self) -> None:
        self.segments: dict[int, Segment] = {}
        # The tables with an entry per message are IdMaps (C hash tables, 16-20 bytes an
        # entry): a 1M backlog has a million entries in msgs and in its queue's table.
        # msg id -> location << 32 | record size; a message in more than one queue also
        # counts them in shared.
        self.msgs = IdMap(wide=True)
        self.shared = IdMap()              # msg id -> queues holding it, when more than 1
        self.queues: dict[int, IdMap] = {}  # qid -> msg id -> its ENQ location
        self.dlvs: dict[int, IdMap] = {}    # qid -> msg id -> its DLV location
        self.topo: dict[int, tuple[int, int, tuple]] = {}  # object id -> (location, size, key)
        self.ids: dict[tuple, int] = {}    # topology key -> object id
        self.dirty: set[Segment] = set()   # segments whose live share fell: look at them

    def live(self, seg: Segment, size: int) -> None:
        seg.live_count += 1
        seg.live_bytes += size

    def dead(self, location: int, size: int) -> None:
        seg = self.segments[location >> 32]
        seg.live_count -= 1
        seg.live_bytes -= size
        self.dirty.add(seg)

    def put_topo(self, obj_id: int, key: tuple, seg: Segment, off: int, size: int) -> None:
        self.topo[obj_id] = (loc(seg, off), size, key)
        self.ids[key] = obj_id
        self.live(seg, size)

    def pin(self, seg: Segment, off: int, size: int, target: Segment) -> None:
        """The tombstone at seg/off cancels a record in target: live while target exists."""
        if seg is not target:
            tomb = Tomb(seg, off)
            seg.tombs[off] = (size, tomb)
            self.live(seg, size)
            target.pins.append(tomb)

    def drop_entry(self, qid: int, mid: int, location: int) -> None:
        """Queue qid's entry for mid (its ENQ at location) is gone: its records are dead, and
        the message too when no other queue holds it."""
        self.dead(location, ENQ_SIZE)
        delivered = self.dlvs.get(qid)
        if delivered:
            dloc = delivered.pop(mid, None)
            if dloc is not None:
                self.dead(dloc, REF_SIZE)
        holders = self.shared.pop(mid, 1)
        if holders > 2:
            self.shared[mid] = holders - 1
        elif holders == 1:
            m = self.msgs.pop(mid)
            self.dead(m >> 32, m & 0xFFFFFFFF)

    def unpin(self, seg: Segment) -> None:
        """seg is gone: the tombstones it pinned are dead now."""
        for tomb in seg.pins:
            holder = tomb.seg
            if holder is not None and self.segments.get(holder.number) is holder:
                size = holder.tombs.pop(tomb.off)[0]
                holder.live_count -= 1
                holder.live_bytes -= size
                self.dirty.add(holder)
            tomb.seg = None
        seg.pins = []
