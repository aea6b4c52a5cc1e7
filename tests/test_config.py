"""issue 8 (configuration): every setting is a TOML key, an MQ_* variable and a flag, with
defaults < file < environment < flags; `mq --print-config` shows the result; bad input is a
one-line error and exit code 2."""
from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys

import pika
import pytest

from mq.config import Settings, add_arguments, load
from mq.testing import run_broker

# A valid value, other than the default, for every setting: (as a flag/env string, as TOML).
SAMPLES = {
    "host": ("127.0.0.2", '"127.0.0.2"'),
    "port": ("5699", "5699"),
    "data_dir": ("/tmp/mq-elsewhere", '"/tmp/mq-elsewhere"'),
    "log_level": ("debug", '"debug"'),
    "max_message_size": ("4096", "4096"),
    "heartbeat": ("7", "7"),
    "handshake_timeout": ("2.5", "2.5"),
    "loopback_users": ("guest,admin", '"guest,admin"'),
    "definitions": ("/tmp/defs.json", '"/tmp/defs.json"'),
    "tls_port": ("5690", "5690"),
    "tls_cert": ("/tmp/cert.pem", '"/tmp/cert.pem"'),
    "tls_key": ("/tmp/key.pem", '"/tmp/key.pem"'),
    "tls_ca": ("/tmp/ca.pem", '"/tmp/ca.pem"'),
    "management_host": ("127.0.0.3", '"127.0.0.3"'),
    "management_port": ("15999", "15999"),
    "memory_high_watermark": ("0.25", "0.25"),
    "disk_free_limit": ("2GB", '"2GB"'),
    "max_connections": ("100", "100"),
    "max_channels_per_connection": ("64", "64"),
    "max_queues": ("500", "500"),
    "queue_memory_budget": ("1048576", "1048576"),
    "store_segment_size": ("1048576", "1048576"),
    "cluster_etcd": ("http://127.0.0.1:2379,http://127.0.0.2:2379",
                     '"http://127.0.0.1:2379,http://127.0.0.2:2379"'),
    "cluster_name": ("prod", '"prod"'),
    "node_name": ("n7", '"n7"'),
    "replication_port": ("5688", "5688"),
    "advertise_host": ("10.0.0.5", '"10.0.0.5"'),
    "cluster_lease_ttl": ("5", "5"),
}
NAMES = [f.name for f in dataclasses.fields(Settings)]


def _load(argv: list[str]) -> Settings:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return load(parser.parse_args(argv))


def _expected(name: str) -> object:
    return type(getattr(Settings(), name))(SAMPLES[name][0])


def _mq(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mq", *args], capture_output=True, text=True,
                          timeout=30, env=env)


def test_every_setting_has_a_sample():
    """issue 8 (configuration): the tests below cover every setting there is."""
    assert sorted(SAMPLES) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_each_setting_three_ways(name, tmp_path, monkeypatch):
    """issue 8 (configuration): each setting can be given as a TOML key (with '_' or '-'),
    as MQ_<NAME>, and as --<name>."""
    for other in NAMES:
        monkeypatch.delenv(f"MQ_{other.upper()}", raising=False)
    flag, toml = SAMPLES[name]
    for key in (name, name.replace("_", "-")):
        path = tmp_path / "mq.toml"
        path.write_text(f"{key} = {toml}\n")
        assert getattr(_load(["--config", str(path)]), name) == _expected(name)
    monkeypatch.setenv(f"MQ_{name.upper()}", flag)
    assert getattr(_load([]), name) == _expected(name)
    monkeypatch.delenv(f"MQ_{name.upper()}")
    assert getattr(_load(["--" + name.replace("_", "-"), flag]), name) == _expected(name)


def test_precedence_and_print_config(tmp_path):
    """issue 8 (configuration): flags beat the environment, which beats the file, which beats
    the defaults; --print-config prints the effective values as TOML."""
    path = tmp_path / "mq.toml"
    path.write_text("heartbeat = 5\nmax_queues = 10\nmax_connections = 20\n")
    env = {"PATH": "/usr/bin:/bin", "MQ_MAX_QUEUES": "11", "MQ_MAX_CONNECTIONS": "21"}
    result = _mq("--config", str(path), "--max-connections", "22", "--print-config", env=env)
    assert result.returncode == 0, result.stderr
    lines = set(result.stdout.splitlines())
    assert {"heartbeat = 5", "max_queues = 11", "max_connections = 22",
            "port = 5672", "disk_free_limit = '50MB'"} <= lines
    assert len(lines) == len(NAMES)


@pytest.mark.parametrize("args,env,message", [
    (("--port", "abc"), {}, "mq: port (from --port) must be an integer, not 'abc'"),
    ((), {"MQ_PORT": "abc"}, "mq: port (from MQ_PORT) must be an integer, not 'abc'"),
    (("--config", "{file}"), {}, "mq: port (from {file}) must be an integer, not 'abc'"),
    (("--port", "70000"), {}, "mq: port must be 0..65535, not 70000"),
    (("--log-level", "loud"), {},
     "mq: log_level must be one of debug, info, warning, error, not 'loud'"),
    (("--max-channels-per-connection", "5000"), {},
     "mq: max_channels_per_connection must be 1..2047, not 5000"),
    (("--memory-high-watermark", "lots"), {},
     "mq: invalid memory_high_watermark: 'lots' is not a size (bytes, or a number with "
     "kB/MB/GB/KiB/MiB/GiB)"),
    (("--config", "/nonexistent/mq.toml"), {},
     "mq: cannot read config file /nonexistent/mq.toml: No such file or directory"),
    (("--cluster-lease-ttl", "1"), {}, "mq: cluster_lease_ttl must be at least 2 s, not 1"),
    (("--cluster-etcd", "localhost:2379"), {},
     "mq: cluster_etcd: 'localhost:2379' is not an http:// URL of etcd"),
], ids=["flag", "env", "file", "range", "log-level", "channel-max", "watermark", "no-file",
        "lease-ttl", "etcd-url"])
def test_bad_values_are_one_line_and_exit_2(args, env, message, tmp_path):
    """issue 8 (configuration): a bad value from a flag, the environment or the file is one
    readable line on stderr and exit code 2, never a traceback."""
    path = tmp_path / "mq.toml"
    path.write_text('port = "abc"\n')
    args = tuple(a.replace("{file}", str(path)) for a in args)
    result = _mq(*args, "--print-config", env={"PATH": "/usr/bin:/bin", **env})
    assert result.returncode == 2
    assert result.stderr.splitlines() == [message.replace("{file}", str(path))]
    assert result.stdout == ""


def test_unknown_and_malformed_file(tmp_path):
    """issue 8 (configuration): unknown keys in the file are named in the error; a file that
    is not TOML says so; both exit 2."""
    path = tmp_path / "mq.toml"
    path.write_text("port = 5672\nmax_conections = 5\nbogus = 1\n")
    result = _mq("--config", str(path), "--print-config")
    assert (result.returncode, result.stderr.strip()) == (
        2, f"mq: unknown settings in {path}: bogus, max_conections")
    path.write_text("port = = 1\n")
    result = _mq("--config", str(path), "--print-config")
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"mq: config file {path} is not valid TOML: ")


def test_config_file_reaches_the_broker(tmp_path, uid):
    """issue 8 (configuration): a running broker uses the file's settings (here the queue
    limit and the channel_max it proposes)."""
    path = tmp_path / "mq.toml"
    path.write_text("max-queues = 1\nmax_channels_per_connection = 9\n")
    with run_broker(args=("--config", str(path))) as broker:
        conn = pika.BlockingConnection(pika.URLParameters(broker.url))
        assert conn._impl.params.channel_max == 9
        ch = conn.channel()
        ch.queue_declare(uid)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            ch.queue_declare(uid + "-2")
        assert info.value.reply_code == 406
        conn.close()
