"""Messages a queue keeps on disk past its memory budget (B-FLOW-3), as RabbitMQ's classic
queues v2 do: transient messages and non-durable queues included.

Each queue that pages out gets a `PagedMessages`: per priority level, a FIFO chain of scratch
segment files under `<data dir>/paging/`. A stored message (persistent, in a durable queue)
is already in the log, so only its id is paged out; everything else is written whole. The
files are scratch: they are wiped at start (what was durable is in the log) and each segment
is unlinked once it has been read back.
"""
from __future__ import annotations

import itertools
import logging
import os
import shutil
import struct
from array import array
from collections import deque
from typing import Callable, Iterator

from mq._core import paged
from mq._core.message import Message

log = logging.getLogger("mq.store")

SEGMENT_SIZE = 16 * 1024 * 1024  # a segment file is closed for writing past this
WRITE_BUFFER = 256 * 1024        # paged records are written in chunks of about this
READ_CHUNK = 1024 * 1024         # and read back in chunks of about this
# Messages handed back to a queue at once: a chunk of references is up to 40k messages, each
# read from the log; all at once held the event loop for 25-135 ms (B-DUR-9).
TAKE_MAX = 2000

# (message, expires_at, redelivered): what a queue gets back
PagedEntry = tuple[Message, float, bool]
# A queue's stored messages as the store recovers them, in order, column by column: store
# ids (array "q"), expiries ("d"), redelivered flags ("B"), priorities ("B"), body sizes ("I").
StoredEntries = tuple[array, array, array, array, array]


class Pager:
    """Where queues page out to, and how much each may keep in memory."""

    def __init__(self, directory: str, budget: int) -> None:
        self.directory = directory
        self.budget = budget  # bytes a queue keeps in memory (0: never page out)
        self._names = itertools.count(1)
        shutil.rmtree(directory, ignore_errors=True)  # the last run's scratch

    def open(self) -> PagedMessages:
        """A new, empty set of paged messages for one queue."""
        os.makedirs(self.directory, exist_ok=True)
        return PagedMessages(os.path.join(self.directory, f"q{next(self._names)}"))


class _Segment:
    """One scratch file: written at its end, read from read_pos."""

    __slots__ = ("path", "fd", "size", "read_pos")

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self.size = 0      # bytes written to the file
        self.read_pos = 0

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            os.unlink(self.path)


class _Level:
    """The paged messages of one priority level, oldest first."""

    __slots__ = ("prefix", "segments", "buffer", "decoded", "count", "names", "failing")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.segments: deque[_Segment] = deque()
        self.buffer = bytearray()  # records not yet written to the last segment
        self.decoded: deque = deque()  # records read back, not yet taken (oldest first)
        self.count = 0             # messages in the segments, buffer and decoded
        self.names = itertools.count(1)
        self.failing = False       # the last write was refused (logged once)

    def flush(self) -> None:
        """Write the buffer to the last segment. A disk that refuses (full, failing) is not
        the publisher's error: what is not written stays in the buffer, in memory, and is
        read back from there (the disk alarm holds publishers meanwhile)."""
        if not self.buffer:
            return
        seg, start = None, 0
        view = memoryview(self.buffer)
        try:
            seg = self.segments[-1] if self.segments else None
            if seg is None or seg.size >= SEGMENT_SIZE:
                seg = _Segment(f"{self.prefix}.{next(self.names)}")
                self.segments.append(seg)
            start = seg.size
            while view:
                written = os.pwrite(seg.fd, view, seg.size)
                seg.size += written
                view = view[written:]
        except OSError as exc:
            if not self.failing:
                log.warning("paging: cannot write %s (%s); paged messages stay in memory "
                            "until the disk takes them", self.prefix, exc)
            self.failing = True
            if seg is not None:
                seg.size = start  # a record written in part is written again, whole, later
            return
        finally:
            view.release()
        self.buffer.clear()
        self.failing = False

    def read(self) -> list:
        """The next chunk of records, decoded. Only called while count > 0, so there are
        unread records in the segments or the write buffer (read from memory: never written,
        or refused by the disk)."""
        while self.segments and self.segments[0].read_pos >= self.segments[0].size:
            self.segments.popleft().close()
        if not self.segments:
            records, end = paged.decode(_chunk(lambda n: bytes(self.buffer[:n])))
            del self.buffer[:end]
            return records
        seg = self.segments[0]
        records, end = paged.decode(_chunk(
            lambda n: os.pread(seg.fd, min(n, seg.size - seg.read_pos), seg.read_pos)))
        if not records:
            raise OSError(f"paged-out messages in {seg.path} cannot be read back")
        seg.read_pos += end
        return records

    def close(self) -> None:
        for seg in self.segments:
            seg.close()
        self.segments.clear()
        self.buffer.clear()
        self.decoded.clear()
        self.count = 0


def _chunk(first: Callable[[int], bytes]) -> bytes:
    """About READ_CHUNK bytes of records from first(n) (the first n bytes there are), more
    when the first record alone is bigger."""
    data = first(READ_CHUNK)
    if len(data) >= 4:
        whole = 4 + struct.unpack_from("=I", data)[0]
        if whole > len(data):
            data = first(whole)
    return data


class PagedMessages:
    """One queue's paged-out messages, by priority level, each level in arrival order."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.levels: dict[int, _Level] = {}
        self.count = 0
        self.bytes = 0  # bodies, paged out or referenced

    def has(self, level: int) -> bool:
        lvl = self.levels.get(level)
        return lvl is not None and lvl.count > 0

    def top_level(self) -> int:
        """The highest level holding messages (-1: none)."""
        return max((n for n, lvl in self.levels.items() if lvl.count), default=-1)

    def put(self, level: int, msg: Message, expires_at: float, redelivered: bool,
            stored: bool) -> None:
        """Page msg out at the end of its level; a stored one (in the queue's log) only as
        a reference to its store id."""
        lvl = self._level(level)
        paged.append(lvl.buffer, msg, expires_at, redelivered, stored)
        lvl.count += 1
        self.count += 1
        self.bytes += len(msg.body)
        if len(lvl.buffer) >= WRITE_BUFFER:
            lvl.flush()

    def put_refs(self, level: int, stored: StoredEntries, start: int, stop: int,
                 max_priority: int) -> None:
        """Page out references to the stored messages stored[start:stop] of this level
        (min(priority, max_priority); all when max_priority is 0), in order, in one step."""
        lvl = self._level(level)
        count, size = paged.append_refs(lvl.buffer, *stored, start, stop, level, max_priority)
        lvl.count += count
        self.count += count
        self.bytes += size
        if len(lvl.buffer) >= WRITE_BUFFER:
            lvl.flush()

    def _level(self, level: int) -> _Level:
        lvl = self.levels.get(level)
        if lvl is None:
            lvl = self.levels[level] = _Level(f"{self.prefix}.p{level}")
        return lvl

    def take(self, level: int,
             read_stored: Callable[[list[int]], list[Message]] | None) -> list[PagedEntry]:
        """The oldest of one level's messages (at most TAKE_MAX), removed from here.
        References are read back from the log, all at once, with read_stored(store_ids)."""
        lvl = self.levels[level]
        decoded = lvl.decoded
        if not decoded:
            decoded.extend(lvl.read())
        out = []
        refs = []  # (place in out, store id)
        for _ in range(min(TAKE_MAX, len(decoded))):
            msg, store_id, expires_at, redelivered, body_size = decoded.popleft()
            if msg is None:
                refs.append((len(out), store_id))
            out.append((msg, expires_at, redelivered))
            self.bytes -= body_size
        if refs:
            for (i, _), msg in zip(refs, read_stored([mid for _, mid in refs])):
                out[i] = (msg,) + out[i][1:]
        lvl.count -= len(out)
        self.count -= len(out)
        if not lvl.count:
            lvl.close()
        return out

    def drain_stored_ids(self) -> Iterator[list[int]]:
        """Store ids of every paged message, a chunk read back at a time, then everything is
        forgotten (a purge: the log forgets them a slice at a time, mq.store.Store.ack_all;
        the queue pages anything new out to a new set)."""
        try:
            for lvl in self.levels.values():
                yield [r[1] for r in lvl.decoded if r[1]]
                lvl.count -= len(lvl.decoded)
                lvl.decoded.clear()
                while lvl.count:
                    records = lvl.read()
                    lvl.count -= len(records)
                    yield [r[1] for r in records if r[1]]
        finally:
            self.close()

    def close(self) -> None:
        """Forget everything paged out and remove its files."""
        for lvl in self.levels.values():
            lvl.close()
        self.levels.clear()
        self.count = self.bytes = 0
