"""A progress bar on stderr: the step being run and how long it has taken so far."""
from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator

WIDTH = 30


class Progress:
    def __init__(self, total_steps: int) -> None:
        self.total = max(total_steps, 1)
        self.done = 0
        self.tty = sys.stderr.isatty()

    def _draw(self, label: str, elapsed: float, expected: float) -> None:
        # Within a step the bar advances by elapsed/expected, capped below the next step.
        frac = (self.done + min(elapsed / expected, 0.99)) / self.total if expected else 0
        filled = int(WIDTH * frac)
        bar = "#" * filled + "-" * (WIDTH - filled)
        sys.stderr.write(f"\r[{bar}] {self.done + 1}/{self.total} {label} {elapsed:5.1f}s\033[K")
        sys.stderr.flush()

    @contextmanager
    def step(self, label: str, expected_seconds: float) -> Iterator[None]:
        """Show `label` while the body runs (redrawn on a TTY; one line per step otherwise)."""
        start = time.monotonic()
        stop = threading.Event()
        if self.tty:
            def redraw() -> None:
                while not stop.wait(0.2):
                    self._draw(label, time.monotonic() - start, expected_seconds)
            painter = threading.Thread(target=redraw, daemon=True)
            painter.start()
        else:
            print(f"[{self.done + 1}/{self.total}] {label} ...", file=sys.stderr, flush=True)
        try:
            yield
        finally:
            stop.set()
            if self.tty:
                painter.join()
            self.done += 1

    def finish(self) -> None:
        if self.tty:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
