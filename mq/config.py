"""One settings object: defaults < config file (TOML) < environment (MQ_*) < flags."""
from __future__ import annotations

import argparse
import os
import re
import socket
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path


class ConfigError(Exception):
    """A setting that cannot be used; the message is one line for the operator."""


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
    memory_high_watermark: str = "0.4"
    disk_free_limit: str = "50MB"
    max_connections: int = 0
    max_channels_per_connection: int = 2047
    max_queues: int = 0
    queue_memory_budget: int = 32 * 1024 * 1024
    store_segment_size: int = 32 * 1024 * 1024
    cluster_etcd: str = ""
    cluster_name: str = "mq"
    node_name: str = ""
    replication_port: int = 5679
    advertise_host: str = ""
    cluster_lease_ttl: int = 10

    def __post_init__(self) -> None:
        if not self.data_dir:
            self.data_dir = default_data_dir()
        if not self.node_name:
            self.node_name = socket.gethostname()


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
    "memory_high_watermark": "block publishers above this much memory (RSS): a fraction of "
                             "total RAM like 0.4, or bytes like 512MB",
    "disk_free_limit": "block publishers when the data dir's disk has less free space "
                       "(bytes, e.g. 50MB)",
    "max_connections": "most client connections at once (0: no limit)",
    "max_channels_per_connection": "channel_max proposed to clients (1..2047)",
    "max_queues": "most queues in the broker, all vhosts together (0: no limit)",
    "queue_memory_budget": "bytes a queue keeps in memory (bodies plus about 400 per message); "
                           "newer messages beyond that wait on disk until the queue drains "
                           "(0: no limit)",
    "store_segment_size": "bytes per segment file of the message store (smaller: disk is "
                          "reclaimed in smaller steps, more files)",
    "cluster_etcd": "etcd endpoints (http://host:port, comma-separated): turns clustering on",
    "cluster_name": "the cluster's name: its keys in etcd are under /mq/<name>/",
    "node_name": "this node's name in the cluster (default: the host name)",
    "replication_port": "port the leader streams its data to followers on (0 picks a free one)",
    "advertise_host": "address other nodes and proxied clients use to reach this node "
                      "(default: --host, or the host name when --host is 0.0.0.0)",
    "cluster_lease_ttl": "seconds of the etcd lease: a leader silent this long is replaced",
}

LOG_LEVELS = ("debug", "info", "warning", "error")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000 ** 2, "g": 1000 ** 3, "t": 1000 ** 4,
          "ki": 1024, "mi": 1024 ** 2, "gi": 1024 ** 3, "ti": 1024 ** 4}


def parse_size(text: str) -> int:
    """Bytes from '52428800', '50MB' or '1GiB' (RabbitMQ's units: MB = 1000^2, MiB = 1024^2)."""
    match = _SIZE.match(str(text))
    if match is None:
        raise ValueError(f"{text!r} is not a size (bytes, or a number with kB/MB/GB/KiB/MiB/GiB)")
    unit = (match.group(2) or "").lower().rstrip("b")
    return int(float(match.group(1)) * _UNITS[unit])


_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max",  # cgroup v2
                  "/sys/fs/cgroup/memory/memory.limit_in_bytes")  # v1


def total_memory() -> int:
    """RAM in bytes: the physical size, or the container's (cgroup) limit when lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in _CGROUP_LIMITS:
        try:
            with open(path) as fh:
                text = fh.read().strip()
        except OSError:
            continue
        if text.isdigit():  # "max" (v2) means no limit; v1 says so with a huge number
            total = min(total, int(text))
    return total


def memory_limit(text: str) -> int:
    """The memory watermark in bytes: a number up to 1 is a fraction of total RAM (RabbitMQ's
    relative watermark), anything else an absolute size."""
    try:
        fraction = float(text)
    except ValueError:
        return parse_size(text)
    if 0 < fraction <= 1:
        return int(fraction * total_memory())
    return parse_size(text)


def _check(settings: Settings) -> None:
    """Values that have the right type but no meaning."""
    if not 0 <= settings.port <= 65535:
        raise ConfigError(f"port must be 0..65535, not {settings.port}")
    if settings.log_level.lower() not in LOG_LEVELS:
        raise ConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)}, "
                          f"not {settings.log_level!r}")
    if not 1 <= settings.max_channels_per_connection <= 2047:
        raise ConfigError("max_channels_per_connection must be 1..2047, not "
                          f"{settings.max_channels_per_connection}")
    for name in ("max_connections", "max_queues", "max_message_size", "heartbeat",
                 "queue_memory_budget"):
        if getattr(settings, name) < 0:
            raise ConfigError(f"{name} must not be negative")
    if not 64 * 1024 <= settings.store_segment_size <= 1 << 31:
        raise ConfigError("store_segment_size must be 64KB..2GB, not "
                          f"{settings.store_segment_size}")
    for url in filter(None, (u.strip() for u in settings.cluster_etcd.split(","))):
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"cluster_etcd: {url!r} is not an http:// URL of etcd")
    if settings.cluster_lease_ttl < 2:
        raise ConfigError(f"cluster_lease_ttl must be at least 2 s, not {settings.cluster_lease_ttl}")
    if not 0 <= settings.replication_port <= 65535:
        raise ConfigError(f"replication_port must be 0..65535, not {settings.replication_port}")
    for name, parse in (("memory_high_watermark", memory_limit), ("disk_free_limit", parse_size)):
        try:
            parse(getattr(settings, name))
        except ValueError as exc:
            raise ConfigError(f"invalid {name}: {exc}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML config file with any of the settings below")
    parser.add_argument("--print-config", action="store_true",
                        help="print the effective settings and exit")
    for f in fields(Settings):
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None,
                            help=f"{HELP[f.name]} (env MQ_{f.name.upper()})")


_KINDS = {int: "an integer", float: "a number", str: "a string"}


def _coerce(name: str, value: object, source: str) -> object:
    kind = type(getattr(Settings(), name))
    if isinstance(value, kind) and not isinstance(value, bool):
        return value
    if isinstance(value, (bool, dict, list)) or (kind is int and isinstance(value, float)):
        raise ConfigError(f"{name} (from {source}) must be {_KINDS[kind]}, not {value!r}")
    try:
        return kind(value)
    except ValueError:
        raise ConfigError(f"{name} (from {source}) must be {_KINDS[kind]}, "
                          f"not {value!r}") from None


def _read_file(path: str) -> dict[str, object]:
    """A TOML file of settings; keys are the flag names with '_' or '-'."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    data = {key.replace("-", "_"): value for key, value in data.items()}
    unknown = set(data) - {f.name for f in fields(Settings)}
    if unknown:
        raise ConfigError(f"unknown settings in {path}: {', '.join(sorted(unknown))}")
    return data


def load(args: argparse.Namespace) -> Settings:
    """The effective settings; ConfigError (one line) when any is unusable."""
    values: dict[str, object] = {}
    config = getattr(args, "config", None)
    if config:
        values.update({k: _coerce(k, v, config) for k, v in _read_file(config).items()})
    for f in fields(Settings):
        env = os.environ.get(f"MQ_{f.name.upper()}")
        if env is not None:
            values[f.name] = _coerce(f.name, env, f"MQ_{f.name.upper()}")
        flag = getattr(args, f.name, None)
        if flag is not None:
            values[f.name] = _coerce(f.name, flag, "--" + f.name.replace("_", "-"))
    settings = Settings(**values)
    _check(settings)
    return settings
