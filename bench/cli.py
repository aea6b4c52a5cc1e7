"""`python -m bench`: start the brokers, run the scenarios, print the table (or JSON), plot."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from bench import brokers, loadgen, report, restart
from bench.brokers import BrokerError, Managed
from bench.procinfo import raise_fd_limit
from bench.progress import Progress
from bench.runner import Measurement, combine, measure
from bench.scenarios import Scenario, Settings, moved_messages, select

SMOKE = Settings(duration=1.0, warmup=0.25, backlog=2000, stream=2000, delayed=2000,
                 connections=50, idle=0.5)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--scenarios",
                   help="comma list, e.g. S1,S3 (default: S1..S9 with S8t, and R1); the "
                        "paced variants S1p..S6p, C1, ST1, D1, DL1 and DL1h run only when named")
    p.add_argument("--duration", type=float, default=5.0,
                   help="measured seconds of S1..S7 (default 5; the issue's figures use 10)")
    p.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="run each scenario N times on each broker and report medians")
    p.add_argument("--backlog", type=int, default=1_000_000,
                   help="messages in the backlog of S8, S8t and R1")
    p.add_argument("--stream-messages", type=int, default=1_000_000, metavar="N",
                   help="messages published into ST1's stream, then replayed (default 1,000,000)")
    p.add_argument("--delayed-messages", type=int, default=1_000_000, metavar="N",
                   help="delayed messages published and held in DL1h (default 1,000,000)")
    p.add_argument("--connections", type=int, default=1000, help="S9 idle connections")
    p.add_argument("--smoke", action="store_true",
                   help="1 s per scenario, tiny S8/S9/R1/ST1, mq only: keeps the benchmark "
                        "working in CI")
    rabbit = p.add_mutually_exclusive_group()
    rabbit.add_argument("--rabbitmq", action="store_true",
                        help="start a private RabbitMQ node (the default when it is installed)")
    rabbit.add_argument("--against", metavar="URL", help="compare with a RabbitMQ running at URL")
    rabbit.add_argument("--no-rabbitmq", action="store_true", help="benchmark mq alone")
    p.add_argument("--mq-url", metavar="URL", help="use an mq already running at URL")
    p.add_argument("--plot", metavar="FILE.png", type=Path, help="write bar charts here")
    p.add_argument("--json", nargs="?", const="-", metavar="FILE",
                   help="print JSON instead of the table, or with FILE write it there as well")
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    if args.smoke:
        return SMOKE
    return Settings(duration=args.duration, warmup=min(1.0, args.duration / 4),
                    backlog=args.backlog, stream=args.stream_messages,
                    delayed=args.delayed_messages,
                    connections=args.connections,
                    repeat=max(1, args.repeat))


def chosen_brokers(args: argparse.Namespace, scenarios: list[Scenario]) -> list[Managed]:
    """The brokers to compare, mq first (then a 3-node mq cluster when a scenario wants one)."""
    if args.mq_url:
        found = [Managed("mq", lambda: brokers.running("mq", args.mq_url), restartable=False)]
    else:
        found = [Managed("mq", brokers.mq, restartable=True)]
    cluster = any(sc.cluster for sc in scenarios)
    if cluster:
        found.append(Managed("mq 3-node", brokers.mq_cluster, restartable=True, cluster=True))
    if args.smoke or args.no_rabbitmq or all(sc.mq_only for sc in scenarios):
        return found
    if args.against:
        found.append(Managed("RabbitMQ", lambda: brokers.running("RabbitMQ", args.against),
                             restartable=False))
    elif args.rabbitmq or Path(brokers.RABBITMQ_SERVER).exists():
        found.append(Managed("RabbitMQ", brokers.rabbitmq, restartable=True))
        if cluster:
            found.append(Managed("RabbitMQ 3-node", lambda: brokers.rabbitmq(3),
                                 restartable=True, cluster=True))
    return found


def runs_on(sc: Scenario, m: Managed) -> bool:
    """A cluster runs only the scenarios that want one; a scenario for mq only runs on mq."""
    return (sc.cluster or not m.cluster) and (not sc.mq_only or m.name == "mq")


def run_one(binary: Path, m: Managed, sc: Scenario, settings: Settings) -> Measurement:
    """One run of a scenario on a broker, ready (restarted if fresh) for it; a scenario with
    variants (D1) runs each on a broker of its own. Raises BrokerError."""
    if sc.variants:
        parts = {name: run_one(binary, m, sc.variant(name), settings) for name, _ in sc.variants}
        return combine(sc, parts)
    broker = m.ready(fresh=sc.fresh_broker)
    return (restart.measure if sc.mode == "restart" else measure)(binary, broker, sc, settings)


def run_all(args: argparse.Namespace, settings: Settings, scenarios: list[Scenario],
            binary: Path) -> tuple[list[str], report.Results]:
    """Start the brokers, run every scenario on each, stop them; raises BrokerError."""
    results: report.Results = {}
    managed = chosen_brokers(args, scenarios)
    brokers.reset_logs()
    try:
        for m in managed:
            if not m.cluster:  # the cluster starts for the first scenario that wants it
                m.start()
        runs = sum(len([m for m in managed if runs_on(sc, m)]) for sc in scenarios)
        progress = Progress(runs * settings.repeat)
        # Scenario by scenario, each broker in turn, so both see the same machine load.
        for sc in scenarios:
            for rep in range(settings.repeat):
                of = f" (run {rep + 1}/{settings.repeat})" if settings.repeat > 1 else ""
                for m in managed:
                    if not runs_on(sc, m):
                        continue
                    with progress.step(f"{sc.id} on {m.name}{of}", sc.expected_seconds(settings)):
                        try:
                            run = run_one(binary, m, sc, settings)
                        except BrokerError as exc:
                            if not m.cluster:
                                raise
                            # A cluster that cannot start fails its scenario, not the run.
                            run = Measurement({"error": str(exc)}, 0.0, None)
                    results.setdefault(sc.id, {}).setdefault(m.name, []).append(run)
        progress.finish()
    finally:
        for m in managed:
            m.stop()
    return [m.name for m in managed], results


def write_outputs(args: argparse.Namespace, settings: Settings, scenarios: list[Scenario],
                  names: list[str], results: report.Results, argv: list[str],
                  load: dict[str, float]) -> None:
    rows = report.rows(scenarios, results, names)
    if args.json:
        meta = {"command": " ".join(["python -m bench", *argv]), "settings": vars(settings),
                "load_average_1min": load}
        text = json.dumps(report.to_json(scenarios, results, names, meta), indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(text + "\n")
    if args.json != "-":
        of = f"medians of {settings.repeat} runs" if settings.repeat > 1 else "one run"
        rates = report.rates_table(rows, names)
        if rates:
            print(f"Throughput, publishers flat out ({of} of {settings.duration:g} s each). "
                  "accepted: what the broker took from the publishers (confirmed with "
                  "confirms, else written); backlog: messages ready when publishing stopped; "
                  "CPU: the broker's, over the window, per delivered message.\n")
            print(rates)
            for sc in scenarios:
                if sc.cluster:  # what its brokers are: the table's lines say only the names
                    print(f"\n{sc.id}: {sc.title}.")
        others = report.table(rows, names)
        if others:
            print(("\n" if rates else "") + f"Other scenarios ({of}):\n")
            print(others)
        for sc in scenarios:
            if sc.mq_only:
                print(f"\n{sc.id}: run on mq only: {sc.mq_only}.")
        cpu = report.cpu_lines(scenarios, results, names)
        if cpu:
            print("\nCPU seconds, load generator / broker:")
            print("\n".join("  " + line for line in cpu))
        print(f"\nMachine load average (1 min): {load['before']:.2f} before, "
              f"{load['after']:.2f} after ({os.cpu_count()} cores)")
    if args.plot:
        from bench.plot import plot  # matplotlib only when asked for

        args.plot.parent.mkdir(parents=True, exist_ok=True)
        plot(rows, names, args.plot, " vs ".join(names))


def failures(results: report.Results) -> list[str]:
    """Runs that failed or moved no message."""
    return [f"{sid} on {broker}: {m.result.get('error') or 'no message was delivered'}"
            for sid, by_broker in results.items() for broker, runs in by_broker.items()
            for m in runs if not moved_messages(m.result)]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    try:
        scenarios = select(args.scenarios)
        binary = loadgen.build()
    except (ValueError, loadgen.LoadgenError) as exc:
        print(exc, file=sys.stderr)
        return 2
    settings = settings_from(args)
    raise_fd_limit()
    load_before = os.getloadavg()[0]
    try:
        names, results = run_all(args, settings, scenarios, binary)
    except BrokerError as exc:
        print(exc, file=sys.stderr)
        return 2
    # Other work on the machine skews every figure; say how busy it was.
    load = {"before": load_before, "after": os.getloadavg()[0]}
    write_outputs(args, settings, scenarios, names, results, argv, load)
    failed = failures(results)
    for line in failed:
        print(f"FAILED {line}", file=sys.stderr)
    return 1 if failed else 0
