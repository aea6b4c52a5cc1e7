from libc.stdint cimport int64_t, uint32_t, uint64_t


cdef struct Slot:
    uint64_t key    # 0: an empty slot (store ids start at 1)
    int64_t value


cdef class IdMap:
    cdef Slot *slots         # capacity: mask + 1, a power of two; NULL until the first entry
    cdef uint32_t *low       # wide maps only: each value's low 32 bits, beside its slot
    cdef size_t mask
    cdef Py_ssize_t used
    cdef readonly bint wide
    cdef size_t version      # bumped whenever entries come, go or move: iterators check it

    cdef Py_ssize_t find(self, uint64_t key) noexcept
    cdef int put(self, uint64_t key, int64_t value, uint32_t low) except -1
    cdef void delete_at(self, Py_ssize_t i) noexcept
    cdef int _resize(self, size_t capacity) except -1
    cdef object _value(self, Py_ssize_t i)
    cdef int _set(self, uint64_t key, value) except -1
