"""Segment files of the log, and where a record is: a location is segment number << 32 |
offset. The file operations the store makes on them live here too, in one place."""
from __future__ import annotations

import os


class Segment:
    """One segment file and the index's counts of what in it is still live."""

    __slots__ = ("number", "path", "fd", "rfd", "size", "flushed", "live_count", "live_bytes",
                 "tombs", "pins", "last_seq", "synced")

    def __init__(self, number: int, path: str, size: int = 0) -> None:
        self.number = number
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.rfd = -1               # opened when a paged-out message is read back
        self.size = size
        self.flushed = size         # bytes the flusher has written (readable with pread)
        self.live_count = 0
        self.live_bytes = 0
        self.tombs: dict[int, tuple[int, Tomb]] = {}  # its live tombstones: offset -> (size, tomb)
        self.pins: list[Tomb] = []  # tombstones elsewhere that cancel dead records here
        self.last_seq = 0           # the append sequence of its last record
        self.synced = size > 0      # its directory entry is durable

    def read(self, size: int, off: int) -> bytes:
        if self.rfd < 0:
            self.rfd = os.open(self.path, os.O_RDONLY)
        return os.pread(self.rfd, size, off)

    def close(self) -> None:
        os.close(self.fd)
        if self.rfd >= 0:
            os.close(self.rfd)
            self.rfd = -1


class Tomb:
    """A live tombstone (ACK or DELETE record) and where it currently is."""

    __slots__ = ("seg", "off")

    def __init__(self, seg: Segment, off: int) -> None:
        self.seg: Segment | None = seg
        self.off = off


def loc(seg: Segment, off: int) -> int:
    return (seg.number << 32) | off


def segment_path(directory: str, number: int) -> str:
    return os.path.join(directory, "log", f"{number:08d}.seg")


def sync_dir(path: str) -> None:
    """Make the directory's entries (created, renamed, removed files) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
