"""Scenarios S1..S9: each is a load generator mode plus flags, and the metrics it reports."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Metric:
    key: str  # field of the load generator's JSON result
    label: str
    unit: str
    higher_is_better: bool
    scale: float = 1.0  # multiply the raw value by this for display (kB -> MB)

    def value(self, result: dict) -> float | None:
        raw = result.get(self.key)
        return None if raw is None else raw * self.scale


@dataclass(frozen=True)
class Settings:
    """What a whole run chose: per-scenario seconds and the sizes of S8 and S9."""

    duration: float = 5.0
    warmup: float = 1.0
    backlog: int = 1_000_000
    connections: int = 1000
    idle: float = 3.0


@dataclass(frozen=True)
class Scenario:
    id: str
    title: str
    mode: str  # throughput | backlog | idle
    flags: tuple[str, ...] = ()
    metrics: tuple[Metric, ...] = field(default_factory=tuple)
    # Memory figures need a broker with no history: restart the brokers we started.
    fresh_broker: bool = False

    def loadgen_flags(self, s: Settings) -> list[str]:
        common = ["-mode", self.mode, *self.flags]
        if self.mode == "throughput":
            return [*common, "-duration", f"{s.duration}s", "-warmup", f"{s.warmup}s"]
        if self.mode == "backlog":
            return [*common, "-backlog", str(s.backlog)]
        # A burst of ten messages per connection.
        return [*common, "-conns", str(s.connections), "-burst", str(10 * s.connections),
                "-duration", f"{s.idle}s"]

    def expected_seconds(self, s: Settings) -> float:
        """A guess at one run's length, for the progress bar."""
        if self.mode == "throughput":
            return s.warmup + s.duration + 1
        if self.mode == "backlog":
            return 2 + s.backlog / 15000  # publish and drain at ~30k msg/s
        return 2 + s.idle + s.connections / 200

    def timeout(self, s: Settings) -> float:
        """Upper bound on one run: generous, so only a stuck broker reaches it."""
        if self.mode == "throughput":
            return 30 + s.warmup + s.duration
        if self.mode == "backlog":
            return 60 + s.backlog / 2000  # both phases at >= 4,000 msg/s
        return 60 + s.idle + s.connections / 20


def _rate(label: str = "throughput") -> Metric:
    return Metric("consume_rate", label, "msg/s", True)


_ACK = ("-ack", "-prefetch", "100")

SCENARIOS: tuple[Scenario, ...] = (
    Scenario("S1", "1 producer / 1 consumer, 16 B, no-ack", "throughput",
             ("-size", "16"), (_rate(),)),
    Scenario("S2", "1/1, 1 KB, manual ack, prefetch 100", "throughput",
             ("-size", "1024", *_ACK), (_rate(),)),
    Scenario("S3", "1/1, 1 KB persistent, durable queue, confirms (100 in flight), manual ack",
             "throughput", ("-size", "1024", "-persistent", "-confirms", "100", *_ACK), (_rate(),)),
    Scenario("S4", "4 producers / 4 consumers, one queue, 1 KB", "throughput",
             ("-size", "1024", "-producers", "4", "-consumers", "4"), (_rate(),)),
    Scenario("S5", "x-max-priority 10, random priorities, 1 KB", "throughput",
             ("-size", "1024", "-max-priority", "10", *_ACK), (_rate(),)),
    Scenario("S6", "fanout to 8 queues, 8 consumers, 1 KB", "throughput",
             ("-size", "1024", "-fanout", "8", "-consumers", "8"), (_rate("deliveries"),)),
    Scenario("S7", "end-to-end latency at 1,000 msg/s, 1 KB", "throughput",
             ("-size", "1024", "-rate", "1000", *_ACK),
             (Metric("p50_ms", "latency p50", "ms", False),
              Metric("p99_ms", "latency p99", "ms", False))),
    Scenario("S8", "backlog of 1 KB messages, no consumer, then drained by one", "backlog",
             ("-size", "1024", *_ACK),
             (Metric("publish_rate", "publish into backlog", "msg/s", True),
              Metric("rss_kb", "broker RSS at full backlog", "MB", False, 1 / 1024),
              Metric("drain_rate", "drain", "msg/s", True)), fresh_broker=True),
    Scenario("S9", "idle connections with a consumer each, then a burst", "idle",
             ("-size", "1024", *_ACK),
             (Metric("per_conn_kb", "RSS per connection", "kB", False),
              Metric("burst_ms", "deliver the burst", "ms", False)), fresh_broker=True),
)

BY_ID = {s.id: s for s in SCENARIOS}


def select(ids: str | None) -> list[Scenario]:
    """Scenarios named in a comma list like 'S1,S3' (all when None)."""
    if not ids:
        return list(SCENARIOS)
    wanted = [i.strip().upper() for i in ids.split(",") if i.strip()]
    unknown = [i for i in wanted if i not in BY_ID]
    if unknown:
        raise ValueError(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(BY_ID)}")
    return [BY_ID[i] for i in wanted]


def moved_messages(result: dict) -> bool:
    """Did the run deliver anything? (What the smoke run checks.)"""
    return not result.get("error") and result.get("consumed", 0) > 0
