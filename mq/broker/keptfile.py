"""A small JSON file of the data directory that an object keeps its state in (a stream's
tracked offsets, an exchange's deduplication cache): rewritten whole and crash-safely a
moment after a change (changes within `delay` are saved together), and replicated in a
cluster (Store.file_written)."""
from __future__ import annotations

import json
import os
import time
from typing import Any, Callable

from mq.store.segments import write_atomic


class KeptFile:
    def __init__(self, store: Any, timers: Any, relpath: str, state: Callable[[], Any],
                 delay: float) -> None:
        self.store = store
        self.timers = timers
        self.relpath = relpath
        self.path = os.path.join(store.directory, relpath)
        self.state = state  # what to save, as JSON
        self.delay = delay
        self._timer: Any = None

    def load(self) -> Any:
        """What was saved (None: nothing, or unreadable)."""
        try:
            with open(self.path, "rb") as fh:
                return json.loads(fh.read())
        except (OSError, ValueError):
            return None

    @property
    def pending(self) -> bool:
        return self._timer is not None

    def later(self) -> None:
        """Save within `delay`."""
        if self._timer is None:
            self._timer = self.timers.call_at(time.time() + self.delay, self.save)

    def save(self) -> None:
        """Save now (what was pending goes with it)."""
        self._cancel()
        data = json.dumps(self.state()).encode()
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        write_atomic(self.path, data)
        self.store.file_written(self.relpath, data, _nothing)

    def remove(self) -> None:
        self._cancel()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _nothing() -> None:
    pass
