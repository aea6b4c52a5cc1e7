"""Group commit: the event loop appends encoded records to an in-memory batch; one flusher
thread writes each batch and fsyncs it, so many publishes share one fsync, and then tells the
loop the highest durable sequence number. The loop hands what it appended over to the thread
once per loop turn (one lock and wake-up per turn, not per record).

A failed write or fsync (disk full, I/O error) is never silent (B-DUR-8). The loop is told at
once (on_failure(error): the store nacks the publishes that wait, fails the commits and
declares that wait, and raises the disk alarm), and the batch stays in memory. A failed fsync
on Linux may drop the dirty pages it was writing, so nothing written since the last good
fsync is trusted: each retry cuts every segment it writes to back to what was last fsynced
(Segment.flushed) and writes again from memory, then fsyncs. Retries come every RETRY_DELAY
while writes fail; the first one that succeeds reports what is durable, then
on_failure(None). Records are read back from memory (pending) until they are fsynced.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable

from mq._core.storecore import FlusherCore
from mq.store.segments import Segment, check_faults, datasync, sync_dir, truncate, write_all

log = logging.getLogger("mq.store")

RETRY_DELAY = 0.5  # seconds between attempts while writes fail


class Flusher(FlusherCore):
    """The flusher thread and its batches (submit, the loop's side, is FlusherCore's)."""

    def __init__(self) -> None:
        self.seq = 0           # sequence of the last appended record
        # Appended on the loop and not handed to the thread yet (no lock: the loop's own),
        # as [segment, offset in it, bytes]; handed over at the end of the loop turn.
        self._open: list[list] = []
        self._handoff_due = False
        self._handed_seq = 0   # sequence of the last record handed to the thread
        self.failed: BaseException | None = None  # the last attempt's error (None: it worked)
        # [segment, offset in it, bytes]: records submitted and not written yet, in order
        self._chunks: list[list] = []
        self._unlinks: list[Segment] = []
        # What an attempt that failed took: written again first at the next attempt.
        self._retry_chunks: list[list] = []
        self._retry_unlinks: list[Segment] = []
        self._inflight: list[list] = []  # the chunks an attempt is writing now
        self._dirty_tails = False  # an attempt failed: files may hold unsynced bytes
        lock = threading.Lock()
        self._cond = threading.Condition(lock)  # the flusher waits here for work
        self._written_seq = 0
        self._thread: threading.Thread | None = None
        self._closing = False
        self._loop: Any = None
        self._on_flushed: Callable[[int], None] | None = None
        self._on_failure: Callable[[BaseException | None], None] | None = None
        # In a cluster's leader: told (on the loop) of every write, before its fsync, so
        # that the followers' fsyncs run alongside ours, and of every segment removed.
        self.replica: Any = None

    def _handoff(self) -> None:
        """Give the thread what the loop appended (and wake it)."""
        self._handoff_due = False
        if not self._open:
            return
        opened, self._open = self._open, []
        with self._cond:
            chunks = self._chunks
            for chunk in opened:
                if chunks and chunks[-1][0] is chunk[0]:
                    chunks[-1][2] += chunk[2]
                else:
                    chunks.append(chunk)
            self._handed_seq = self.seq
            self._cond.notify()

    def unlink(self, seg: Segment) -> None:
        """Remove seg's file after everything submitted before is durable."""
        self._handoff()  # those records go first
        with self._cond:
            self._unlinks.append(seg)
            self._cond.notify()

    def pending(self, seg: Segment, off: int, size: int) -> bytes | None:
        """The bytes of a record of seg at off that is not fsynced yet (None: it is in the
        file by now, read it there)."""
        end = off + size
        with self._cond:
            for chunks in (self._inflight, self._retry_chunks, self._chunks, self._open):
                for cseg, coff, buf in chunks:
                    if cseg is seg and coff <= off and end <= coff + len(buf):
                        return bytes(buf[off - coff:end - coff])
        return None

    def start(self, loop: Any, on_flushed: Callable[[int], None],
              on_failure: Callable[[BaseException | None], None]) -> None:
        """Run the flusher thread; on_flushed(seq) is called on `loop` after each batch,
        on_failure(error) after each failed attempt and on_failure(None) after the first
        good one that follows."""
        self._loop, self._on_flushed, self._on_failure = loop, on_flushed, on_failure
        self._thread = threading.Thread(target=self._run, name="mq-store-flusher", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None

    def _take(self) -> tuple[list, list, int]:
        """Everything to write now (what failed last time first), as one batch."""
        chunks, unlinks, seq = self._chunks, self._unlinks, self._handed_seq
        if self._retry_chunks:
            chunks = self._retry_chunks + chunks
        if self._retry_unlinks:
            unlinks = self._retry_unlinks + unlinks
        self._chunks, self._unlinks = [], []
        self._retry_chunks, self._retry_unlinks = [], []
        self._inflight = chunks
        return chunks, unlinks, seq

    def _run(self) -> None:
        retry_at: float | None = None
        while True:
            with self._cond:
                while not self._closing:
                    if retry_at is not None:
                        wait = retry_at - time.monotonic()
                        if wait <= 0:
                            break
                        self._cond.wait(wait)
                    elif self._chunks or self._unlinks:
                        break
                    else:
                        self._cond.wait()
                if self._closing:
                    return  # close() writes what is left
                batch = self._take()
            error = self._attempt(*batch, report=True)
            retry_at = None if error is None else time.monotonic() + RETRY_DELAY

    def _attempt(self, chunks: list, unlinks: list, seq: int,
                 report: bool) -> BaseException | None:
        """Write and fsync a batch, then remove the segments it unlinks. On an error what
        is left of the batch is kept for the next attempt; returns the error."""
        check_faults()
        try:
            if chunks:
                self._write(chunks, self._dirty_tails, seq)
        except Exception as exc:
            with self._cond:
                self._retry_chunks, self._retry_unlinks = chunks, unlinks
                self._inflight = []
                self._dirty_tails = True
            return self._failed(exc, report)
        with self._cond:
            self._written_seq = max(self._written_seq, seq)
            self._inflight = []
            self._dirty_tails = False
            self.unwritten -= sum(len(chunk[2]) for chunk in chunks)
        if report and chunks:
            self._report(self._on_flushed, seq)
        try:
            self._unlink(unlinks)
        except Exception as exc:
            with self._cond:
                self._retry_unlinks = unlinks
            return self._failed(exc, report)
        if self.failed is not None:
            self.failed = None
            log.warning("store: writing the log works again; the records kept in memory are "
                        "on disk now")
            if report:
                self._report(self._on_failure, None)
        return None

    def _failed(self, exc: BaseException, report: bool) -> BaseException:
        if self.failed is None:
            pending = sum(len(c[2]) for c in self._retry_chunks)
            log.error("store: writing the log failed: %s; nothing more is confirmed until a "
                      "write succeeds (%d bytes of records kept in memory, retrying every "
                      "%.1f s)", exc, pending, RETRY_DELAY)
        self.failed = exc
        if report:
            self._report(self._on_failure, exc)
        return exc

    def _report(self, callback: Any, *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: the broker is going away
            pass

    def _write(self, chunks: list, retrying: bool, seq: int) -> None:
        touched: dict[int, Segment] = {}  # by id: the log's and the streams' segments
        for seg, _, buf in chunks:
            if id(seg) not in touched:
                touched[id(seg)] = seg
                if retrying:  # drop what a failed attempt may have left past the last fsync
                    truncate(seg.fd, seg.flushed)
            write_all(seg.fd, buf)
        if self.replica is not None and self._loop is not None:
            self._report(self.replica.written,
                         [(seg.path, off, buf) for seg, off, buf in chunks], seq)
        for seg in touched.values():
            datasync(seg.fd)
        new = [seg for seg in touched.values() if not seg.dir_synced]
        for directory in {os.path.dirname(seg.path) for seg in new}:
            sync_dir(directory)
        for seg in new:
            seg.dir_synced = True
        for seg, off, buf in chunks:
            seg.flushed = off + len(buf)

    def _unlink(self, unlinks: list) -> None:
        # One at a time, each made durable: a segment's tombstones must never vanish before
        # the older segment whose records they cancel. What is done leaves the list.
        while unlinks:
            seg = unlinks[0]
            seg.close()
            try:
                os.unlink(seg.path)
            except FileNotFoundError:  # a retry: removed before the directory sync failed
                pass
            sync_dir(os.path.dirname(seg.path))
            unlinks.pop(0)
            if self.replica is not None and self._loop is not None:
                self._report(self.replica.deleted, seg.path)

    def sync(self) -> int:
        """Write and fsync everything submitted so far in the caller's thread (no thread
        runs); returns the sequence now durable. Raises the error of a failed write (what
        failed is kept for the next call)."""
        self._handoff()
        with self._cond:
            batch = self._take()
        error = self._attempt(*batch, report=False)
        if error is not None:
            raise error
        return batch[2]

    def close(self) -> int:
        """Write what is left, stop the thread; returns the last durable sequence."""
        self._handoff()
        if self._thread is not None:
            with self._cond:
                self._closing = True
                self._cond.notify()
            self._thread.join()
            self._thread = None
        with self._cond:
            batch = self._take()
        if batch[0] or batch[1]:
            error = self._attempt(*batch, report=False)
            if error is not None and batch[0]:
                log.error("store: closing with %d bytes of records that could not be written "
                          "(%s); none of them was confirmed",
                          sum(len(c[2]) for c in batch[0]), error)
        return self._written_seq
