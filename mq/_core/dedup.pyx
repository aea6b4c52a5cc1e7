# cython: language_level=3
"""Deduplication's per-message work (B-DEDUP-1, B-DEDUP-2): a message's identity, read from
its property bytes; an exchange's cache of the identities it has seen; a queue's set of the
identities of the messages in it. What the settings mean and how a cache is kept are
mq.broker.dedup's.

An identity is bytes: a string header's own bytes (what the plugin compares), any other
value's str() in UTF-8."""
from cpython.dict cimport PyDict_DelItem
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.object cimport PyObject
from cpython.ref cimport Py_DECREF, Py_INCREF
from cpython.set cimport PySet_GET_SIZE
from posix.time cimport CLOCK_REALTIME, clock_gettime, timespec

from mq._core.message cimport Message


cdef extern from "Python.h":
    Py_ssize_t PyDict_GET_SIZE(object d)
    PyObject *PyDict_SetDefault(object d, object key, object default_value) except NULL

HEADER = "x-deduplication-header"
TTL_HEADER = "x-cache-ttl"
cdef bytes C_HEADER = HEADER.encode()
cdef bytes C_TTL_HEADER = TTL_HEADER.encode()
# Sizes and TTLs past any real use are taken as this: now + TTL stays within 64 bits.
cdef long long LIMIT = 1LL << 62


cdef long long _now_ms() noexcept:
    """Wall-clock ms (expiries are kept across restarts)."""
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return <long long>ts.tv_sec * 1000 + ts.tv_nsec // 1000000


cpdef bytes identity(Message msg):
    """The message's identity, None: it has none. Read once and kept on the message: a
    queue finds it again when the message leaves, as the same object (a set's lookup then
    matches it by address, without reading the key it holds)."""
    if msg._identity is None:
        msg._identity = _read_identity(msg)
    return None if msg._identity is False else msg._identity


cdef object _read_identity(Message msg):
    """The identity, False: none."""
    cdef Py_ssize_t at = msg.field(C_HEADER, len(C_HEADER))
    if at == -1:
        return False
    value = msg.scalar_at(at) if at >= 0 else None
    if value is None:  # another type, or a table to decode in full
        value = (msg.headers or {}).get(HEADER)
    if value is None:
        return False
    return value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogateescape")


cdef long long _ttl_header(Message msg) except -1:
    """The message's own x-cache-ttl in ms, 0: none (or not a positive integer)."""
    value = msg.integer_header(C_TTL_HEADER)
    return min(value, LIMIT) if value is not None and value > 0 else 0


cdef class Cache:
    """An exchange's identities: identity -> expiry in wall-clock ms (0: never), at most
    `size` of them, the oldest forgotten first. ttl_ms 0: kept until pushed out.

    A dict holds the expiries and a ring of references the order they came in (cheaper, and
    lighter on the CPU's caches, than an OrderedDict). An identity seen again after it
    expired keeps its place in the order, as in LavinMQ (the plugin's cache does not say)."""

    def __cinit__(self, size, ttl_ms=None):
        self.size = min(size, LIMIT)
        self.ttl_ms = min(ttl_ms or 0, LIMIT)
        self._expiry = {}
        self._ring = NULL
        self._capacity = self._head = self._count = 0
        self.on_change = None  # called after a change (the saver)

    def __dealloc__(self):
        cdef Py_ssize_t i
        for i in range(self._count):
            Py_DECREF(<object>self._ring[(self._head + i) % self._capacity])
        PyMem_Free(self._ring)

    cpdef bint duplicate(self, Message msg) except -1:
        """Seen within its TTL: a duplicate. Else it is remembered now."""
        key = identity(msg)
        if key is None:
            return False
        cdef long long now = _now_ms(), ttl = _ttl_header(msg) or self.ttl_ms
        new_expiry = (now + ttl) if ttl else 0
        # One lookup for the common new identity: it goes in unless one is there already.
        cdef dict expiries = self._expiry
        cdef Py_ssize_t before = PyDict_GET_SIZE(expiries)
        cdef long long held = <object>PyDict_SetDefault(expiries, key, new_expiry)
        if PyDict_GET_SIZE(expiries) != before:
            self._append(key)
        elif held == 0 or held > now:
            return True
        else:
            expiries[key] = new_expiry  # expired: remembered again, in its place
        if self.on_change is not None:
            self.on_change()
        return False

    def restore(self, bytes key, long long expiry) -> None:
        """Remember an identity (one kept in a file), as the newest if it is new."""
        is_new = key not in self._expiry
        self._expiry[key] = expiry
        if is_new:
            self._append(key)

    cdef void _append(self, bytes key) except *:
        """An identity just put in the dict is the newest (the oldest goes if it is full)."""
        if self._count >= self.size:
            self._forget_oldest()
        if self._count == self._capacity:
            self._grow()
        cdef PyObject *ref = <PyObject *>key
        Py_INCREF(key)
        self._ring[(self._head + self._count) % self._capacity] = ref
        self._count += 1

    cdef void _forget_oldest(self) except *:
        cdef PyObject *ref = self._ring[self._head]
        self._head = (self._head + 1) % self._capacity
        self._count -= 1
        PyDict_DelItem(self._expiry, <object>ref)
        Py_DECREF(<object>ref)

    cdef void _grow(self) except *:
        """Double the ring (up to size), its oldest first again."""
        cdef Py_ssize_t capacity = min(self.size, max(16, self._capacity * 2)), i
        cdef PyObject **ring = <PyObject **>PyMem_Malloc(capacity * sizeof(PyObject *))
        if ring is NULL:
            raise MemoryError()
        for i in range(self._count):
            ring[i] = self._ring[(self._head + i) % self._capacity]
        PyMem_Free(self._ring)
        self._ring = ring
        self._capacity = capacity
        self._head = 0

    def items(self) -> list:
        """[identity, expiry] pairs, the oldest first."""
        keys = [<object>self._ring[(self._head + i) % self._capacity]
                for i in range(self._count)]
        return [[key, self._expiry[key]] for key in keys]

    def __len__(self) -> int:
        return self._count


cdef class QueueIdentities:
    """A queue's identities of the messages in it (queue-level deduplication)."""

    def __cinit__(self):
        self.keys = set()

    cpdef bint admit(self, Message msg) except -1:
        """False: a message with its identity is in the queue (drop this one)."""
        key = identity(msg)
        if key is None:
            return True
        cdef Py_ssize_t before = PySet_GET_SIZE(self.keys)
        self.keys.add(key)  # one lookup: in unless it is there already
        return PySet_GET_SIZE(self.keys) != before

    cpdef void left(self, Message msg) except *:
        key = identity(msg)
        if key is not None:
            self.keys.discard(key)

    cpdef void forget_all(self):
        self.keys.clear()
