"""One settings object: defaults < config file (TOML) < environment (MQ_*) < flags."""
from __future__ import annotations

import argparse
import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path


def default_data_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return os.path.join(base, "mq")


@dataclass
class Settings:
    host: str = "0.0.0.0"
    port: int = 5672
    data_dir: str = ""
    log_level: str = "info"
    max_message_size: int = 128 * 1024 * 1024
    heartbeat: int = 60
    handshake_timeout: float = 10.0
    loopback_users: str = "guest"
    definitions: str = ""
    tls_port: int = 5671
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    management_host: str = ""
    management_port: int = 15672

    def __post_init__(self) -> None:
        if not self.data_dir:
            self.data_dir = default_data_dir()


HELP = {
    "host": "address to listen on",
    "port": "AMQP port (0 picks a free one and logs it)",
    "data_dir": "where durable state lives",
    "log_level": "debug, info, warning or error",
    "max_message_size": "largest accepted message body in bytes",
    "heartbeat": "heartbeat interval proposed to clients, seconds (0 disables)",
    "handshake_timeout": "seconds a client has to finish the AMQP handshake",
    "loopback_users": "comma-separated users allowed to connect only from loopback",
    "definitions": "definitions JSON (RabbitMQ's format) to load at start",
    "tls_port": "amqps port, used when --tls-cert and --tls-key are given",
    "tls_cert": "PEM certificate (chain) for the amqps listener",
    "tls_key": "PEM private key for the amqps listener",
    "tls_ca": "PEM CA bundle: when set, clients must present a certificate it signed",
    "management_host": "address of the management HTTP API (default: --host)",
    "management_port": "management HTTP API, dashboard and /metrics port (0 picks a free "
                       "one and logs it, -1 turns it off)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML config file with any of the settings below")
    parser.add_argument("--print-config", action="store_true",
                        help="print the effective settings and exit")
    for f in fields(Settings):
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None,
                            help=f"{HELP[f.name]} (env MQ_{f.name.upper()})")


def _coerce(name: str, value: object) -> object:
    kind = type(getattr(Settings(), name))
    return kind(value) if not isinstance(value, kind) else value


def load(args: argparse.Namespace) -> Settings:
    values: dict[str, object] = {}
    if getattr(args, "config", None):
        with open(args.config, "rb") as fh:
            data = tomllib.load(fh)
        unknown = set(data) - {f.name for f in fields(Settings)}
        if unknown:
            raise SystemExit(f"mq: unknown settings in {args.config}: {', '.join(sorted(unknown))}")
        values.update(data)
    for f in fields(Settings):
        env = os.environ.get(f"MQ_{f.name.upper()}")
        if env is not None:
            values[f.name] = env
        flag = getattr(args, f.name, None)
        if flag is not None:
            values[f.name] = flag
    return Settings(**{k: _coerce(k, v) for k, v in values.items()})
