cdef class Message:
    cdef readonly str exchange
    cdef readonly str routing_key
    cdef readonly bytes props
    cdef readonly object body
    cdef readonly int delivery_mode
    cdef readonly int priority
    cdef readonly object expiration
    cdef readonly object reply_to
    cdef readonly object user_id
    cdef Py_ssize_t _hdr_start
    cdef Py_ssize_t _hdr_end
    cdef object _headers
    cdef object _identity  # deduplication's (mq._core.dedup): bytes, False: none, None: unread
    cdef public long long store_id
    cdef public tuple bcc  # BCC routing keys, kept after the header is removed

    cdef str _shortstr(self, const unsigned char *p, Py_ssize_t *off, Py_ssize_t end)
    cdef void _need(self, Py_ssize_t off, Py_ssize_t n, Py_ssize_t end) except *
    cdef void _scan(self) except *
    cdef Py_ssize_t field(self, const char *key, Py_ssize_t key_size) noexcept
    cpdef object integer_header(self, bytes name)
    cdef object scalar_at(self, Py_ssize_t at)
