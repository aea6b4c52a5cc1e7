from mq._core.message cimport Message


cpdef bytes identity(Message msg)


cdef class Cache:
    cdef readonly Py_ssize_t size
    cdef readonly long long ttl_ms
    cdef readonly object entries
    cdef public object on_change

    cpdef bint duplicate(self, Message msg) except -1


cdef class QueueIdentities:
    cdef set keys

    cpdef bint admit(self, Message msg) except -1
    cpdef void left(self, Message msg) except *
    cpdef void forget_all(self)
