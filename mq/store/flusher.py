"""Group commit: the event loop appends encoded records to an in-memory batch; one flusher
thread writes each batch and fsyncs it, so many publishes share one fsync, and then tells the
loop the highest durable sequence number."""
from __future__ import annotations

import logging
import os
import threading
from typing import Any, Callable

from mq.store.segments import Segment, sync_dir

log = logging.getLogger("mq.store")


class Flusher:
    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir
        self.seq = 0           # sequence of the last appended record
        self.failed: BaseException | None = None
        self._chunks: list[tuple[Segment, bytearray]] = []
        self._unlinks: list[Segment] = []
        lock = threading.Lock()
        self._cond = threading.Condition(lock)   # the flusher waits here for work
        self._done = threading.Condition(lock)   # synchronous waiters wait here for the disk
        self._written_seq = 0
        self._thread: threading.Thread | None = None
        self._closing = False
        self._loop: Any = None
        self._on_flushed: Callable[[int], None] | None = None

    def submit(self, seg: Segment, data: bytes) -> None:
        """Queue data for the end of seg (the caller has accounted for its size)."""
        with self._cond:
            self.seq += 1
            seg.last_seq = self.seq
            chunks = self._chunks
            if chunks and chunks[-1][0] is seg:
                chunks[-1][1].extend(data)
            else:
                chunks.append((seg, bytearray(data)))
                self._cond.notify()

    def unlink(self, seg: Segment) -> None:
        """Remove seg's file after everything submitted before is durable."""
        with self._cond:
            self._unlinks.append(seg)
            self._cond.notify()

    def start(self, loop: Any, on_flushed: Callable[[int], None]) -> None:
        """Run the flusher thread; on_flushed(seq) is called on `loop` after each batch."""
        self._loop, self._on_flushed = loop, on_flushed
        self._thread = threading.Thread(target=self._run, name="mq-store-flusher", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None

    def _take(self) -> tuple[list, list, int]:
        chunks, unlinks, seq = self._chunks, self._unlinks, self.seq
        self._chunks, self._unlinks = [], []
        return chunks, unlinks, seq

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._chunks and not self._unlinks and not self._closing:
                    self._cond.wait()
                if self._closing and not self._chunks and not self._unlinks:
                    return
                batch = self._take()
            try:
                self._write(*batch)
            except BaseException as exc:  # disk full, I/O error: stop confirming
                log.exception("store: writing the log failed; nothing more is confirmed")
                with self._cond:
                    self.failed = exc
                    self._done.notify_all()
                return
            with self._cond:
                self._written_seq = batch[2]
                self._done.notify_all()
            self._loop.call_soon_threadsafe(self._on_flushed, batch[2])

    def _write(self, chunks: list, unlinks: list, seq: int) -> None:
        touched: dict[int, Segment] = {}
        for seg, buf in chunks:
            view = memoryview(buf)
            while view:
                view = view[os.write(seg.fd, view):]
            seg.flushed += len(buf)
            touched[seg.number] = seg
        for seg in touched.values():
            os.fdatasync(seg.fd)
        if any(not seg.synced for seg in touched.values()):
            sync_dir(self.log_dir)
            for seg in touched.values():
                seg.synced = True
        for seg in unlinks:
            # One at a time, each made durable: a segment's tombstones must never vanish
            # before the older segment whose records they cancel.
            seg.close()
            os.unlink(seg.path)
            sync_dir(self.log_dir)

    def wait_durable(self) -> None:
        """Block until everything submitted so far is on disk (the thread runs)."""
        target = self.seq
        with self._cond:
            while self._written_seq < target and self.failed is None:
                self._done.wait()

    def sync(self) -> int:
        """Write and fsync everything submitted so far in the caller's thread (no thread
        runs); returns the sequence now durable."""
        with self._cond:
            batch = self._take()
        self._write(*batch)
        return batch[2]

    def close(self) -> int:
        """Write what is left, stop the thread; returns the last durable sequence."""
        if self._thread is not None:
            with self._cond:
                self._closing = True
                self._cond.notify()
            self._thread.join()
            self._thread = None
        with self._cond:
            batch = self._take()
        if self.failed is None:
            self._write(*batch)
            return batch[2]
        return self._written_seq
