"""Run one scenario against one broker and record what it cost each side in CPU."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench import loadgen
from bench.brokers import Broker
from bench.procinfo import cpu_seconds, fd_headroom
from bench.scenarios import Scenario, Settings


@dataclass
class Measurement:
    result: dict  # the load generator's JSON
    loadgen_cpu: float  # seconds of CPU the load generator used
    broker_cpu: float | None  # seconds of CPU the broker used meanwhile (None: not local)

    def to_json(self) -> dict:
        return {**self.result, "loadgen_cpu_s": round(self.loadgen_cpu, 3),
                "broker_cpu_s": None if self.broker_cpu is None else round(self.broker_cpu, 3)}


def measure(binary: Path, broker: Broker, scenario: Scenario, settings: Settings) -> Measurement:
    refusal = _refusal(broker, scenario, settings)
    if refusal:
        return Measurement({"error": refusal}, 0.0, None)
    before = cpu_seconds(broker.pid) if broker.pid else None
    run = loadgen.run(binary, broker.url, scenario.loadgen_flags(settings), broker.pid,
                      scenario.timeout(settings))
    after = cpu_seconds(broker.pid) if broker.pid else None
    used = None if before is None or after is None else after - before
    death = broker.exited()
    if death:
        run.result["error"] = f"{run.result.get('error', 'failed')}; the broker {death}"
    return Measurement(run.result, run.cpu_seconds, used)


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
