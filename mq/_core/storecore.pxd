from mq._core.idmap cimport IdMap
from mq._core.message cimport Message


cdef class Tomb:
    cdef public object seg
    cdef public long long off
    cdef public long long size


cdef class FlusherCore:
    cdef public unsigned long long seq
    cdef public unsigned long long _handed_seq
    cdef public long long unwritten
    cdef public list _open
    cdef public bint _handoff_due
    cdef public object _thread
    cdef public object _loop

    cpdef void submit(self, object seg, long long off, bytes data) except *


cdef class IndexCore:
    cdef public dict segments
    cdef public IdMap msgs
    cdef public IdMap shared
    cdef public dict queues
    cdef public dict dlvs
    cdef public set dirty

    cpdef void live(self, object seg, long long size) except *
    cpdef void dead(self, long long location, long long size) except *
    cpdef void dead_in(self, object seg, long long size) except *
    cpdef void pin(self, object seg, long long off, long long size, object target) except *
    cpdef void drop_entry(self, unsigned long long qid, unsigned long long mid,
                          long long location) except *


cdef class LogCore:
    cdef public object _head
    cdef public long long segment_size
    cdef public unsigned long long _next_id
    cdef public IndexCore _index
    cdef public FlusherCore _flusher
    cdef public set flow_publishers

    cdef object _put(self, bytes data, long long *off)
    cdef unsigned long long _take_id(self)
    cpdef void _tombstone(self, bytes data, long long target_loc) except *
    cpdef void enqueue(self, unsigned long long qid, Message msg, double expires_at=*) except *
    cpdef void delivered(self, unsigned long long qid, unsigned long long mid) except *
    cpdef void ack(self, unsigned long long qid, unsigned long long mid) except *
    cpdef bint behind(self)
