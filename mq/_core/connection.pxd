cdef class ConnectionCore:
    cdef public dict channels
    cdef public dict pending_dispatch
    cdef public object state
    cdef public bint closed
    cdef public bint blocked
    cdef public tuple alarms
    cdef public object reader
    cdef public object _disk_wait
    cdef public object _held_events
    cdef public object _current_method

    cdef void _hot(self, tuple event) except *
