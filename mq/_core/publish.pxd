from mq._core.message cimport Message


cpdef long long enqueue(object store, object queues, Message msg, object flow_to,
                        object waiter) except -3


cdef class Topology:
    cdef public long long version


cdef class RouteCache:
    cdef Topology _topology
    cdef long long _version
    cdef dict _routes

    cdef tuple lookup(self, str exchange_name, str routing_key, object conn)
    cdef bint _current(self)
