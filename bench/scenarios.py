"""Scenarios S1..S9, R1 and the extras (paced S1p..S6p, C1, ST1, D1, DL1, DL1h): each is a load
generator mode plus flags, and the metrics it reports."""
from __future__ import annotations

from dataclasses import dataclass, field, replace


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
    """What a whole run chose: per-scenario seconds, the sizes of S8/R1, S9, ST1 and DL1h, and
    how many runs of each scenario on each broker to take the median of."""

    duration: float = 5.0
    warmup: float = 1.0
    backlog: int = 1_000_000
    stream: int = 1_000_000  # ST1: messages published into the stream, then replayed
    delayed: int = 1_000_000  # DL1h: delayed messages published and held
    connections: int = 1000
    idle: float = 3.0
    repeat: int = 1


@dataclass(frozen=True)
class Scenario:
    id: str
    title: str
    # throughput | backlog | stream | delayed | held (backlog -hold) | idle | restart (R1, run
    # by bench.restart)
    mode: str
    flags: tuple[str, ...] = ()
    metrics: tuple[Metric, ...] = field(default_factory=tuple)
    # Memory figures need a broker with no history (an allocator keeps what earlier scenarios
    # grew to): restart the brokers we started.
    fresh_broker: bool = True
    # A throughput row: accepted/s, delivered/s, backlog, RSS max and CPU per message, printed
    # in the throughput table rather than as one line per metric.
    rates: bool = False
    # Also run on a 3-node mq cluster (bench.brokers.mq_cluster), as a broker of its own.
    cluster: bool = False
    # Run on mq only, for this reason (a feature RabbitMQ has only through a plugin).
    mq_only: str = ""
    # Run once per variant (name, extra flags), each on a fresh broker; the figures are the
    # variant's name + "_" + the load generator's, plus each variant's cost against the first
    # (bench.runner.combine).
    variants: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def variant(self, name: str) -> "Scenario":
        """This scenario with the flags of one of its variants (and no variants)."""
        extra = dict(self.variants)[name]
        return replace(self, id=f"{self.id}.{name}", flags=(*self.flags, *extra), variants=())

    def loadgen_flags(self, s: Settings) -> list[str]:
        common = ["-mode", self.mode, *self.flags]
        if self.mode == "throughput":
            return [*common, "-duration", f"{s.duration}s", "-warmup", f"{s.warmup}s"]
        if self.mode == "backlog":
            return [*common, "-backlog", str(s.backlog)]
        if self.mode == "stream":
            return [*common, "-backlog", str(s.stream)]
        if self.mode == "delayed":  # publishing lasts the duration; no warm-up
            return [*common, "-duration", f"{s.duration}s"]
        if self.mode == "held":
            return ["-mode", "backlog", *self.flags, "-hold", "-backlog", str(s.delayed)]
        if self.mode == "restart":  # its first run, the fill; bench.restart does the rest
            return ["-mode", "fill", *self.flags, "-backlog", str(s.backlog)]
        # A burst of ten messages per connection.
        return [*common, "-conns", str(s.connections), "-burst", str(10 * s.connections),
                "-duration", f"{s.idle}s"]

    def expected_seconds(self, s: Settings) -> float:
        """A guess at one run's length, for the progress bar."""
        if self.variants:
            return len(self.variants) * (self.variant(self.variants[0][0]).expected_seconds(s) + 2)
        if self.mode == "throughput":
            return s.warmup + s.duration + 1
        if self.mode == "delayed":
            return s.duration + DELAY_MAX_S + 1
        if self.mode == "held":
            return 3 + s.delayed / 30000
        if self.mode == "backlog":
            return 2 + s.backlog / 15000  # publish and drain at ~30k msg/s
        if self.mode == "stream":
            return 2 + s.stream / 15000  # publish at ~20k msg/s, replay twice at ~100k msg/s
        if self.mode == "restart":
            return 5 + s.backlog / 12000  # fill at ~30k msg/s, two recoveries at ~100k msg/s
        return 2 + s.idle + s.connections / 200

    def timeout(self, s: Settings) -> float:
        """Upper bound on one run: generous, so only a stuck broker reaches it. A throughput
        run ends with its window; stopping, reading the backlog and deleting the queues are
        bounded too (2 s, 10 s, 30 s) however far behind the broker is."""
        if self.mode == "throughput":
            return 60 + s.warmup + s.duration
        if self.mode in ("backlog", "restart"):  # restart: the fill; bench.restart bounds the rest
            return 60 + s.backlog / 2000  # both phases at >= 4,000 msg/s
        if self.mode == "stream":
            return 60 + s.stream / 2000
        if self.mode == "delayed":  # the load generator waits at most 30 s past the last due
            return 60 + s.duration + DELAY_MAX_S + 30
        if self.mode == "held":
            return 60 + s.delayed / 2000
        return 60 + s.idle + s.connections / 20


# The columns of a throughput row (S1..S6 and their paced variants).
RATE_METRICS = (
    Metric("accept_rate", "accepted", "msg/s", True),
    Metric("deliver_rate", "delivered", "msg/s", True),
    Metric("backlog", "backlog at end", "msgs", False),
    Metric("rss_max_kb", "RSS max", "MB", False, 1 / 1024),
    Metric("cpu_us_per_msg", "CPU per delivered msg", "us", False),
)

_ACK = ("-ack", "-prefetch", "100")
# Paced variants: producers pause while this many deliveries are queued (the old default).
PACED_MAX_QUEUED = 10_000


def _rates(sid: str, title: str, flags: tuple[str, ...], cluster: bool = False) -> Scenario:
    return Scenario(sid, title, "throughput", flags, RATE_METRICS, rates=True, cluster=cluster)


_CONFIRMED = ("-size", "1024", "-persistent", "-confirms", "100", *_ACK)
_THROUGHPUT: tuple[Scenario, ...] = (
    _rates("S1", "1 producer / 1 consumer, 16 B, no-ack", ("-size", "16")),
    _rates("S2", "1/1, 1 KB, manual ack, prefetch 100", ("-size", "1024", *_ACK)),
    _rates("S3", "1/1, 1 KB persistent, durable queue, confirms (100 in flight), manual ack",
           _CONFIRMED),
    _rates("S4", "4 producers / 4 consumers, one queue, 1 KB, no-ack",
           ("-size", "1024", "-producers", "4", "-consumers", "4")),
    _rates("S5", "x-max-priority 10, random priorities, 1 KB, manual ack",
           ("-size", "1024", "-max-priority", "10", *_ACK)),
    _rates("S6", "fanout to 8 queues, 8 consumers, 1 KB, no-ack",
           ("-size", "1024", "-fanout", "8", "-consumers", "8")),
)


def _paced(sc: Scenario) -> Scenario:
    return Scenario(f"{sc.id}p", f"{sc.title}; paced: producers pause while "
                    f"{PACED_MAX_QUEUED:,} deliveries are queued", sc.mode,
                    (*sc.flags, "-max-queued", str(PACED_MAX_QUEUED)), sc.metrics, rates=True)


def _backlog(sid: str, kind: str, flags: tuple[str, ...]) -> Scenario:
    return Scenario(
        sid, f"backlog of {kind} 1 KB messages, published flat out with no consumer, then "
        "drained by one (manual ack, prefetch 100)", "backlog", ("-size", "1024", *flags, *_ACK),
        (Metric("publish_rate", "publish into backlog", "msg/s", True),
         Metric("fill_rss_max_kb", "broker RSS max while filling", "MB", False, 1 / 1024),
         Metric("rss_full_kb", "broker RSS at full backlog", "MB", False, 1 / 1024),
         Metric("drain_rate", "drain", "msg/s", True),
         Metric("cpu_us_per_msg", "CPU per message, fill + drain", "us", False)))


# ST1: as LavinMQ's lavinmqperf has it (-P prefetch, -a N: ack with multiple=true every N).
STREAM_CONSUMERS = 2
STREAM_PREFETCH = 1000
STREAM_ACK_EVERY = 100


def _stream() -> Scenario:
    return Scenario(
        "ST1", f"stream (x-queue-type: stream, durable): 1 KB messages published with confirms "
        f"(100 in flight) into a fresh stream, then {STREAM_CONSUMERS} consumers at once each "
        f"replay all of it from x-stream-offset first (prefetch {STREAM_PREFETCH}, an ack with "
        f"multiple=true every {STREAM_ACK_EVERY})", "stream",
        ("-size", "1024", "-confirms", "100", "-consumers", str(STREAM_CONSUMERS),
         "-prefetch", str(STREAM_PREFETCH), "-ack-every", str(STREAM_ACK_EVERY)),
        (Metric("publish_rate", "publish into the stream, confirmed", "msg/s", True),
         Metric("fill_rss_max_kb", "broker RSS max while publishing", "MB", False, 1 / 1024),
         Metric("fill_cpu_us_per_msg", "CPU per published message", "us", False),
         Metric("drain_rate", f"replay, {STREAM_CONSUMERS} consumers together", "msg/s", True),
         Metric("consumer_rate_min", "replay, slower consumer", "msg/s", True),
         Metric("consumer_rate_max", "replay, faster consumer", "msg/s", True),
         Metric("drain_rss_max_kb", "broker RSS max during the replay", "MB", False, 1 / 1024),
         Metric("drain_cpu_us_per_msg", "CPU per replayed message", "us", False)))


# D1: S2 through a fanout exchange, every message with a unique x-deduplication-header; then
# the same through an x-message-deduplication exchange (it routes as fanout), then through the
# fanout exchange to a queue with x-message-deduplication. Only the deduplication differs.
DEDUP_CACHE_SIZE = 100_000
DEDUP_CACHE_TTL_MS = 60_000
_NO_PLUGIN = "RabbitMQ from Debian has no {} plugin"
_DEDUP_VARIANTS = (
    ("plain", ()),
    ("dedup", ("-exchange-type", "x-message-deduplication",
               "-exchange-arg", f"x-cache-size={DEDUP_CACHE_SIZE}",
               "-exchange-arg", f"x-cache-ttl={DEDUP_CACHE_TTL_MS}")),
    ("qdedup", ("-queue-arg", "x-message-deduplication=true")),
)


def _dedup() -> Scenario:
    def per_variant(name: str, what: str) -> tuple[Metric, ...]:
        return (Metric(f"{name}_deliver_rate", f"{what}: delivered", "msg/s", True),
                Metric(f"{name}_cpu_us_per_msg", f"{what}: CPU per delivered msg", "us", False),
                Metric(f"{name}_rss_max_kb", f"{what}: RSS max", "MB", False, 1 / 1024))

    return Scenario(
        "D1", "deduplication cost: S2 (1/1, 1 KB, manual ack, prefetch 100, publishers flat "
        "out) through a fanout exchange, each message with a unique x-deduplication-header; "
        "run 3 times on fresh brokers: plain, through an x-message-deduplication exchange "
        f"(x-cache-size {DEDUP_CACHE_SIZE:,}, x-cache-ttl {DEDUP_CACHE_TTL_MS:,} ms) instead, "
        "and into a queue with x-message-deduplication: true", "throughput",
        ("-size", "1024", *_ACK, "-fanout", "1", "-dedup-header"),
        (*per_variant("plain", "fanout exchange"),
         *per_variant("dedup", "x-message-deduplication exchange"),
         Metric("dedup_cost_pct", "exchange dedup: delivered/s lost", "%", False),
         Metric("dedup_cpu_cost_pct", "exchange dedup: CPU per msg added", "%", False),
         *per_variant("qdedup", "fanout, queue with x-message-deduplication"),
         Metric("qdedup_cost_pct", "queue dedup: delivered/s lost", "%", False),
         Metric("qdedup_cpu_cost_pct", "queue dedup: CPU per msg added", "%", False)),
        mq_only=_NO_PLUGIN.format("message deduplication"), variants=_DEDUP_VARIANTS)


# DL1: persistent 1 KB messages with x-delay uniform in 1..5 s into a durable
# x-delayed-message exchange (x-delayed-type direct) bound to a durable queue, paced at 10,000
# msg/s: it measures lateness, so the publisher must not outrun the rate. DL1h: 1M (--delayed-
# messages) with a 1 h delay, flat out with confirms, held.
DELAY_RATE = 10_000
DELAY_MIN_S, DELAY_MAX_S = 1, 5
HOLD_DELAY = "1h"
_DELAYED = ("-size", "1024", "-persistent", "-exchange-type", "x-delayed-message",
            "-exchange-arg", "x-delayed-type=direct")


def _delayed() -> tuple[Scenario, Scenario]:
    reason = _NO_PLUGIN.format("delayed message exchange")
    paced = Scenario(
        "DL1", f"delayed delivery: 1 KB persistent messages, x-delay uniform in "
        f"{DELAY_MIN_S}..{DELAY_MAX_S} s, into a durable x-delayed-message exchange "
        f"(x-delayed-type direct) bound to a durable queue, publisher paced at "
        f"{DELAY_RATE:,} msg/s for the duration, 1 consumer (manual ack, prefetch 100); "
        "lateness = arrival - (send time + x-delay)", "delayed",
        (*_DELAYED, *_ACK, "-delay-min", f"{DELAY_MIN_S}s", "-delay-max", f"{DELAY_MAX_S}s",
         "-rate", str(DELAY_RATE)),
        (Metric("accept_rate", "publish rate (paced)", "msg/s", True),
         Metric("delivered", "messages delivered (all published)", "msgs", True),
         Metric("p50_ms", "lateness p50", "ms", False),
         Metric("p99_ms", "lateness p99", "ms", False),
         Metric("max_ms", "lateness max", "ms", False),
         Metric("min_ms", "lateness min (< 0: early)", "ms", True),
         Metric("rss_max_kb", "broker RSS max", "MB", False, 1 / 1024),
         Metric("cpu_us_per_msg", "CPU per delivered message", "us", False)),
        mq_only=reason)
    held = Scenario(
        "DL1h", f"delayed messages held: N (--delayed-messages) 1 KB persistent messages with "
        f"x-delay {HOLD_DELAY} into a durable x-delayed-message exchange (x-delayed-type "
        "direct) bound to a durable queue, flat out with confirms (100 in flight)", "held",
        (*_DELAYED, "-confirms", "100", "-delay-min", HOLD_DELAY, "-delay-max", HOLD_DELAY),
        (Metric("held", "messages held (confirmed)", "msgs", True),
         Metric("publish_rate", "publish, confirmed", "msg/s", True),
         Metric("fill_rss_max_kb", "broker RSS max while publishing", "MB", False, 1 / 1024),
         Metric("rss_full_kb", "broker RSS at the last confirm", "MB", False, 1 / 1024),
         Metric("rss_held_kb", "broker RSS 1 s later, all held", "MB", False, 1 / 1024),
         Metric("fill_cpu_us_per_msg", "CPU per published message", "us", False),
         Metric("backlog", "delivered early (ready in the queue)", "msgs", False),
         Metric("rss_max_kb", "broker RSS max of the run (with deleting them)", "MB", False,
                1 / 1024)),
        mq_only=reason)
    return paced, held


def _recovery(how: str, sig: str) -> tuple[Metric, ...]:
    """R1's figures for the restart after one signal (seconds from the start of the process)."""
    return (Metric(f"{how}_listen_s", f"after {sig}: port accepts connections", "s", False),
            Metric(f"{how}_ready_s", f"after {sig}: queue reports every message", "s", False),
            Metric(f"{how}_rss_kb", f"after {sig}: broker RSS once recovered", "MB", False,
                   1 / 1024))


SCENARIOS: tuple[Scenario, ...] = (
    *_THROUGHPUT,
    Scenario("S7", "end-to-end latency at 1,000 msg/s, 1 KB", "throughput",
             ("-size", "1024", "-rate", "1000", *_ACK),
             (Metric("p50_ms", "latency p50", "ms", False),
              Metric("p99_ms", "latency p99", "ms", False))),
    _backlog("S8", "persistent", ("-persistent",)),
    _backlog("S8t", "transient", ()),
    Scenario("S9", "idle connections with a consumer each, then a burst", "idle",
             ("-size", "1024", *_ACK),
             (Metric("per_conn_kb", "RSS per connection", "kB", False),
              Metric("burst_ms", "deliver the burst", "ms", False))),
    # Run by bench.restart: it stops and starts the broker, so only one the benchmark started.
    Scenario("R1", "restart with a backlog of persistent 100 B messages in a durable queue: "
             "stopped by SIGTERM and started on the same data, then the same after SIGKILL "
             "(crash recovery)", "restart", ("-size", "100", "-persistent"),
             (*_recovery("term", "SIGTERM"), *_recovery("kill", "SIGKILL"))),
)
# Not run unless named: the throughput scenarios with the publishers held back, C1, the
# write cost of replication (it starts etcd and three more mq processes), ST1, streams, and
# issue 16's D1 (deduplication cost) and DL1, DL1h (delayed messages), on mq only.
EXTRAS: tuple[Scenario, ...] = (
    *(_paced(sc) for sc in _THROUGHPUT),
    _rates("C1", "cluster write cost: S3 on a quorum queue (x-queue-type: quorum): 1/1, 1 KB "
           "persistent, confirms (100 in flight), manual ack; on one node, and on a 3-node "
           "cluster on this machine (mq: etcd on loopback, clients on the leader; RabbitMQ: "
           "clients on the first node, the queue's 3 replicas spread over the nodes), whose "
           "CPU and RSS are the sums over its three nodes (etcd's not counted)",
           (*_CONFIRMED, "-queue-type", "quorum"), cluster=True),
    _stream(),
    _dedup(),
    *_delayed(),
)

BY_ID = {s.id.upper(): s for s in (*SCENARIOS, *EXTRAS)}


def select(ids: str | None) -> list[Scenario]:
    """Scenarios named in a comma list like 'S1,S3,S2p' (the default set when None)."""
    if not ids:
        return list(SCENARIOS)
    wanted = [i.strip().upper() for i in ids.split(",") if i.strip()]
    unknown = [i for i in wanted if i not in BY_ID]
    if unknown:
        known = ", ".join(s.id for s in (*SCENARIOS, *EXTRAS))
        raise ValueError(f"unknown scenario(s) {', '.join(unknown)}; known: {known}")
    return [BY_ID[i] for i in wanted]


def moved_messages(result: dict) -> bool:
    """Did the run deliver anything (R1: get its backlog back; DL1h: hold its messages)? (What
    the smoke run checks.)"""
    return not result.get("error") and (result.get("delivered", 0) > 0
                                        or result.get("recovered", 0) > 0
                                        or result.get("held", 0) > 0)
