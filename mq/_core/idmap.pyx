# cython: language_level=3
"""IdMap: store id -> integer, an open-addressing hash table in C memory.

The store's index has an entry per queued message in several tables (mq/store/index.py); as
Python dicts each entry cost about 100 bytes (the slot plus two int objects), a million
queued messages a few hundred MB. Here a slot is 16 bytes (key, value), 20 in a wide map.

Linear probing in a power-of-two table, filled to at most 3/4; a deletion shifts the entries
after it back (no tombstones, so lookups never slow down as entries come and go), and the
table halves once it is less than 1/8 full. Key 0 marks an empty slot: store ids start at 1.
Iteration goes in table order, not in insertion order as a dict's does.

Values are int64. A wide map (IdMap(wide=True)) holds values of up to 96 bits, seen from
Python as one int: the high 64 bits in the slot, the low 32 in a column beside it (the
index's msgs: location << 32 | record size, where a location is itself 64 bits).
"""
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.string cimport memset

cdef extern from *:
    """
    /* Ids 4k..4k+3 share a cache line (4 slots): a queue's ids mostly come in sequence, and
       replaying or recovering a million of them then misses the cache a quarter as often.
       The line is chosen by murmur3's finalizer, as some id patterns would cluster. */
    static inline uint64_t idmap_hash(uint64_t k) {
        uint64_t h = k >> 2;
        h ^= h >> 33; h *= 0xff51afd7ed558ccdULL;
        h ^= h >> 33; h *= 0xc4ceb9fe1a85ec53ULL;
        return (h ^ (h >> 33)) << 2 | (k & 3);
    }
    """
    uint64_t idmap_hash(uint64_t k) noexcept nogil

DEF MIN_CAPACITY = 8

cdef object _MISSING = object()


cdef class IdMap:

    def __init__(self, bint wide=False):
        self.wide = wide

    def __dealloc__(self):
        PyMem_Free(self.slots)

    # ---- typed API, for Cython callers ---------------------------------------------------

    cdef Py_ssize_t find(self, uint64_t key) noexcept:
        """The slot of key, or -1."""
        cdef size_t i
        cdef uint64_t k
        if self.slots == NULL or key == 0:
            return -1
        i = idmap_hash(key) & self.mask
        while True:
            k = self.slots[i].key
            if k == key:
                return <Py_ssize_t>i
            if k == 0:
                return -1
            i = (i + 1) & self.mask

    cdef int put(self, uint64_t key, int64_t value, uint32_t low) except -1:
        """Set key's value (low: its low 32 bits, in a wide map)."""
        cdef Py_ssize_t found = self.find(key)
        cdef size_t i
        if found < 0:
            if key == 0:
                raise ValueError("IdMap: key 0 is reserved")
            if self.slots == NULL or <size_t>(self.used + 1) * 4 > (self.mask + 1) * 3:
                self._resize(2 * (self.mask + 1) if self.slots != NULL else MIN_CAPACITY)
            i = idmap_hash(key) & self.mask
            while self.slots[i].key:
                i = (i + 1) & self.mask
            self.slots[i].key = key
            self.used += 1
            self.version += 1
            found = <Py_ssize_t>i
        self.slots[found].value = value
        if self.wide:
            self.low[found] = low
        return 0

    cdef void delete_at(self, Py_ssize_t at) noexcept:
        """Remove the entry in slot at (from find): each entry after it in its run moves
        back into the gap unless that would put it before its home slot."""
        cdef size_t i = <size_t>at, j = <size_t>at, home, mask = self.mask
        cdef uint64_t k
        while True:
            j = (j + 1) & mask
            k = self.slots[j].key
            if k == 0:
                break
            home = idmap_hash(k) & mask
            if ((j - home) & mask) >= ((j - i) & mask):
                self.slots[i] = self.slots[j]
                if self.wide:
                    self.low[i] = self.low[j]
                i = j
        self.slots[i].key = 0
        self.used -= 1
        self.version += 1
        if mask + 1 > MIN_CAPACITY and <size_t>self.used * 8 < mask + 1:
            try:
                self._resize((mask + 1) // 2)
            except MemoryError:  # (the larger table still works)
                pass

    cdef int _resize(self, size_t capacity) except -1:
        """Rehash every entry into a new table of capacity slots."""
        cdef size_t per_slot = sizeof(Slot) + (sizeof(uint32_t) if self.wide else 0)
        cdef Slot *slots = <Slot *>PyMem_Malloc(capacity * per_slot)
        cdef uint32_t *low = <uint32_t *>(slots + capacity)
        cdef Slot *old = self.slots
        cdef uint32_t *old_low = self.low
        cdef size_t n = self.mask + 1 if old != NULL else 0, i, j, mask = capacity - 1
        if slots == NULL:
            raise MemoryError()
        memset(slots, 0, capacity * sizeof(Slot))
        for i in range(n):
            if old[i].key:
                j = idmap_hash(old[i].key) & mask
                while slots[j].key:
                    j = (j + 1) & mask
                slots[j] = old[i]
                if self.wide:
                    low[j] = old_low[i]
        self.slots, self.low, self.mask = slots, low, mask
        self.version += 1
        PyMem_Free(old)
        return 0

    cdef object _value(self, Py_ssize_t i):
        if self.wide:
            return (<object><uint64_t>self.slots[i].value) << 32 | self.low[i]
        return self.slots[i].value

    cdef int _set(self, uint64_t key, value) except -1:
        if self.wide:
            return self.put(key, <int64_t><uint64_t>(value >> 32), <uint32_t>(value & 0xFFFFFFFF))
        return self.put(key, <int64_t>value, 0)

    # ---- dict-like API ---------------------------------------------------------------------

    def __len__(self) -> int:
        return self.used

    def __contains__(self, uint64_t key) -> bool:
        return self.find(key) >= 0

    # (keys as objects: Cython would convert a mapping's key through Py_ssize_t)
    def __getitem__(self, key):
        cdef Py_ssize_t i = self.find(<uint64_t>key)
        if i < 0:
            raise KeyError(key)
        return self._value(i)

    def __setitem__(self, key, value) -> None:
        self._set(<uint64_t>key, value)

    def __delitem__(self, key) -> None:
        cdef Py_ssize_t i = self.find(<uint64_t>key)
        if i < 0:
            raise KeyError(key)
        self.delete_at(i)

    def get(self, uint64_t key, default=None):
        cdef Py_ssize_t i = self.find(key)
        return default if i < 0 else self._value(i)

    def pop(self, uint64_t key, default=_MISSING):
        cdef Py_ssize_t i = self.find(key)
        if i < 0:
            if default is _MISSING:
                raise KeyError(key)
            return default
        value = self._value(i)
        self.delete_at(i)
        return value

    def clear(self) -> None:
        PyMem_Free(self.slots)
        self.slots, self.low, self.mask, self.used = NULL, NULL, 0, 0
        self.version += 1

    def __iter__(self):
        return self._walk(False)

    def keys(self):
        return self._walk(False)

    def items(self):
        return self._walk(True)

    def _walk(self, bint items):
        """Keys, or (key, value) pairs; like a dict's, an error when entries come or go
        meanwhile (they may move then)."""
        cdef size_t version = self.version, i
        for i in range(self.mask + 1 if self.slots != NULL else 0):
            if self.version != version:
                raise RuntimeError("IdMap changed size during iteration")
            if self.slots[i].key:
                yield (self.slots[i].key, self._value(i)) if items else self.slots[i].key
        if self.version != version:
            raise RuntimeError("IdMap changed size during iteration")

    def __sizeof__(self) -> int:
        cdef size_t per_slot = sizeof(Slot) + (sizeof(uint32_t) if self.wide else 0)
        return object.__sizeof__(self) + ((self.mask + 1) * per_slot if self.slots != NULL else 0)

    def __repr__(self) -> str:
        return f"IdMap({dict(self.items())!r})"
