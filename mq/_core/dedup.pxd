from cpython.object cimport PyObject

from mq._core.message cimport Message


cpdef bytes identity(Message msg)


cdef class Cache:
    cdef readonly Py_ssize_t size
    cdef readonly long long ttl_ms
    cdef dict _expiry
    cdef PyObject **_ring
    cdef Py_ssize_t _capacity, _head, _count
    cdef public object on_change

    cpdef bint duplicate(self, Message msg) except -1
    cdef void _append(self, bytes key) except *
    cdef void _forget_oldest(self) except *
    cdef void _grow(self) except *


cdef class QueueIdentities:
    cdef set keys

    cpdef bint admit(self, Message msg) except -1
    cpdef void left(self, Message msg) except *
    cpdef void forget_all(self)
