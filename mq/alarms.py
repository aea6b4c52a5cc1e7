"""Resource alarms (B-CONN-10): a memory high watermark on the broker's RSS and a free-disk
limit on the data dir. The server polls `check()`; `alarms` names the resources past
their limit ("memory", "disk"), which is what blocks publishers. A failed write to the store
(B-DUR-8) is a disk alarm too, raised the moment the store reports it (`store_failed`), not
at the next free-space check, and cleared when the store's writes work again."""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import shutil
import time
from typing import Callable

from mq.logfmt import kv

log = logging.getLogger("mq.alarms")

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
DISK_INTERVAL = 5.0  # seconds between disk checks (RabbitMQ: 10 s at most)
CHECK_INTERVAL = 0.25  # seconds between memory checks (a read of /proc/self/statm)
FAST_CHECK_INTERVAL = 0.02  # near or past the watermark: a flood adds MBs in a quarter second
NEAR_MARGIN = 64 * 1024 * 1024


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc
    trim.argtypes = [ctypes.c_size_t]
    return trim


_MALLOC_TRIM = _malloc_trim()


def release_free_memory() -> None:
    """glibc keeps freed heap memory in the process; malloc_trim hands it back, so that RSS
    falls once messages are consumed."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def rss() -> int:
    """This process's resident set size in bytes (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * PAGE_SIZE
    except OSError:
        return 0


class ResourceMonitor:
    """Tracks the two alarms; calls `on_change(alarms)` whenever the set changes."""

    def __init__(self, memory_limit: int, disk_limit: int, data_dir: str,
                 on_change: Callable[[tuple[str, ...]], None]) -> None:
        self.memory_limit = memory_limit
        self.disk_limit = disk_limit
        self.data_dir = data_dir
        self.on_change = on_change
        self.memory_used = 0
        self.disk_free = 0
        self._memory = self._disk = False
        self._next_disk = 0.0
        self.write_error: BaseException | None = None  # the store's writes fail (B-DUR-8)

    @property
    def alarms(self) -> tuple[str, ...]:
        disk = self._disk or self.write_error is not None
        return (("memory",) if self._memory else ()) + (("disk",) if disk else ())

    def store_failed(self, exc: BaseException | None) -> None:
        """The store's writes failed with exc (the disk alarm goes on now), or work again
        (None: it goes off, unless free space is still below the limit, measured again at
        the next check)."""
        before = self.alarms
        if (exc is None) != (self.write_error is None):
            if exc is not None:
                log.warning("alarm set %s", kv(resource="disk", reason="write failed",
                                                 error=exc))
            else:
                log.info("alarm cleared %s", kv(resource="disk", reason="writes work again"))
                self._next_disk = 0.0
        self.write_error = exc
        if self.alarms != before:
            self.on_change(self.alarms)

    def interval(self) -> float:
        """Seconds until the next check: short when memory is within a margin of the
        watermark, so that a fast publisher is stopped close to it."""
        margin = max(self.memory_limit // 5, NEAR_MARGIN)
        return FAST_CHECK_INTERVAL if self.memory_used > self.memory_limit - margin \
            else CHECK_INTERVAL

    def check(self) -> None:
        """Measure memory every call, the disk every few seconds; cheap enough for a
        sub-second timer."""
        before = self.alarms
        used = rss()
        if used >= self.memory_limit:
            release_free_memory()  # count what is in use, not what malloc keeps for later
            used = rss()
        self.memory_used = used
        self._memory = self._flip("memory", self._memory, used >= self.memory_limit,
                                  used=used, limit=self.memory_limit)
        now = time.monotonic()
        if now >= self._next_disk:
            self._next_disk = now + DISK_INTERVAL
            try:
                self.disk_free = shutil.disk_usage(self.data_dir).free
            except OSError as exc:
                log.warning("disk check failed %s", kv(path=self.data_dir, error=exc))
            else:
                self._disk = self._flip("disk", self._disk, self.disk_free < self.disk_limit,
                                        free=self.disk_free, limit=self.disk_limit)
        if self.alarms != before:
            self.on_change(self.alarms)

    @staticmethod
    def _flip(resource: str, was: bool, now: bool, **figures: int) -> bool:
        if now != was:
            (log.warning if now else log.info)(
                "alarm %s %s", "set" if now else "cleared",
                kv(resource=resource, **figures))
        return now
