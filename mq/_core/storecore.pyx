# cython: language_level=3
"""The store's per-message path in C: appending a message's records (MSG, ENQ, DLV, ACK)
to the head segment, handing them to the flusher's batch, and keeping the index's live
counts. The Python classes build on these (mq.store.log.Store on LogCore, Index on
IndexCore, Flusher on FlusherCore) and keep the rest: opening, recovery, topology records,
compaction, the flusher thread. Segments are mq.store.segments.Segment objects."""
cimport cython

from mq._core.idmap cimport IdMap
from mq._core.message cimport Message
from mq._core.records import (ACK as _ACK, DLV as _DLV, HEADER_SIZE as _HEADER_SIZE,
                              enqueue_record, message_record, ref_record)

cdef int ACK = _ACK
cdef int DLV = _DLV
# Framed sizes of the fixed-size records.
ENQ_SIZE = _HEADER_SIZE + 25
REF_SIZE = _HEADER_SIZE + 17   # DLV, ACK
cdef long long C_ENQ_SIZE = ENQ_SIZE
cdef long long C_REF_SIZE = REF_SIZE
# Credit flow towards the disk (B-FLOW-1): past this many bytes appended and not yet written
# and fsynced, the connections publishing persistent messages are not read until the flusher
# is back under half of it, so memory stays bounded when the disk is slower than the clients.
STORE_BEHIND_BYTES = 8 * 1024 * 1024
cdef long long C_BEHIND = STORE_BEHIND_BYTES


cdef inline long long _loc(object seg, long long off) except? -1:
    return (<long long>seg.number << 32) | off


@cython.no_gc
cdef class Tomb:
    """A live tombstone (ACK or DELETE record), where it currently is and its size. There may
    be millions, so the cyclic collector does not track them (its full passes walked every
    one): the one cycle they are in, through their segment's `tombs`, is broken when the
    tombstone dies (Index.unpin) or the store closes (Store.close)."""

    def __cinit__(self, seg, long long off, long long size):
        self.seg = seg
        self.off = off
        self.size = size


cdef class FlusherCore:
    """The loop's side of the flusher: records appended during a loop turn, handed to the
    thread at its end (mq.store.flusher)."""

    def __cinit__(self, *args, **kwargs):
        self._open = []

    cpdef void submit(self, object seg, long long off, bytes data) except *:
        """Queue data for seg at offset off, its end (the caller has accounted for its
        size). On the loop; the thread gets it at the end of this loop turn."""
        self.seq += 1
        self.unwritten += len(data)
        seg.last_seq = self.seq
        cdef list chunks = self._open
        cdef Py_ssize_t n = len(chunks)
        if n and (<list>chunks[n - 1])[0] is seg:  # (no negative indexes: wraparound is off)
            (<list>chunks[n - 1])[2] += data
        else:
            chunks.append([seg, off, bytearray(data)])
        if not self._handoff_due and self._thread is not None:
            self._handoff_due = True
            self._loop.call_soon(self._handoff)


cdef class IndexCore:
    """What is live where: the per-message tables (IdMaps) and each segment's live counts."""

    cpdef void live(self, object seg, long long size) except *:
        seg.live_count += 1
        seg.live_bytes += size

    cpdef void dead(self, long long location, long long size) except *:
        self.dead_in(self.segments[location >> 32], size)

    cpdef void dead_in(self, object seg, long long size) except *:
        """A record of seg is dead: the segment is looked at for removal or compaction."""
        seg.live_count -= 1
        seg.live_bytes -= size
        self.dirty.add(seg)

    cpdef void pin(self, object seg, long long off, long long size, object target) except *:
        """The tombstone at seg/off cancels a record in target: live while target exists."""
        if seg is not target:
            tomb = Tomb(seg, off, size)
            seg.tombs[off] = tomb
            self.live(seg, size)
            target.pins.append(tomb)

    cpdef void drop_entry(self, unsigned long long qid, unsigned long long mid,
                          long long location) except *:
        """Queue qid's entry for mid (its ENQ at location) is gone: its records are dead,
        and the message too when no other queue holds it."""
        self.dead(location, C_ENQ_SIZE)
        delivered = self.dlvs.get(qid)
        if delivered:
            dloc = delivered.pop(mid, None)
            if dloc is not None:
                self.dead(dloc, C_REF_SIZE)
        holders = self.shared.pop(mid, 1)
        if holders > 2:
            self.shared[mid] = holders - 1
        elif holders == 1:
            m = self.msgs.pop(mid)
            self.dead(m >> 32, m & 0xFFFFFFFF)


cdef class LogCore:
    """Appends and the per-message records of the store (mq.store.log.Store)."""

    def __cinit__(self, *args, **kwargs):
        self.flow_publishers = set()

    cpdef bint behind(self):
        """More is waiting for the disk than STORE_BEHIND_BYTES: persistent publishers wait."""
        return self._flusher.unwritten > C_BEHIND

    def consumed_by(self, owner) -> bool:
        """(As a queue answers credit flow: the store never is.)"""
        return False

    def caught_up(self) -> None:
        """After a flush: let held publishers go once the disk is back under half."""
        if self.flow_publishers and self._flusher.unwritten <= C_BEHIND // 2:
            publishers, self.flow_publishers = self.flow_publishers, set()
            for publisher in publishers:
                publisher.flow_off(self)

    @property
    def seq(self) -> int:
        """Sequence of the last appended record."""
        return self._flusher.seq

    cdef object _put(self, bytes data, long long *off):
        """Append data to the head segment (a new one when it is full); returns the segment
        and sets off."""
        seg = self._head
        cdef long long size = seg.size, n = len(data)
        if size and size + n > self.segment_size:
            seg = self._head = self._new_segment(seg.number + 1)
            size = 0
        off[0] = size
        seg.size = size + n
        self._flusher.submit(seg, size, data)
        return seg

    def _append(self, bytes data) -> tuple:
        cdef long long off
        seg = self._put(data, &off)
        return seg, off

    cpdef void _tombstone(self, bytes data, long long target_loc) except *:
        """Append a record cancelling a dead record at target_loc; it stays live while that
        record's segment exists."""
        cdef long long off
        seg = self._put(data, &off)
        self._index.pin(seg, off, len(data), self._index.segments[target_loc >> 32])

    def _new_id(self) -> int:
        return self._take_id()

    cdef unsigned long long _take_id(self):
        self._next_id += 1
        return self._next_id - 1

    cpdef void enqueue(self, unsigned long long qid, Message msg, double expires_at=0.0) except *:
        """A persistent message entered durable queue `qid`. The message itself is written
        once, however many queues it enters."""
        cdef IndexCore index = self._index
        cdef unsigned long long mid = msg.store_id
        cdef long long off
        if mid and mid in index.msgs:
            index.shared[mid] = index.shared.get(mid, 1) + 1
        else:
            mid = msg.store_id = self._take_id()
            data = message_record(mid, msg.exchange, msg.routing_key, msg.props, msg.body)
            seg = self._put(data, &off)
            index.live(seg, len(data))
            # location << 32 | size: past 64 bits (a wide IdMap), so in Python ints
            index.msgs[mid] = (<object>_loc(seg, off)) << 32 | len(data)
        seg = self._put(enqueue_record(qid, mid, expires_at), &off)
        index.live(seg, C_ENQ_SIZE)
        (<IdMap>index.queues[qid])[mid] = _loc(seg, off)

    cpdef void delivered(self, unsigned long long qid, unsigned long long mid) except *:
        """Handed to a consumer that must ack: after a crash it comes back redelivered."""
        cdef IndexCore index = self._index
        cdef long long off
        entries = index.queues.get(qid)
        if entries is None or mid not in entries:
            return
        delivered = index.dlvs.get(qid)
        if delivered is None:
            delivered = index.dlvs[qid] = IdMap()
        if mid not in delivered:
            seg = self._put(ref_record(DLV, qid, mid), &off)
            index.live(seg, C_REF_SIZE)
            delivered[mid] = _loc(seg, off)

    cpdef void ack(self, unsigned long long qid, unsigned long long mid) except *:
        """The message left queue `qid` (acked, expired, dropped, dead-lettered)."""
        cdef IndexCore index = self._index
        cdef long long off
        entries = index.queues.get(qid)
        location = entries.pop(mid, None) if entries is not None else None
        if location is None:
            return
        index.drop_entry(qid, mid, location)
        self._tombstone(ref_record(ACK, qid, mid), location)
