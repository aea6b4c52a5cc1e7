"""Deferred calls for TTL expiry and x-expires. The broker never sees the event loop: the
server plugs one in; without it (sans-IO tests), calls wait until one is attached."""
from __future__ import annotations

import time
from typing import Any, Callable


class Timer:
    __slots__ = ("when", "callback", "cancelled", "handle")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False
        self.handle: Any = None

    def cancel(self) -> None:
        self.cancelled = True
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None


class Timers:
    """`call_at(when, fn)` with `when` in wall-clock seconds (deadlines survive restarts)."""

    def __init__(self) -> None:
        self._loop: Any = None
        self._pending: list[Timer] = []  # set before a loop is attached

    def attach(self, loop: Any) -> None:
        """Run timers on an asyncio loop from now on (including those already waiting)."""
        self._loop = loop
        pending, self._pending = self._pending, []
        for timer in pending:
            if not timer.cancelled:
                self._arm(timer)

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(when, callback)
        if self._loop is not None:
            self._arm(timer)
        else:
            self._pending.append(timer)
        return timer

    def _arm(self, timer: Timer) -> None:
        timer.handle = self._loop.call_later(max(0.0, timer.when - time.time()), self._fire, timer)

    @staticmethod
    def _fire(timer: Timer) -> None:
        timer.handle = None  # the handle holds the timer: no cycle left for the collector
        if not timer.cancelled:
            timer.callback()
