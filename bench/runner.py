"""Run one scenario against one broker: the load generator's counts, plus what /proc says the
broker spent meanwhile (CPU per message, RSS sampled every 100 ms); and the median of repeats."""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from bench import loadgen
from bench.brokers import Broker
from bench.procinfo import Sampler, fd_headroom
from bench.scenarios import Scenario, Settings


@dataclass
class Measurement:
    result: dict  # the load generator's JSON, with the broker's figures added (see _broker_figures)
    loadgen_cpu: float  # seconds of CPU the load generator used
    broker_cpu: float | None  # seconds of CPU the broker used meanwhile (None: not local)

    def to_json(self) -> dict:
        return {**self.result, "loadgen_cpu_s": round(self.loadgen_cpu, 3),
                "broker_cpu_s": None if self.broker_cpu is None else round(self.broker_cpu, 3)}


def measure(binary: Path, broker: Broker, scenario: Scenario, settings: Settings) -> Measurement:
    refusal = _refusal(broker, scenario, settings)
    if refusal:
        return Measurement({"error": refusal}, 0.0, None)
    flags, timeout = scenario.loadgen_flags(settings), scenario.timeout(settings)
    if broker.pid:
        with Sampler(broker.pid, also=broker.also) as sampler:
            run = loadgen.run(binary, broker.url, flags, broker.pid, timeout, sampler.mark)
        run.result.update(_broker_figures(sampler, run.result))
        used = sampler.cpu_between("start", "stop")
    else:  # a remote broker: no /proc to read
        run = loadgen.run(binary, broker.url, flags, None, timeout)
        used = None
    death = broker.exited()
    if death:
        run.result["error"] = f"{run.result.get('error', 'failed')}; the broker {death}"
    return Measurement(run.result, run.cpu_seconds, used)


def _per_msg_us(cpu_s: float | None, messages: int | None) -> float | None:
    return None if cpu_s is None or not messages else cpu_s * 1e6 / messages


def _broker_figures(s: Sampler, result: dict) -> dict:
    """RSS and CPU figures from the marks the load generator set: the measured window of a
    throughput run (measure..end), the fill (fill..full) and drain (drain..drained) of S8
    and ST1 (whose drain is the replay)."""
    start = s.at("start")
    out: dict = {"rss_start_kb": start.rss_kb if start else None, "rss_max_kb": s.rss_max_kb}
    if s.at("measure") and s.at("end"):
        window = s.cpu_between("measure", "end")
        out["window_cpu_s"] = window
        out["cpu_us_per_msg"] = _per_msg_us(window, result.get("delivered"))
    if s.at("fill") and s.at("full"):
        full = s.at("full")
        fill_cpu = s.cpu_between("fill", "full")
        out.update(fill_rss_max_kb=s.rss_max_from("fill", "full"), rss_full_kb=full.rss_kb,
                   fill_cpu_s=fill_cpu,
                   fill_cpu_us_per_msg=_per_msg_us(fill_cpu, result.get("published")))
    if s.at("held"):  # DL1h: 1 s after the last confirm, every message held
        out["rss_held_kb"] = s.at("held").rss_kb
    if s.at("drain") and s.at("drained"):
        drain_cpu = s.cpu_between("drain", "drained")
        out.update(drain_cpu_s=drain_cpu, drain_rss_max_kb=s.rss_max_from("drain", "drained"),
                   drain_cpu_us_per_msg=_per_msg_us(drain_cpu, result.get("delivered")))
        fill, drain = out.get("fill_cpu_us_per_msg"), out["drain_cpu_us_per_msg"]
        out["cpu_us_per_msg"] = None if fill is None or drain is None else fill + drain
    return out


def combine(scenario: Scenario, parts: dict[str, Measurement]) -> Measurement:
    """One Measurement of a scenario with variants (D1): every figure of each variant under
    its name (`dedup_deliver_rate`), and each later variant's cost against the first: the
    delivered/s it loses (`dedup_cost_pct`) and the CPU per message it adds
    (`dedup_cpu_cost_pct`), in %. `delivered` is the smallest of the variants' (each must
    move messages); `error` names the variants that failed."""
    result: dict = {"mode": scenario.mode}
    for name, m in parts.items():
        result.update({f"{name}_{k}": v for k, v in m.result.items() if k != "mode"})
    errors = [f"{name}: {m.result['error']}" for name, m in parts.items() if m.result.get("error")]
    if errors:
        result["error"] = "; ".join(errors)
    result["delivered"] = min(m.result.get("delivered", 0) for m in parts.values())
    base_name, base = next(iter(parts.items()))
    for name, m in parts.items():
        if name == base_name:
            continue
        rate, base_rate = m.result.get("deliver_rate"), base.result.get("deliver_rate")
        if rate is not None and base_rate:
            result[f"{name}_cost_pct"] = 100 * (1 - rate / base_rate)
        cpu, base_cpu = m.result.get("cpu_us_per_msg"), base.result.get("cpu_us_per_msg")
        if cpu is not None and base_cpu:
            result[f"{name}_cpu_cost_pct"] = 100 * (cpu / base_cpu - 1)
    used = [m.broker_cpu for m in parts.values()]
    return Measurement(result, sum(m.loadgen_cpu for m in parts.values()),
                       None if None in used else sum(used))


def median(runs: list[Measurement]) -> Measurement:
    """One Measurement whose every number is the median over the runs that did not fail (the
    first failure when they all did). `runs` in the result says how many were taken."""
    ok = [m for m in runs if not m.result.get("error")]
    if not ok:
        return runs[0]
    keys = {k for m in ok for k, v in m.result.items() if _number(v)}
    result: dict = dict(ok[0].result)
    for k in keys:
        values = [m.result[k] for m in ok if _number(m.result.get(k))]
        result[k] = statistics.median(values) if values else None
    result["runs"] = len(ok)
    cpus = [m.broker_cpu for m in ok if m.broker_cpu is not None]
    return Measurement(result, statistics.median(m.loadgen_cpu for m in ok),
                       statistics.median(cpus) if cpus else None)


def _number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _refusal(broker: Broker, scenario: Scenario, settings: Settings) -> str | None:
    """Why a run must not start: S9 would exhaust the broker's open files, and a broker that
    runs out of them can break for good (RabbitMQ's mnesia does), not just refuse clients."""
    if scenario.mode != "idle" or not broker.pid:
        return None
    headroom = fd_headroom(broker.pid)
    if headroom is not None and headroom < settings.connections + 100:
        return (f"skipped: the broker may open only {headroom} more files, too few for "
                f"{settings.connections} connections (raise its ulimit -n or use --connections)")
    return None
