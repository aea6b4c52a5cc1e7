"""The brokers under test: mq started here, a local RabbitMQ started here, or one already running."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlparse

from bench.procinfo import listens, pid_listening_on

REPO_ROOT = Path(__file__).resolve().parent.parent
# Broker logs outlive the brokers' temp dirs, so a failure can be looked into afterwards.
LOG_DIR = Path(tempfile.gettempdir()) / "mq-bench-logs"
RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"  # the Debian wrapper would su to rabbitmq
RABBITMQCTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"


class BrokerError(RuntimeError):
    pass


@dataclass
class Broker:
    name: str
    url: str
    pid: int | None  # the process that listens (beam.smp for RabbitMQ); RSS and CPU are read from it
    exited: Callable[[], str | None] = lambda: None  # why it stopped, if it did; None while alive
    node: Node | None = None  # the process, when we run it: R1 restarts it on the same data
    also: tuple[int, ...] = ()  # a cluster's other nodes: their CPU and RSS count with pid's


def reset_logs() -> None:
    """Start a run with an empty log folder (only the last run's logs are kept)."""
    shutil.rmtree(LOG_DIR, ignore_errors=True)
    LOG_DIR.mkdir(parents=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait_listening(proc: subprocess.Popen, port: int, timeout: float, log: Path) -> int:
    """Wait until something listens on port; return its pid."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BrokerError(f"exited with {proc.returncode} before listening:\n{_tail(log)}")
        if _port_open(port):
            return pid_listening_on(port) or proc.pid
        time.sleep(0.2)
    raise BrokerError(f"not listening on port {port} after {timeout:.0f}s:\n{_tail(log)}")


def _tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Node:
    """A broker process we run, in its own session. It can be stopped with the signal of our
    choice and started again with the same command and environment, so on the same data
    directory under the same node name (the restart scenario, R1)."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], port: int,
                 start_timeout: float) -> None:
        self.name, self.cmd, self.env, self.port = name, cmd, env, port
        self.start_timeout = start_timeout
        self.log = LOG_DIR / f"{name}-{port}.log"
        self.proc: subprocess.Popen | None = None

    def spawn(self) -> None:
        """Start the process and return at once (R1 times the start from here)."""
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:  # a restart appends to the first start's log
            self.proc = subprocess.Popen(self.cmd, env=self.env, cwd=REPO_ROOT, stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)

    def wait_listening(self) -> int:
        """Wait until it listens on its port; the pid of the process that does."""
        return _wait_listening(self.proc, self.port, self.start_timeout, self.log)

    def exited(self) -> str | None:
        """Why it stopped, if it did; None while alive."""
        if self.proc is None or self.proc.poll() is None:
            return None
        return f"exited with code {self.proc.returncode} (log {self.log}):\n{_tail(self.log)}"

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 20) -> bool:
        """Send sig to its process group and wait, SIGKILL after timeout; whether it ended
        before that."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return True
        deadline = time.monotonic() + timeout
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return False
        except ProcessLookupError:  # it ended meanwhile
            pass
        # RabbitMQ's script dies at once on SIGKILL, beam.smp a moment later: until then it
        # holds the port, and a restart would find the old node there.
        while listens(self.port) and time.monotonic() < deadline:
            time.sleep(0.01)
        return True


@contextmanager
def _spawned(name: str, cmd: list[str], env: dict[str, str], port: int,
             start_timeout: float) -> Iterator[Broker]:
    node = Node(name, cmd, env, port, start_timeout)
    node.spawn()
    try:
        pid = node.wait_listening()
        yield Broker(name, f"amqp://guest:guest@127.0.0.1:{port}/", pid, node.exited, node)
    except BrokerError as exc:
        raise BrokerError(f"{name}: {exc}") from None
    finally:
        node.stop()


@contextmanager
def mq() -> Iterator[Broker]:
    """Start `python -m mq` on a free port with a fresh data directory."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-mq-") as tmp:
        workdir = Path(tmp)
        # No management listener: its fixed default port would clash with another broker.
        cmd = [sys.executable, "-m", "mq", "--port", str(port), "--data-dir", str(workdir / "data"),
               "--management-port", "-1"]
        with _spawned("mq", cmd, dict(os.environ), port, start_timeout=30) as broker:
            yield broker


@contextmanager
def mq_cluster(nodes: int = 3) -> Iterator[Broker]:
    """A private etcd and an mq cluster of `nodes` nodes (mq.testing.cluster), every node in
    sync; the broker is the leader (its URL), with the followers' CPU and RSS counted too."""
    from mq.testing.cluster import Cluster, etcd_available

    name = f"mq {nodes}-node"
    if not etcd_available():
        raise BrokerError(f"{name}: etcd is not installed (apt-get install etcd-server)")
    cluster = Cluster(n=nodes, lease_ttl=10, startup_timeout=60)
    try:
        try:
            cluster.start()
            cluster.wait_in_sync(nodes, timeout=60)
            leader = cluster.leader()
        except (RuntimeError, OSError) as exc:  # TimeoutError is an OSError
            raise BrokerError(f"{name}: {exc}\n{cluster.logs(tail=1500)}") from None

        def exited() -> str | None:
            gone = [n for n in cluster.nodes if not n.running]
            return "; ".join(f"node {n.name} exited (log {LOG_DIR}/cluster-{n.name}.log):\n"
                             f"{n.log()[-2000:]}" for n in gone) or None

        yield Broker(name, leader.url, leader.pid, exited,
                     also=tuple(n.pid for n in cluster.nodes if n is not leader))
    finally:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        for n in cluster.nodes:  # the logs outlive the cluster's temp dir
            if os.path.exists(n.log_path):
                shutil.copyfile(n.log_path, LOG_DIR / f"cluster-{n.name}.log")
        cluster.cleanup()


@contextmanager
def rabbitmq(nodes: int = 1) -> Iterator[Broker]:
    """Start a private RabbitMQ node (own name, ports, data and config) next to any running one.
    With nodes > 1: that many nodes on this machine forming one cluster (classic peer
    discovery, one Erlang cookie); the broker is the first node, with the others' CPU and RSS
    counted too."""
    if not Path(RABBITMQ_SERVER).exists():
        raise BrokerError(f"RabbitMQ is not installed ({RABBITMQ_SERVER} missing)")
    ports = [free_port() for _ in range(nodes)]
    names = [f"bench{port}@localhost" for port in ports]
    with tempfile.TemporaryDirectory(prefix="bench-rabbitmq-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        conf = "" if nodes == 1 else "cluster_formation.peer_discovery_backend = classic_config\n"
        conf += "".join(f"cluster_formation.classic_config.nodes.{i} = {name}\n"
                        for i, name in enumerate(names, 1) if nodes > 1)
        (workdir / "rabbitmq.conf").write_text(conf)
        (workdir / "enabled_plugins").write_text("[].\n")
        (workdir / "rabbitmq-env.conf").write_text("")  # not /etc/rabbitmq's
        cookie = workdir / ".erlang.cookie"  # the nodes' common one ($HOME)
        cookie.write_text(os.urandom(16).hex())
        cookie.chmod(0o400)
        started = []
        for port, name in zip(ports, names):
            env = dict(
                os.environ,
                HOME=str(workdir),  # its own Erlang cookie
                RABBITMQ_NODENAME=name,
                RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
                RABBITMQ_NODE_PORT=str(port),
                RABBITMQ_DIST_PORT=str(free_port()),
                RABBITMQ_MNESIA_BASE=str(workdir / "mnesia"),
                RABBITMQ_LOG_BASE=str(LOG_DIR / f"rabbitmq-{port}"),
                RABBITMQ_CONFIG_FILE=str(workdir / "rabbitmq.conf"),
                RABBITMQ_ADVANCED_CONFIG_FILE=str(workdir / "advanced.config"),
                RABBITMQ_ENABLED_PLUGINS_FILE=str(workdir / "enabled_plugins"),
                RABBITMQ_CONF_ENV_FILE=str(workdir / "rabbitmq-env.conf"),
                RABBITMQ_PID_FILE=str(workdir / f"rabbitmq-{port}.pid"),
            )
            started.append(stack.enter_context(
                _spawned("RabbitMQ", [RABBITMQ_SERVER], env, port, start_timeout=90)))
        if nodes == 1:
            yield started[0]
            return
        _wait_clustered(names[0], env, nodes)

        def exited() -> str | None:
            return next((why for why in (b.exited() for b in started) if why), None)

        yield Broker(f"RabbitMQ {nodes}-node", started[0].url, started[0].pid, exited,
                     also=tuple(b.pid for b in started[1:]))


def _wait_clustered(node: str, env: dict[str, str], nodes: int, timeout: float = 90) -> None:
    """Wait until `nodes` RabbitMQ nodes run in node's cluster (rabbitmqctl cluster_status)."""
    deadline = time.monotonic() + timeout
    running: list = []
    while time.monotonic() < deadline:
        proc = subprocess.run([RABBITMQCTL, "-n", node, "cluster_status", "--formatter", "json"],
                              env=env, capture_output=True, text=True, timeout=60)
        if proc.returncode == 0:
            running = json.loads(proc.stdout).get("running_nodes", [])
            if len(running) >= nodes:
                return
        time.sleep(1)
    raise BrokerError(f"RabbitMQ: {len(running)} of {nodes} nodes running in one cluster after "
                      f"{timeout:.0f} s ({running}); logs in {LOG_DIR}")


@contextmanager
def running(name: str, url: str) -> Iterator[Broker]:
    """A broker somebody else runs; its pid is found when it listens on this machine."""
    parsed = urlparse(url)
    pid = None
    if parsed.hostname in ("127.0.0.1", "localhost", "::1"):
        pid = pid_listening_on(parsed.port or 5672)
    yield Broker(name, url, pid)


@dataclass
class Managed:
    """A broker that can be restarted for a scenario that needs one with no history (memory
    figures: an allocator keeps what earlier scenarios freed). Brokers run by someone else are
    never restarted."""

    name: str
    factory: Callable[[], AbstractContextManager[Broker]]
    restartable: bool
    cluster: bool = False  # runs only the scenarios marked cluster=True
    broker: Broker | None = None
    _stack: ExitStack = field(default_factory=ExitStack)

    def start(self) -> Broker:
        self._stack = ExitStack()
        self.broker = self._stack.enter_context(self.factory())
        return self.broker

    def stop(self) -> None:
        self._stack.close()
        self.broker = None

    def ready(self, fresh: bool) -> Broker:
        """The broker for the next scenario: restarted when asked to, or when it died."""
        died = self.broker is None or self.broker.exited() is not None
        if self.restartable and (fresh or died):
            self.stop()
            return self.start()
        return self.broker
