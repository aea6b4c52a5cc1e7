"""Message rates without touching the message path: the broker keeps plain integer counters
(on queues, channels and connections); a task samples them every few seconds and a rate is
the change per second between the last two samples."""
from __future__ import annotations

from collections import Counter
from typing import Any, Iterable

SAMPLE_INTERVAL = 2.0  # seconds between samples: the window of every rate


class Sampler:
    """Last sample and rates of each object, and the counter totals of objects gone (so that
    global totals, e.g. Prometheus' *_total, never go down when a queue or channel goes)."""

    def __init__(self) -> None:
        # id(obj) -> (obj, kind, counters, levels, time of sample)
        self._last: dict[int, tuple[Any, str, dict[str, int], dict[str, int], float]] = {}
        self._rates: dict[int, dict[str, float]] = {}
        self.retired: dict[str, Counter] = {}
        # Totals that are no object's (the overview): name -> (counters and levels, time).
        self._named: dict[str, tuple[dict[str, int], float]] = {}
        self._named_rates: dict[str, dict[str, float]] = {}

    def sample(self, now: float,
               objects: Iterable[tuple[str, Any, dict[str, int], dict[str, int]]]) -> None:
        """objects: (kind, object, cumulative counters, levels). Rates are computed for both;
        the counters of an object that is no longer listed are added to `retired[kind]`."""
        seen: dict[int, tuple[Any, str, dict[str, int], dict[str, int], float]] = {}
        for kind, obj, counters, levels in objects:
            key = id(obj)
            prev = self._last.get(key)
            if prev is not None and prev[0] is obj and now > prev[4]:
                dt = now - prev[4]
                rates = {k: (v - prev[2].get(k, 0)) / dt for k, v in counters.items()}
                rates.update({k: (v - prev[3].get(k, 0)) / dt for k, v in levels.items()})
                self._rates[key] = rates
            seen[key] = (obj, kind, counters, levels, now)
        for key, (obj, kind, counters, _, _) in self._last.items():
            current = seen.get(key)
            if current is None or current[0] is not obj:
                self.retired.setdefault(kind, Counter()).update(counters)
                self._rates.pop(key, None)
        self._last = seen

    def sample_named(self, now: float, name: str, values: dict[str, int]) -> None:
        prev = self._named.get(name)
        if prev is not None and now > prev[1]:
            self._named_rates[name] = {k: (v - prev[0].get(k, 0)) / (now - prev[1])
                                       for k, v in values.items()}
        self._named[name] = (values, now)

    def named_rates(self, name: str) -> dict[str, float]:
        return self._named_rates.get(name, {})

    def rates(self, obj: Any) -> dict[str, float]:
        """The object's rates per second over the last sample interval (empty until it has
        been sampled twice)."""
        last = self._last.get(id(obj))
        if last is None or last[0] is not obj:
            return {}
        return self._rates.get(id(obj), {})

    def retired_counts(self, kind: str) -> Counter:
        return self.retired.get(kind, Counter())
