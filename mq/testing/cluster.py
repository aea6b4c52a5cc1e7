"""Run an mq cluster for tests and the benchmark: a private etcd and N node processes, all on
free loopback ports with temporary directories (B-CLUSTER).

    from mq.testing.cluster import Cluster, etcd_available

    with Cluster(n=3, lease_ttl=3) as cluster:      # etcd + 3 nodes, started, a leader elected
        leader = cluster.leader()
        pika.BlockingConnection(pika.URLParameters(leader.url))
        leader.kill()
        new = cluster.wait_leader(not_name=leader.name)
        cluster.wait_in_sync(2)

Nothing here needs the cluster code of mq itself to read etcd: the leader and in-sync set are
read from etcd's JSON gateway (`/mq/<cluster>/leader`, `/mq/<cluster>/isr`) with urllib. Every
process started is killed by `cleanup()`, by the context manager, and at interpreter exit.
"""
from __future__ import annotations

import atexit
import base64
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from typing import Any, Iterator

from mq.testing import BrokerChild, ChildProcess

ETCD_BINARY = "/usr/bin/etcd"

_STARTED = re.compile(r"mq listening on amqp://|cluster: following")

# Everything started and not cleaned up yet: cleaned at exit, so a failing test or an
# interrupted benchmark leaves no process and no directory behind.
_LIVE: set[Any] = set()


@atexit.register
def _cleanup_all() -> None:
    for thing in list(_LIVE):
        try:
            thing.cleanup()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


PORTS_FROM = 10000
_handed_out: set[int] = set()  # this process's nodes' ports, free or not


def etcd_available() -> bool:
    """Is etcd installed (Debian's etcd-server)? Tests skip when it is not."""
    return os.access(ETCD_BINARY, os.X_OK)


def free_port(host: str = "127.0.0.1") -> int:
    """A port free now, chosen below the kernel's range of ports for outgoing connections: a
    node keeps its ports across restarts and starts after others, and a port of that range
    may meanwhile become the local end of any connection (another node's to etcd, say)."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
        ephemeral_low = int(fh.read().split()[0])
    for _ in range(1000):
        port = random.randrange(PORTS_FROM, ephemeral_low)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {PORTS_FROM}..{ephemeral_low}")


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class EtcdError(RuntimeError):
    pass


class Etcd(ChildProcess):
    """A single-member etcd on free loopback client and peer ports with its own data dir.

    `get`/`put` go through etcd's JSON gateway (POST /v3/kv/range, /v3/kv/put, base64 keys
    and values); a paused etcd (SIGSTOP) makes them time out (TimeoutError)."""

    def __init__(self, base_dir: str | None = None, host: str = "127.0.0.1",
                 startup_timeout: float = 20.0) -> None:
        self._own_dir = base_dir is None
        self.base_dir = base_dir or tempfile.mkdtemp(prefix="mq-etcd-")
        self.data_dir = os.path.join(self.base_dir, "etcd")
        self.log_path = os.path.join(self.base_dir, "etcd.log")
        self.host = host
        self.client_port = free_port(host)
        self.peer_port = free_port(host)
        self.name = f"etcd-{self.client_port}"
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The client URL, as given to `--cluster-etcd`."""
        return f"http://{self.host}:{self.client_port}"

    def command(self) -> list[str]:
        peer = f"http://{self.host}:{self.peer_port}"
        return [ETCD_BINARY, "--name", self.name, "--data-dir", self.data_dir,
                "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"{self.name}={peer}",
                "--initial-cluster-state", "new", "--initial-cluster-token", self.name,
                "--logger", "zap", "--log-outputs", "stderr"]

    def start(self) -> Etcd:
        """Start etcd (again, on the same ports and data, after stop()) and wait until it
        answers a range request."""
        if not etcd_available():
            raise EtcdError(f"etcd is not installed ({ETCD_BINARY}): apt-get install etcd-server")
        os.makedirs(self.base_dir, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        _LIVE.add(self)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                self.get("/mq-testing/ping", timeout=1.0)
                return self
            except (OSError, TimeoutError, EtcdError):
                time.sleep(0.05)
        self.kill()
        raise EtcdError(f"etcd did not start; log:\n{self.log()[-4000:]}")

    def log(self) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                return fh.read().decode("utf-8", "replace")
        except OSError:
            return ""

    # -- the JSON gateway ----------------------------------------------------------------

    def request(self, path: str, body: dict, timeout: float = 2.0) -> dict:
        """POST a JSON body to the gateway (path like "/v3/kv/range"); the parsed answer.
        TimeoutError when etcd does not answer in time (paused), OSError when it is down."""
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            raise EtcdError(f"etcd {path}: HTTP {exc.code} {exc.read()[:500]!r}") from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, (TimeoutError, socket.timeout)):
                raise TimeoutError(f"etcd {path}: no answer in {timeout} s") from None
            raise OSError(f"etcd {path}: {exc.reason}") from None
        except socket.timeout:
            raise TimeoutError(f"etcd {path}: no answer in {timeout} s") from None

    def get(self, key: str, timeout: float = 2.0) -> str | None:
        """The value of a key (decoded as UTF-8), or None when there is none."""
        kvs = self.request("/v3/kv/range", {"key": _b64(key)}, timeout).get("kvs") or []
        if not kvs:
            return None
        return base64.b64decode(kvs[0].get("value", "")).decode("utf-8", "replace")

    def get_json(self, key: str, timeout: float = 2.0) -> Any:
        """The value of a key parsed as JSON, or None when there is none (or it is not JSON)."""
        value = self.get(key, timeout)
        if value is None:
            return None
        try:
            return json.loads(value)
        except ValueError:
            return None

    def put(self, key: str, value: str, timeout: float = 2.0) -> None:
        self.request("/v3/kv/put", {"key": _b64(key), "value": _b64(value)}, timeout)

    def delete(self, key: str, timeout: float = 2.0) -> None:
        self.request("/v3/kv/deleterange", {"key": _b64(key)}, timeout)

    def leader(self, cluster: str, timeout: float = 2.0) -> dict | None:
        """The leader key of a cluster: {"name", "amqp", "management", "replication"}."""
        return self.get_json(f"/mq/{cluster}/leader", timeout)

    def leader_name(self, cluster: str, timeout: float = 2.0) -> str | None:
        leader = self.leader(cluster, timeout)
        return leader.get("name") if isinstance(leader, dict) else None

    def isr(self, cluster: str, timeout: float = 2.0) -> dict | None:
        """The in-sync set of a cluster: {"leader": name, "members": [names]}."""
        isr = self.get_json(f"/mq/{cluster}/isr", timeout)
        return isr if isinstance(isr, dict) else None

    # -- signals ---------------------------------------------------------------------------

    def cleanup(self) -> None:
        self.kill()
        _LIVE.discard(self)
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> Etcd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


class ClusterNode(BrokerChild):
    """One mq node process. Its ports (AMQP, management, replication) are chosen when it is
    created, so a restart keeps them; its log is `node.log` in its data dir and a restart
    appends to it. The PID stays the same when the node re-executes itself (os.execv)."""

    def __init__(self, name: str, etcd_url: str, cluster_name: str, data_dir: str,
                 lease_ttl: int = 3, host: str = "127.0.0.1", args: tuple[str, ...] = (),
                 startup_timeout: float = 30.0) -> None:
        self.name = name
        self.etcd_url = etcd_url
        self.cluster_name = cluster_name
        self.data_dir = data_dir
        self.lease_ttl = lease_ttl
        self.host = host
        self.args = tuple(args)
        self.startup_timeout = startup_timeout
        self.port = free_port(host)
        self.management_port = free_port(host)
        self.replication_port = free_port(host)
        self.log_path = os.path.join(data_dir, "node.log")
        self.proc: subprocess.Popen | None = None
        self._offset = 0  # where the current run's part of the log starts

    def command(self) -> list[str]:
        return [sys.executable, "-m", "mq", "--host", self.host, "--port", str(self.port),
                "--management-port", str(self.management_port), "--data-dir", self.data_dir,
                "--cluster-etcd", self.etcd_url, "--cluster-name", self.cluster_name,
                "--node-name", self.name, "--replication-port", str(self.replication_port),
                "--advertise-host", self.host, "--cluster-lease-ttl", str(self.lease_ttl),
                *self.args]

    def start(self, wait: bool | float = True) -> ClusterNode:
        """Start the process. wait=True: until the new part of its log says it leads ("mq
        listening on amqp://") or follows ("cluster: following"), at most startup_timeout;
        a number: at most that many seconds; False: return at once (see wait_started)."""
        os.makedirs(self.data_dir, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._offset = log.tell()
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        if wait:
            self.wait_started(self.startup_timeout if wait is True else float(wait))
        return self

    def wait_started(self, timeout: float | None = None) -> ClusterNode:
        """Wait until this run of the node leads or follows; RuntimeError (with the log) if it
        exits or takes longer than timeout (default startup_timeout)."""
        self.wait_for_log(_STARTED, self.startup_timeout if timeout is None else timeout)
        return self

    def wait_for_log(self, pattern: str | re.Pattern, timeout: float = 10.0,
                     since_start: bool = True) -> re.Match:
        """Wait until the log (this run's part, or all of it) matches a regex; the match.
        RuntimeError if the process exits first or the time runs out."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.log(since_start))
            if match:
                return match
            if not self.running:
                raise RuntimeError(f"node {self.name} exited (code "
                                   f"{self.proc.returncode if self.proc else None}) before "
                                   f"logging /{regex.pattern}/; log:\n{self.log(True)[-4000:]}")
            if time.monotonic() >= deadline:
                raise RuntimeError(f"node {self.name} did not log /{regex.pattern}/ within "
                                   f"{timeout:.0f} s; log:\n{self.log(True)[-4000:]}")
            time.sleep(0.05)

    def log(self, since_start: bool = False) -> str:
        """The node's log: all runs, or only the current run's part."""
        try:
            with open(self.log_path, "rb") as fh:
                if since_start:
                    fh.seek(self._offset)
                return fh.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> None:
        super().stop(timeout)

    def restart(self, kill: bool = False, wait: bool | float = True) -> ClusterNode:
        """Stop (or kill) and start again on the same ports and data dir."""
        self.kill() if kill else self.stop()
        return self.start(wait)

    def __repr__(self) -> str:
        return f"<ClusterNode {self.name} pid={self.pid} amqp={self.port}>"


class Cluster:
    """A private etcd (or a given one) and n mq nodes named n1..nN, each with its own data
    dir under one temporary base dir. Roles are read from etcd, not from the nodes' logs."""

    def __init__(self, n: int = 3, lease_ttl: int = 3, name: str | None = None,
                 base_dir: str | None = None, etcd: Etcd | None = None,
                 args: tuple[str, ...] = (), host: str = "127.0.0.1",
                 startup_timeout: float = 30.0) -> None:
        self._own_dir = base_dir is None
        self.base_dir = base_dir or tempfile.mkdtemp(prefix="mq-cluster-")
        self.name = name or f"test-{uuid.uuid4().hex[:8]}"
        self.lease_ttl = lease_ttl
        self._own_etcd = etcd is None
        self.etcd = etcd or Etcd(os.path.join(self.base_dir, "etcd"), host)
        self.nodes = [ClusterNode(f"n{i}", self.etcd.url, self.name,
                                  os.path.join(self.base_dir, f"n{i}"), lease_ttl, host, args,
                                  startup_timeout)
                      for i in range(1, n + 1)]
        self.startup_timeout = startup_timeout
        _LIVE.add(self)

    def node(self, name: str) -> ClusterNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def start(self, wait_leader: bool = True) -> Cluster:
        """Start etcd (when it is ours and not running), then every node at once; wait until
        each leads or follows and, with wait_leader, until etcd names a leader. On failure
        the processes keep running (and the logs stay) until cleanup()."""
        if self._own_etcd and self.etcd.proc is None:
            self.etcd.start()
        for node in self.nodes:
            node.start(wait=False)
        for node in self.nodes:
            node.wait_started()
        if wait_leader:
            self.leader(self.startup_timeout)
        return self

    # -- roles, from etcd -------------------------------------------------------------------

    def leader_info(self) -> dict | None:
        """The leader key's JSON now (None: no leader, or etcd does not answer)."""
        try:
            return self.etcd.leader(self.name, timeout=1.0)
        except (OSError, TimeoutError, EtcdError):
            return None

    def isr(self) -> dict | None:
        """The isr key's JSON now: {"leader": name, "members": [names]} (None: none yet)."""
        try:
            return self.etcd.isr(self.name, timeout=1.0)
        except (OSError, TimeoutError, EtcdError):
            return None

    def leader(self, timeout: float = 10.0) -> ClusterNode:
        """The node etcd's leader key names (waiting up to timeout for one)."""
        return self.wait_leader(timeout=timeout)

    def wait_leader(self, not_name: str | None = None, timeout: float = 10.0) -> ClusterNode:
        """Wait until etcd names a leader (other than not_name) whose process runs; that node.
        TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            last = self.leader_info()
            name = last.get("name") if isinstance(last, dict) else None
            if name and name != not_name:
                node = next((n for n in self.nodes if n.name == name), None)
                if node is not None and node.running:
                    return node
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no leader{'' if not_name is None else ' but ' + not_name}"
                                   f" within {timeout:.0f} s (leader key: {last}, isr: "
                                   f"{self.isr()})")
            time.sleep(0.05)

    def followers(self, timeout: float = 10.0) -> list[ClusterNode]:
        """The running nodes other than the leader."""
        leader = self.leader(timeout)
        return [n for n in self.nodes if n is not leader and n.running]

    def wait_in_sync(self, count: int | None = None, timeout: float = 30.0) -> dict:
        """Wait until the in-sync set of the current leader counts at least `count` nodes,
        the leader included (default: all n); the isr JSON. TimeoutError otherwise."""
        want = len(self.nodes) if count is None else count
        deadline = time.monotonic() + timeout
        while True:
            isr, leader = self.isr(), self.leader_info()
            if isr and leader and isr.get("leader") == leader.get("name"):
                members = set(isr.get("members") or ()) | {isr["leader"]}
                if len(members) >= want:
                    return isr
            if time.monotonic() >= deadline:
                raise TimeoutError(f"fewer than {want} nodes in sync after {timeout:.0f} s "
                                   f"(isr: {isr}, leader: {leader})")
            time.sleep(0.05)

    def nodes_api(self, node: ClusterNode | None = None, timeout: float = 5.0) -> list[dict]:
        """GET /api/nodes (guest:guest) of a node (default: the first running one)."""
        node = node or next(n for n in self.nodes if n.running)
        req = urllib.request.Request(node.management_url + "/api/nodes", headers={
            "Authorization": "Basic " + base64.b64encode(b"guest:guest").decode()})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())

    # -- all of it ----------------------------------------------------------------------------

    @property
    def pids(self) -> list[int]:
        return [n.pid for n in self.nodes if n.pid is not None]

    def logs(self, tail: int | None = None) -> str:
        """Every node's log (its last `tail` characters), one after the other, for a failing
        test's message."""
        return "\n".join(f"===== {n.name} =====\n{n.log()[-tail if tail else 0:]}"
                         for n in self.nodes)

    def stop(self) -> None:
        """Stop every node gracefully (etcd keeps running)."""
        for node in self.nodes:
            node.stop()

    def cleanup(self) -> None:
        """Kill every node and our etcd, remove the directories. Safe to call twice."""
        for node in self.nodes:
            try:
                node.kill()
            except OSError:
                pass
        if self._own_etcd:
            self.etcd.cleanup()
        _LIVE.discard(self)
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> Cluster:
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def __iter__(self) -> Iterator[ClusterNode]:
        return iter(self.nodes)
