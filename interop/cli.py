"""Command line: ``python -m interop --url URL [--against URL] [--report FILE.html] ...``."""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Any

from . import matrix, report
from .broker import Broker, MqProcess, external
from .outcome import FAILING, NOT_INSTALLED
from .registry import BY_NAME as CLIENTS_BY_NAME, CLIENTS
from .scenarios import BY_NAME as SCENARIOS_BY_NAME, SCENARIOS, Ctx
from .suite import Suite

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m interop", description=__doc__)
    p.add_argument("--url", help=f"broker under test (default {DEFAULT_URL} unless --start-mq)")
    p.add_argument("--start-mq", action="store_true",
                   help="start `python -m mq` on a free port with a temp data dir and test it")
    p.add_argument("--mq-arg", action="append", default=[], help="extra argument for python -m mq")
    p.add_argument("--restart-cmd", help="shell command that restarts the --url broker (B-DUR-2)")
    p.add_argument("--against", metavar="URL", help="second broker (e.g. RabbitMQ) to compare with")
    p.add_argument("--against-restart-cmd", help="shell command that restarts the --against broker")
    p.add_argument("--clients", help="comma-separated client names (default: all)")
    p.add_argument("--scenarios", help="comma-separated scenario names (default: all)")
    p.add_argument("--short", action="store_true", help="short waits (heartbeat idle of seconds, not a minute)")
    p.add_argument("--jobs", type=int, default=8, help="driver processes run at once (default 8)")
    p.add_argument("--timeout-scale", type=float, default=1.0, help="multiply every scenario timeout")
    p.add_argument("--max-seconds", type=float,
                   help="budget for the whole run: cells still waiting when it is used up are reported "
                        "as timeouts instead of run (so a broker that hangs everything still yields a matrix)")
    p.add_argument("--report", metavar="FILE.html", help="write the matrix as an HTML page")
    p.add_argument("--json", metavar="FILE", help="write every observation as JSON")
    p.add_argument("--list", action="store_true", help="list clients and scenarios, then exit")
    p.add_argument("--script", metavar="SCENARIO", help="print a scenario's script (driver stdin) and exit")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    return p.parse_args(argv)


def pick(names: str | None, table: dict[str, Any], what: str) -> list[Any]:
    if not names:
        return list(table.values())
    unknown = [n for n in names.split(",") if n.strip() not in table]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(table)})")
    return [table[n.strip()] for n in names.split(",")]


def list_all() -> int:
    print("clients:")
    for c in CLIENTS:
        print(f"  {c.name:<15} {c.language:<7} {c.library:<32} {c.not_installed() or 'installed'}")
    print("scenarios:")
    for s in SCENARIOS:
        print(f"  {s.name:<15} {' '.join(s.ids):<28} {s.title}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        return list_all()
    if args.script:
        plan = SCENARIOS_BY_NAME[args.script].build(Ctx("manual", args.url or DEFAULT_URL, args.short))
        print(json.dumps({"scenario": args.script, "steps": plan.steps}, indent=1))
        return 0
    clients = pick(args.clients, CLIENTS_BY_NAME, "client")
    scenarios = pick(args.scenarios, SCENARIOS_BY_NAME, "scenario")
    lock = threading.Lock()

    def progress(msg: str) -> None:
        if not args.quiet:
            with lock:
                print(msg, file=sys.stderr, flush=True)

    mq: MqProcess | None = None
    brokers: list[Broker] = []
    try:
        if args.start_mq:
            mq = MqProcess(args.mq_arg)
            progress(f"starting mq on port {mq.port} (data dir {mq.data_dir})")
            mq.start()
            brokers.append(mq.broker())
        else:
            brokers.append(external("broker", args.url or DEFAULT_URL, args.restart_cmd))
        if args.against:
            brokers.append(external("against", args.against, args.against_restart_cmd))
        suite = Suite(scenarios, clients, args.short, args.jobs, args.timeout_scale, progress=progress,
                      max_seconds=args.max_seconds)
        started = time.monotonic()
        results = suite.run(brokers)
        crashed = mq.died() if mq is not None else None
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if mq is not None:
            mq.cleanup()
    print(matrix.render(scenarios, clients, results))
    if crashed:
        print(f"\nerror: {crashed}")
    print(f"\ntotal {time.monotonic() - started:.0f}s")
    if args.report:
        report.write(args.report, scenarios, clients, results)
        print(f"report written to {args.report}")
    if args.json:
        dump_json(args.json, results)
    return 1 if crashed else exit_code(results, explicit_clients=bool(args.clients))


def dump_json(path: str, results: list) -> None:
    data = {r.broker.label: {"url": r.broker.url, "cells": [
        {"scenario": s, "client": c, "status": o.status, "reason": o.reason, "seconds": round(o.seconds, 2),
         "observed": o.observed} for (s, c), o in sorted(r.cells.items())]} for r in results}
    with open(path, "w") as f:
        json.dump(data, f, indent=1)


def exit_code(results: list, explicit_clients: bool) -> int:
    """1 on any failure or timeout; also when a client asked for by name is not installed."""
    for r in results:
        for o in r.cells.values():
            if o.status in FAILING or (explicit_clients and o.status == NOT_INSTALLED):
                return 1
    return 0
