"""Segment files of the log, and where a record is: a location is segment number << 32 |
offset. The file operations the store makes on them live here too, in one place.

Every write, fsync and truncation of a segment file goes through write_all, datasync,
truncate and sync_dir below. That is also the seam where tests inject disk faults
(B-DUR-8): with the environment variable MQ_TEST_FAULT_FILE=<path> set, while <path> holds
"enospc" a write stores half of what it was given and then raises OSError(ENOSPC) (a disk
that fills up in the middle of a write), and while it holds "eio" writes succeed but every
fsync raises OSError(EIO) (a failed writeback: Linux may then drop the dirty pages, so what
was written since the last good fsync cannot be trusted). "slow" makes every fsync take
SLOW_SYNC seconds more (a slow disk: nothing may wait for it on the event loop, B-DUR-9).
The file is read once per flush batch (check_faults), so the seam costs nothing otherwise;
without the variable it is off.
"""
from __future__ import annotations

import errno
import os
import time

from mq._core.storecore import Tomb

__all__ = ["Segment", "Tomb", "check_faults", "datasync", "fsync_file", "loc", "segment_path",
           "sync_dir", "truncate", "write_all", "write_atomic"]

FAULT_FILE_ENV = "MQ_TEST_FAULT_FILE"
_FAULTS = {"eio": errno.EIO, "enospc": errno.ENOSPC}
_fault_file = os.environ.get(FAULT_FILE_ENV) or None
_fault = 0  # the errno injected into this flush batch (0: none)
_slow = False
SLOW_SYNC = 0.5


class Segment:
    """One segment file and the index's counts of what in it is still live."""

    __slots__ = ("number", "path", "fd", "rfd", "size", "flushed", "live_count", "live_bytes",
                 "tombs", "pins", "last_seq", "dir_synced", "compacting")

    def __init__(self, number: int, path: str, size: int = 0) -> None:
        self.number = number
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.rfd = -1               # opened when a paged-out message is read back
        self.size = size            # bytes appended (some may still be in the flusher's hands)
        # Bytes written and fsynced: the file holds them for good (readable with pread).
        # Past it, the records are in the flusher's memory until a write and fsync succeed.
        self.flushed = size
        self.live_count = 0
        self.live_bytes = 0
        self.tombs: dict[int, Tomb] = {}  # its live tombstones, by offset
        self.pins: list[Tomb] = []  # tombstones elsewhere that cancel dead records here
        self.last_seq = 0           # the append sequence of its last record
        self.dir_synced = size > 0  # its directory entry is durable
        self.compacting = False     # queued for compaction or being compacted (log.py)

    def read(self, size: int, off: int) -> bytes:
        if self.rfd < 0:
            self.rfd = os.open(self.path, os.O_RDONLY)
        return os.pread(self.rfd, size, off)

    def close(self) -> None:
        """Close its files (again: no-op)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.rfd >= 0:
            os.close(self.rfd)
            self.rfd = -1


def loc(seg: Segment, off: int) -> int:
    return (seg.number << 32) | off


def segment_path(directory: str, number: int) -> str:
    return os.path.join(directory, "log", f"{number:08d}.seg")


# ---- file operations (and the fault-injection seam of the tests) -------------------------

def check_faults() -> None:
    """Read the test fault file, if one is configured (once per flush batch)."""
    global _fault, _slow
    if _fault_file is None:
        return
    try:
        with open(_fault_file) as fh:
            word = fh.read().strip().lower()
    except OSError:
        word = ""
    _fault = _FAULTS.get(word, 0)
    _slow = word == "slow"


def _raise(code: int) -> None:
    raise OSError(code, os.strerror(code))


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Write all of data at the end of the file (O_APPEND)."""
    view = memoryview(data)
    if _fault == errno.ENOSPC:
        view = view[:len(view) // 2]
        while view:
            view = view[os.write(fd, view):]
        _raise(errno.ENOSPC)
    while view:
        view = view[os.write(fd, view):]


def datasync(fd: int) -> None:
    if _fault == errno.EIO:
        _raise(errno.EIO)
    if _slow:
        time.sleep(SLOW_SYNC)
    os.fdatasync(fd)


def truncate(fd: int, size: int) -> None:
    os.ftruncate(fd, size)


def fsync_file(path: str) -> None:
    """Make a file's contents durable (one written or cut by other means than a Segment)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_dir(path: str) -> None:
    """Make the directory's entries (created, renamed, removed files) durable."""
    if _fault == errno.EIO:
        _raise(errno.EIO)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str, data: bytes) -> None:
    """Replace a small file's content crash-safely: a temporary file, fsynced, renamed over
    it, the directory fsynced."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    sync_dir(os.path.dirname(path))
