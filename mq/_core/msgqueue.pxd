from mq._core.message cimport Message

cdef class Entry:
    cdef public Message msg
    cdef public long long seq
    cdef public int level
    cdef public double expires_at
    cdef public bint redelivered
    cdef public bint removed
    cdef public int delivery_count

cdef class MessageQueue:
    cdef list _levels
    cdef int _top
    cdef long long _seq
    cdef list _deadlines
    cdef Py_ssize_t _holes  # removed entries still sitting in a level's deque
    cdef readonly int max_priority
    cdef readonly Py_ssize_t count
    cdef readonly Py_ssize_t bytes

    cdef inline int _level_of(self, Message msg)
    cdef Entry _take_first(self, object q)
    cpdef Entry push(self, Message msg, double expires_at=*)
    cpdef Entry pop(self)
    cpdef Entry peek(self)
    cpdef void remove(self, Entry e)
    cdef void _track(self, Entry e)
    cdef void _compact(self)
    cdef void _sweep_levels(self)
