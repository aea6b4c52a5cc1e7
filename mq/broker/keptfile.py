"""A small JSON file of the data directory that an object keeps its state in (a stream's
tracked offsets, an exchange's deduplication cache): rewritten whole and crash-safely a
moment after a change (changes within `delay` are saved together), and replicated in a
cluster (Store.file_written).

Saving runs on the event loop and a big state costs (an exchange's 100,000 identities: about
0.2 s), so saves are spaced at least SPACING times as long as the last one took: saving takes
at most 1/SPACING of the broker's time, and a crash may lose the changes of that longer
interval."""
from __future__ import annotations

import json
import os
import time
from typing import Any, Callable

from mq.store.segments import write_atomic

SPACING = 20


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
        self._saved_at = 0.0  # time.time() when the last save ended
        self._took = 0.0  # seconds the last save took

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
        """Save in a moment: after `delay`, and no sooner than the spacing allows."""
        if self._timer is None:
            due = max(time.time() + self.delay, self._saved_at + SPACING * self._took)
            self._timer = self.timers.call_at(due, self.save)
            self.store.closing.add(self.save)  # a clean stop saves what is pending

    def save(self) -> None:
        """Save now (what was pending goes with it)."""
        self._cancel()
        started = time.monotonic()
        data = json.dumps(self.state()).encode()
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        write_atomic(self.path, data)
        self.store.file_written(self.relpath, data, _nothing)
        self._took = time.monotonic() - started
        self._saved_at = time.time()

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
            self.store.closing.discard(self.save)


def _nothing() -> None:
    pass
