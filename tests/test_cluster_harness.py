"""The cluster test harness itself (mq/testing/cluster.py): a private etcd on free loopback
ports, its JSON gateway, pausing and restarting it; and one node's process (ports kept across
a restart, signals), which asks no more of mq than to start with the cluster flags."""
from __future__ import annotations

import json
import os
import socket
import tempfile
import time

import pytest

from mq.testing.cluster import ClusterNode, Etcd, etcd_available

pytestmark = pytest.mark.skipif(not etcd_available(),
                                reason="etcd is not installed (apt-get install etcd-server)")


def test_etcd_starts_answers_and_stops() -> None:
    etcd = Etcd().start()
    try:
        assert etcd.url.startswith("http://127.0.0.1:")
        assert etcd.get("/mq/none/leader") is None
        etcd.put("/mq/h/leader", json.dumps({"name": "n1", "amqp": "127.0.0.1:1"}))
        etcd.put("/mq/h/isr", json.dumps({"leader": "n1", "members": ["n1", "n2"]}))
        assert etcd.get("/mq/h/leader") == '{"name": "n1", "amqp": "127.0.0.1:1"}'
        assert etcd.leader_name("h") == "n1"
        assert etcd.isr("h") == {"leader": "n1", "members": ["n1", "n2"]}
        etcd.put("/mq/h/leader", "not json ü")
        assert etcd.get("/mq/h/leader") == "not json ü"
        assert etcd.leader_name("h") is None
        etcd.delete("/mq/h/leader")
        assert etcd.get("/mq/h/leader") is None
        pid, base = etcd.pid, etcd.base_dir
    finally:
        etcd.cleanup()
    assert etcd.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not os.path.exists(base)


def test_etcd_pause_and_resume() -> None:
    with Etcd() as etcd:
        etcd.put("k", "v")
        etcd.pause()
        try:
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                etcd.get("k", timeout=0.5)
            assert time.monotonic() - started < 3
        finally:
            etcd.resume()
        assert etcd.get("k", timeout=5) == "v"


def test_etcd_stop_and_start_again_keeps_ports_and_data() -> None:
    with Etcd() as etcd:
        url = etcd.url
        etcd.put("k", "v")
        etcd.stop()
        with pytest.raises(OSError):
            etcd.get("k", timeout=1)
        etcd.start()
        assert etcd.url == url
        assert etcd.get("k") == "v"


def test_node_restart_keeps_its_ports_and_signals_reach_it() -> None:
    with Etcd() as etcd, tempfile.TemporaryDirectory() as tmp:
        node = ClusterNode("n1", etcd.url, "harness", os.path.join(tmp, "n1"))
        try:
            node.start()
            ports, pid = (node.port, node.management_port, node.replication_port), node.pid
            assert node.url == f"amqp://guest:guest@127.0.0.1:{node.port}/"
            socket.create_connection(("127.0.0.1", node.port), timeout=5).close()
            node.pause()
            node.resume()
            assert node.running
            node.restart(kill=True)
            assert (node.port, node.management_port, node.replication_port) == ports
            assert node.pid != pid
            assert len(node.log()) > len(node.log(since_start=True))  # two runs, one log
            node.kill()
            assert not node.running and node.pid is None
        finally:
            node.kill()
