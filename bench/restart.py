"""R1: how long a broker takes to come back with a big persistent backlog. The load generator
fills a durable queue (as S8 does) and leaves it; the broker is stopped with SIGTERM and started
again on the same data, then the same once more with SIGKILL (crash recovery). Each time a load
generator started right after the broker marks when its port accepts a TCP connection and when
a passive queue.declare reports every message; the queue is deleted at the end."""
from __future__ import annotations

import signal
import time
from pathlib import Path

from bench import loadgen
from bench.brokers import Broker, BrokerError
from bench.procinfo import cpu_seconds, pid_listening_on, rss_kb
from bench.runner import Measurement
from bench.scenarios import Scenario, Settings

# A clean stop writes the queues' state out; with a large backlog that can take a while.
STOP_TIMEOUT = 300.0


def measure(binary: Path, broker: Broker, scenario: Scenario, settings: Settings) -> Measurement:
    if broker.node is None:
        return Measurement({"error": "skipped: R1 stops and starts the broker, so it runs only "
                                     "on one the benchmark started (not --mq-url / --against)"},
                           0.0, None)
    fill = loadgen.run(binary, broker.url, scenario.loadgen_flags(settings), broker.pid,
                       scenario.timeout(settings))
    result, cpu = {**fill.result, "mode": "restart"}, fill.cpu_seconds
    queue = result.get("queue")
    if result.get("error") or not queue:
        return Measurement(result, cpu, None)
    result["rss_full_kb"] = rss_kb(broker.pid) if broker.pid else None
    for how, sig in (("term", signal.SIGTERM), ("kill", signal.SIGKILL)):
        figures, used = _restart(binary, broker, sig, queue, settings.backlog)
        cpu += used
        result.update({f"{how}_{k}": v for k, v in figures.items()})
        if "error" in figures:
            result["error"] = f"restart after {sig.name}: {figures['error']}"
            break
    else:
        result["recovered"] = min(result["term_recovered"], result["kill_recovered"])
    if broker.exited() is None:  # the queue goes, even after a failed recovery
        cpu += loadgen.run(binary, broker.url, ["-mode", "delete", "-queue", queue], None,
                           60).cpu_seconds
    return Measurement(result, cpu, None)


def _restart(binary: Path, broker: Broker, sig: signal.Signals, queue: str,
             backlog: int) -> tuple[dict, float]:
    """Stop the broker with sig, start it again, and time its recovery: the figures (seconds
    from the start of the process), and the CPU seconds the load generator used."""
    node = broker.node
    stopping = time.monotonic()
    if not node.stop(sig, STOP_TIMEOUT):
        return {"error": f"still running {STOP_TIMEOUT:.0f} s after {sig.name}"}, 0.0
    figures: dict = {"stop_s": time.monotonic() - stopping}
    marks: dict[str, float] = {}
    listener: dict[str, int | None] = {}

    def on_mark(name: str) -> None:
        marks[name] = time.monotonic()
        if name == "listening":  # RabbitMQ's listener is beam.smp, not the script we started
            listener["pid"] = pid_listening_on(node.port)
        elif name == "ready" and listener.get("pid"):
            # Read at once: nothing has touched the recovered queue yet.
            pid = listener["pid"]
            figures.update(rss_kb=rss_kb(pid), cpu_s=cpu_seconds(pid))

    start = time.monotonic()
    node.spawn()
    flags = ["-mode", "recover", "-queue", queue, "-backlog", str(backlog)]
    # With the pid of what we started, the load generator stops waiting if that exits.
    run = loadgen.run(binary, broker.url, flags, node.proc.pid, 60 + backlog / 5000, on_mark)
    try:
        broker.pid = node.wait_listening()
    except BrokerError as exc:
        return {**figures, "error": f"{broker.name}: {exc}"}, run.cpu_seconds
    if run.result.get("error"):
        return {**figures, "error": run.result["error"]}, run.cpu_seconds
    figures.update(listen_s=marks["listening"] - start, ready_s=marks["ready"] - start,
                   recovered=run.result.get("recovered"))
    return figures, run.cpu_seconds
