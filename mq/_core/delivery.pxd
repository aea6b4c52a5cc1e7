from mq._core.dedup cimport QueueIdentities
from mq._core.message cimport Message
from mq._core.msgqueue cimport Entry, MessageQueue

cdef class QueueCore
cdef class ConsumerCore


cdef class Output:
    cdef public bint writable
    cdef public int frame_max
    cdef public bint sent
    cdef public bint in_read
    cdef object _sink
    cdef object _schedule
    cdef list _chunks
    cdef Py_ssize_t _size
    cdef Py_ssize_t _limit
    cdef bint _flush_due

    cpdef void write(self, bytes data) except *
    cpdef void flush(self) except *


cdef class Deliveries:
    cdef readonly int number
    cdef readonly Output out
    cdef public bint open
    cdef public int limit
    cdef readonly Py_ssize_t counted
    cdef readonly long long last_tag
    cdef readonly Py_ssize_t count
    cdef list _entries
    cdef list _queues
    cdef list _consumers
    cdef Py_ssize_t _head
    cdef long long _base

    cdef void _put(self, long long tag, Entry entry, QueueCore queue, object consumer) except *
    cdef void _add(self, long long tag, Entry entry, QueueCore queue, object consumer) except *
    cdef void _trim(self)
    cdef list _take(self, unsigned long long tag, bint multiple)
    cdef bint _range(self, unsigned long long tag, bint multiple, Py_ssize_t *lo, Py_ssize_t *hi)
    cdef void _count(self, QueueCore queue, object consumer, int n)


cdef class ConsumerCore:
    cdef public Deliveries deliveries
    cdef public object queue
    cdef public str tag
    cdef public bint no_ack
    cdef public bint exclusive
    cdef public int priority
    cdef public int prefetch
    cdef readonly int unacked

    cpdef bint has_room(self)
    cdef void deliver(self, Entry entry, QueueCore queue) except *


cdef class QueueCore:
    cdef public MessageQueue ready
    cdef public list _groups
    cdef public object _single_active
    cdef public object _handing_over
    cdef public object paged
    cdef public object store
    cdef public long long store_qid
    cdef public bint counts_deliveries
    cdef public bint _plain
    cdef public long long _budget
    cdef public set flow_publishers
    cdef public bint deleted
    cdef public int consumer_count
    cdef readonly Py_ssize_t unacked
    cdef public long long published, delivered, got, acked, redelivered
    cdef public QueueIdentities dedup  # queue-level deduplication, or None

    cpdef bint publish(self, Message msg) except *
    cdef bint _enqueue(self, Message msg) except -1
    cpdef void dispatch(self, double now=*) except *
    cdef ConsumerCore _pick_consumer(self)
    cpdef bint behind(self)
    cpdef bint backlog_above(self, int share)
    cpdef Py_ssize_t _in_memory(self)
    cpdef bint _over_budget(self)
    cpdef void _unstore(self, entries) except *
    cpdef void _left(self, entries) except *
    cpdef void _handed_out(self, Entry entry, bint no_ack) except *
