"""A stream's log (B-STREAM): append-only segment files of its own, read back by offset.

The files are `<data dir>/streams/<queue id>/<first offset>.seg`, 20 digits. A record is
its length and CRC-32, then the message's offset, its timestamp (ms), exchange, routing key,
properties and body. Appends go through the store's flusher, so a stream's messages share the
group commit (and, in a cluster, the replication) of the rest of the store, and a publish
to a stream is confirmed once its record is durable. Readers see only committed records
(durable, and in a cluster replicated): `committed` is the last such offset.

Memory does not grow with the stream: what is kept per segment is its first offset and
first timestamp, read at open from the first record; the last segment is scanned at open
for its end (a torn tail is cut). Readers read the files in chunks.

Retention removes whole segments from the head, through the flusher (after what was written
before, and replicated): past `x-max-length-bytes` in total, or when a segment's newest
message (bounded by the next segment's first) is older than `x-max-age`.
"""
from __future__ import annotations

import os
import shutil
import struct
import time
import zlib
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from mq.store.segments import Segment, fsync_file

HEAD = struct.Struct("!II")           # length of what follows the CRC, CRC-32 of it
FIELDS = struct.Struct("!qqBBI")      # offset, timestamp ms, exchange len, key len, props len
READ_CHUNK = 256 * 1024
OFFSETS_FILE = "offsets.json"         # a stream's tracked consumer offsets, beside its segments


@dataclass
class Record:
    offset: int
    timestamp: int  # ms since the epoch
    exchange: str
    routing_key: str
    props: bytes
    body: bytes


def encode(offset: int, timestamp: int, exchange: str, routing_key: str, props: bytes,
           body: bytes) -> bytes:
    ex, rk = exchange.encode(), routing_key.encode()
    rest = b"".join((FIELDS.pack(offset, timestamp, len(ex), len(rk), len(props)), ex, rk,
                     props, body))
    return HEAD.pack(len(rest), zlib.crc32(rest)) + rest


def decode(buf: bytes | memoryview, pos: int, check: bool = False) -> tuple[Record | None, int]:
    """The record at pos and the position after it; (None, pos) if buf holds no whole one
    there (or, with check, a damaged one)."""
    if len(buf) - pos < HEAD.size:
        return None, pos
    size, crc = HEAD.unpack_from(buf, pos)
    start = pos + HEAD.size
    end = start + size
    if size < FIELDS.size or end > len(buf):
        return None, pos
    if check and zlib.crc32(buf[start:end]) != crc:
        return None, pos
    offset, ts, exlen, rklen, plen = FIELDS.unpack_from(buf, start)
    p = start + FIELDS.size
    ex = bytes(buf[p:p + exlen]).decode()
    p += exlen
    rk = bytes(buf[p:p + rklen]).decode()
    p += rklen
    props = bytes(buf[p:p + plen])
    return Record(offset, ts, ex, rk, props, bytes(buf[p + plen:end])), end


class StreamSegment:
    __slots__ = ("seg", "first", "first_ts")

    def __init__(self, seg: Segment, first: int, first_ts: int) -> None:
        self.seg = seg
        self.first = first          # offset of its first record
        self.first_ts = first_ts    # timestamp of its first record (ms; 0: empty)


class StreamLog:
    """One stream's segments. `append` from the loop; readers through `Cursor`."""

    def __init__(self, store: Any, directory: str, segment_bytes: int,
                 max_bytes: int | None, max_age_ms: int | None) -> None:
        self.store = store
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.max_bytes = max_bytes
        self.max_age_ms = max_age_ms
        self.segments: list[StreamSegment] = []
        self._firsts: list[int] = []      # the segments' first offsets, for bisect
        self.next_offset = 0              # the offset the next message gets
        self.committed = -1               # every record up to it may be read
        self.last_chunk = 0               # first offset of the last batch made durable
        self._pending: deque[tuple[int, int]] = deque()  # (store seq, last offset in it)
        self.on_commit: Callable[[], None] | None = None  # readers may read further
        self.size = 0                     # bytes in all segments

    # ---- opening ------------------------------------------------------------------------

    def open(self) -> None:
        os.makedirs(self.directory, exist_ok=True)
        names = sorted(n for n in os.listdir(self.directory)
                       if n.endswith(".seg") and n[:-4].isdigit())
        for i, name in enumerate(names):
            path = os.path.join(self.directory, name)
            last = i == len(names) - 1
            size = os.path.getsize(path)
            if last:
                size = self._scan_tail(path, int(name[:-4]))
            first_ts = self._first_timestamp(path) if size else 0
            self._add(StreamSegment(Segment(int(name[:-4]), path, size), int(name[:-4]),
                                    first_ts))
        if not self.segments:
            self._add(StreamSegment(Segment(0, self._path(0), 0), 0, 0))
        self.committed = self.next_offset - 1
        self.last_chunk = max(self.committed, 0)

    def _scan_tail(self, path: str, first: int) -> int:
        """Find the end of the last segment (cut a torn or damaged tail); sets next_offset."""
        with open(path, "rb") as fh:
            data = fh.read()
        pos, offset = 0, first
        while True:
            record, end = decode(data, pos, check=True)
            if record is None or record.offset != offset:
                break
            pos, offset = end, offset + 1
        if pos != len(data):
            truncate_file(path, pos)
        self.next_offset = offset
        return pos

    @staticmethod
    def _first_timestamp(path: str) -> int:
        with open(path, "rb") as fh:
            head = fh.read(HEAD.size + FIELDS.size)
        if len(head) < HEAD.size + FIELDS.size:
            return 0
        return FIELDS.unpack_from(head, HEAD.size)[1]

    def _path(self, first: int) -> str:
        return os.path.join(self.directory, f"{first:020d}.seg")

    def _add(self, segment: StreamSegment) -> None:
        self.segments.append(segment)
        self._firsts.append(segment.first)
        self.size += segment.seg.size

    # ---- appending ----------------------------------------------------------------------

    def append(self, exchange: str, routing_key: str, props: bytes, body: bytes) -> int:
        """Append a message; returns its offset. Readable once committed."""
        offset = self.next_offset
        now = int(time.time() * 1000)
        data = encode(offset, now, exchange, routing_key, props, body)
        head = self.segments[-1]
        if head.seg.size and head.seg.size + len(data) > self.segment_bytes:
            head = StreamSegment(Segment(offset, self._path(offset), 0), offset, now)
            self._add(head)
            self._retain(now)
        elif not head.first_ts:
            head.first_ts = now
        seg = head.seg
        self.store.append_to(seg, seg.size, data)
        seg.size += len(data)
        self.size += len(data)
        self.next_offset = offset + 1
        seq = self.store.seq
        if self._pending and self._pending[-1][0] == seq:
            self._pending[-1] = (seq, offset)
        else:
            self._pending.append((seq, offset))
        return offset

    def durable(self, seq: int) -> bool:
        """The store made everything up to seq durable: commit what it covers; returns
        whether records still wait (the store's waiter protocol)."""
        pending = self._pending
        first = None
        while pending and pending[0][0] <= seq:
            last = pending.popleft()[1]
            if first is None:
                first = self.committed + 1
            self.committed = last
        if first is not None:
            self.last_chunk = first
            if self.on_commit is not None:
                self.on_commit()
        return bool(pending)

    # ---- retention ----------------------------------------------------------------------

    def _retain(self, now_ms: int) -> None:
        """Remove whole segments from the head (never the one being written)."""
        while len(self.segments) > 1:
            head, after = self.segments[0], self.segments[1]
            too_big = self.max_bytes is not None and self.size > self.max_bytes
            too_old = (self.max_age_ms is not None and after.first_ts
                       and after.first_ts < now_ms - self.max_age_ms)
            if not (too_big or too_old):
                break
            self.segments.pop(0)
            self._firsts.pop(0)
            self.size -= head.seg.size
            self.store.remove_file(head.seg)

    def retain(self) -> None:
        """Apply x-max-age now (a timer calls it)."""
        self._retain(int(time.time() * 1000))

    # ---- reading ------------------------------------------------------------------------

    @property
    def first_offset(self) -> int:
        return self.segments[0].first

    def locate(self, offset: int) -> int:
        """Index of the segment holding offset (clamped to the first)."""
        return max(0, bisect_right(self._firsts, offset) - 1)

    def offset_at(self, timestamp_ms: int) -> int:
        """The first offset appended at or after timestamp_ms (committed ones; after them,
        the next to commit). Only the segment that may hold it is read."""
        start = self.segments[0]
        for segment in self.segments:
            if segment.first_ts and segment.first_ts <= timestamp_ms:
                start = segment
        cursor = Cursor(self, start.first)
        while (record := cursor.next()) is not None:
            if record.timestamp >= timestamp_ms:
                return record.offset
        return cursor.offset

    def delete(self) -> None:
        """The stream is deleted: its files go (through the flusher, in order)."""
        for segment in self.segments:
            self.store.remove_file(segment.seg)
        self.segments.clear()
        self._firsts.clear()

    def close(self) -> None:
        for segment in self.segments:
            segment.seg.close()


class Cursor:
    """A reader's place in a stream: the next offset it wants, and what it read of the
    segment past it (one chunk at most)."""

    def __init__(self, log: StreamLog, offset: int) -> None:
        self.log = log
        self.offset = max(offset, log.first_offset)
        self._segment: StreamSegment | None = None
        self._base = 0       # file position of _buf's first byte
        self._buf = b""
        self._bpos = 0       # next unread byte in _buf

    def _find(self) -> None:
        log = self.log
        self.offset = max(self.offset, log.first_offset)  # retention may have passed us
        self._segment = log.segments[log.locate(self.offset)]
        self._base, self._buf, self._bpos = 0, b"", 0

    def next(self) -> Record | None:
        """The next committed record (None: none yet)."""
        log = self.log
        while self.offset <= log.committed:
            segment = self._segment
            if segment is None or segment.seg.fd < 0:  # not yet, or removed by retention
                self._find()
            buf, pos = self._buf, self._bpos
            if len(buf) - pos >= HEAD.size + FIELDS.size:
                size = HEAD.unpack_from(buf, pos)[0]
                if FIELDS.unpack_from(buf, pos + HEAD.size)[0] < self.offset \
                        and pos + HEAD.size + size <= len(buf):
                    self._bpos = pos + HEAD.size + size  # before where we start: skip
                    continue
            record, end = decode(buf, pos)
            if record is None:
                if not self._fill():
                    return None
                continue
            self._bpos = end
            self.offset = record.offset + 1
            return record
        return None

    def _fill(self) -> bool:
        """Read on in this segment, or go to the next one; False: nothing more yet."""
        segment = self._segment
        assert segment is not None
        end = self._base + len(self._buf)  # file position after what we have
        try:
            data = segment.seg.read(READ_CHUNK, end)
        except OSError:  # removed by retention meanwhile
            self._segment = None
            return True
        if data:
            self._base += self._bpos
            self._buf = self._buf[self._bpos:] + data
            self._bpos = 0
            return True
        segments = self.log.segments
        i = segments.index(segment) if segment in segments else -1
        if i < 0 or i + 1 >= len(segments):
            return False
        self._segment = segments[i + 1]
        self._base, self._buf, self._bpos = 0, b"", 0
        return True


def remove_orphans(data_dir: str, live: set[int]) -> list[str]:
    """Remove the directories of streams that no longer exist (deleted while their files
    were still being removed, or before a crash); returns what was removed."""
    base = os.path.join(data_dir, "streams")
    removed = []
    if os.path.isdir(base):
        for name in os.listdir(base):
            if not (name.isdigit() and int(name) in live):
                shutil.rmtree(os.path.join(base, name), ignore_errors=True)
                removed.append(name)
    return removed


def truncate_file(path: str, size: int) -> None:
    os.truncate(path, size)
    fsync_file(path)
