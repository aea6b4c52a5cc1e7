"""The hash ring of an x-consistent-hash exchange.

Each dest owns weight * POINTS_PER_WEIGHT points on a 32-bit ring, placed by
mmh3 hashes of its name seeded with the point index; a key goes to the dest
owning the nearest point at or below the key's hash (wrapping around), as the
ring of RabbitMQ's original consistent-hash exchange did. Points depend only on the
dest's own name, so adding or removing a dest moves only the keys it gains or
had. (RabbitMQ >= 3.8 uses jump hashing over renumbered buckets instead, which
moves other dests' keys when a binding other than the last one goes.)
"""
from libc.stdint cimport uint32_t, uint64_t
from libc.stdlib cimport free, qsort, realloc

import mmh3

# Random arcs make a dest's share vary by about 1/sqrt(its points); 1024
# points per unit of weight keeps a weight-1 dest within a few percent.
POINTS_PER_WEIGHT = 1024
# Bounds the memory one binding can take (16 bytes a point).
MAX_WEIGHT = 1000

cdef struct Point:
    # High 32 bits: the place on the ring. Low 32 bits: a tie-break, so the
    # order of colliding points never depends on the order dests were added.
    uint64_t pos
    Py_ssize_t slot             # index into HashRing._dests


cdef int _cmp_points(const void* a, const void* b) noexcept nogil:
    cdef uint64_t x = (<const Point*>a).pos
    cdef uint64_t y = (<const Point*>b).pos
    return (x > y) - (x < y)


cdef class HashRing:
    """Picks one dest per key, in proportion to the dests' weights."""
    cdef Point* _points         # sorted by pos
    cdef Py_ssize_t _npoints
    cdef list _dests            # slot -> dest
    cdef dict _slots            # dest -> slot

    def __cinit__(self):
        self._dests = []
        self._slots = {}

    def __dealloc__(self):
        free(self._points)

    def __len__(self) -> int:
        return len(self._dests)

    def add(self, object dest, str name, int weight) -> None:
        """Put dest on the ring with weight shares; name places its points.

        Adding a dest that is already there replaces its points.
        """
        if not 1 <= weight <= MAX_WEIGHT:
            raise ValueError(
                f"consistent-hash weight must be between 1 and {MAX_WEIGHT}, "
                f"got {weight}")
        self.remove(dest)
        cdef Py_ssize_t count = weight * POINTS_PER_WEIGHT
        cdef Point* points = <Point*>realloc(
            self._points, (self._npoints + count) * sizeof(Point))
        if points is NULL:
            raise MemoryError()
        self._points = points
        cdef Py_ssize_t slot = len(self._dests)
        cdef bytes ident = name.encode("utf-8")
        cdef Py_ssize_t i
        cdef Point* p
        hash64 = mmh3.hash64
        for i in range(count):
            p = &points[self._npoints + i]
            # The point index is the seed: no per-point string to build.
            p.pos = hash64(ident, i, signed=False)[0]
            p.slot = slot
        self._npoints += count
        qsort(points, self._npoints, sizeof(Point), _cmp_points)
        self._dests.append(dest)
        self._slots[dest] = slot

    def remove(self, object dest) -> bool:
        """Take dest off the ring; True if it was on it."""
        cdef Py_ssize_t slot = self._slots.pop(dest, -1)
        if slot < 0:
            return False
        cdef Py_ssize_t i, kept = 0
        for i in range(self._npoints):
            if self._points[i].slot != slot:
                self._points[kept] = self._points[i]
                if self._points[kept].slot > slot:
                    self._points[kept].slot -= 1
                kept += 1
        self._npoints = kept
        del self._dests[slot]
        for moved in self._dests[slot:]:
            self._slots[moved] -= 1
        return True

    def pick(self, key) -> object:
        """The dest for key (bytes or str), or None if the ring is empty."""
        if self._npoints == 0:
            return None
        cdef uint32_t h = mmh3.hash(key, signed=False)
        # Last point whose ring place (high 32 bits) is <= h.
        cdef uint64_t bound = ((<uint64_t>h) << 32) | 0xFFFFFFFFu
        cdef Py_ssize_t lo = 0, hi = self._npoints, mid
        while lo < hi:
            mid = (lo + hi) >> 1
            if self._points[mid].pos <= bound:
                lo = mid + 1
            else:
                hi = mid
        # lo == 0: h is below every point, so wrap to the highest one.
        return self._dests[self._points[(lo if lo else self._npoints) - 1].slot]
