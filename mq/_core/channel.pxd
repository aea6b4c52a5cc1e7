from mq._core.delivery cimport Deliveries
from mq._core.publish cimport RouteCache


cdef class ChannelCore:
    cdef public int number
    cdef public object conn
    cdef public object current_method
    cdef public Deliveries deliveries
    cdef public bint confirm
    cdef public bint tx
    cdef public long long publish_seq
    cdef public long long published
    cdef public object unconfirmed
    cdef public set _writable
    cdef public object _pending
    cdef public long long max_message_size
    cdef public object store
    cdef RouteCache _routes

    cpdef bint ready_for_publish(self)
    cpdef void publish_assembled(self, str exchange_name, str routing_key, bint mandatory,
                                 bytes props, object body) except *
    cpdef void ack_assembled(self, unsigned long long delivery_tag, bint multiple) except *
    cpdef void confirm_outcome(self, long long outcome) except *
