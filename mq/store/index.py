"""The store's index: where each live record is, and how much of each segment is live.

Every record is either live (part of the current state) or dead. A segment whose records
are all dead is deleted; one with few live records is compacted (compaction.py). A deleting
record (ACK, DELETE: a tombstone) stays live only while the record it cancels still exists
in an older segment: that segment "pins" it.
"""
from __future__ import annotations

from mq._core.idmap import IdMap
from mq._core.storecore import ENQ_SIZE, REF_SIZE, IndexCore
from mq.store.segments import Segment, Tomb, loc

__all__ = ["ENQ_SIZE", "REF_SIZE", "Index"]


class Index(IndexCore):
    """The tables and counts (live, dead, pin and drop_entry are IndexCore's, in C)."""

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

    def put_topo(self, obj_id: int, key: tuple, seg: Segment, off: int, size: int) -> None:
        self.topo[obj_id] = (loc(seg, off), size, key)
        self.ids[key] = obj_id
        self.live(seg, size)

    def unpin(self, tomb: Tomb) -> None:
        """The segment tomb pinned is gone: the tombstone is dead now."""
        holder = tomb.seg
        if holder is not None and self.segments.get(holder.number) is holder:
            self.dead_in(holder, holder.tombs.pop(tomb.off).size)
        tomb.seg = None
