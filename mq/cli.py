"""`python -m mq` / `mq`: start the broker; `mq ctl …`: manage a running one."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from functools import partial

import anyio

from mq import __version__
from mq.config import ConfigError, Settings, add_arguments, load


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )


def run_server(settings: Settings) -> None:
    try:
        import uvloop  # noqa: F401  (faster loop where installed)
        backend_options = {"use_uvloop": True}
    except ImportError:
        backend_options = {}
    if settings.cluster_etcd:  # B-CLUSTER: the node follows or leads; it serves when it leads
        from mq.cluster.node import run_node

        main = partial(run_node, settings)
    else:
        from mq.server import Server

        main = Server(settings).serve
    try:
        anyio.run(main, backend="asyncio", backend_options=backend_options)
    except KeyboardInterrupt:
        pass


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["ctl"]:  # `mq ctl …`: the admin client of a running broker
        from mq.ctl import main as ctl_main

        ctl_main(argv[1:])
        return
    parser = argparse.ArgumentParser(prog="mq", description="mq: an AMQP 0-9-1 message broker")
    parser.add_argument("--version", action="version", version=f"mq {__version__}")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        settings = load(args)
    except ConfigError as exc:
        print(f"mq: {exc}", file=sys.stderr)  # one line, exit 2 as argparse does for bad flags
        raise SystemExit(2) from None
    if args.print_config:
        for key, value in dataclasses.asdict(settings).items():
            print(f"{key} = {value!r}")
        return
    _setup_logging(settings.log_level)
    run_server(settings)
