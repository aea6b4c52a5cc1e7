"""End to end: a private etcd and three mq nodes on loopback, driven by real clients
(B-CLUSTER-1..8). Leader kills, pauses and etcd pauses; every confirmed message must be
found afterwards. A few failover rounds run by default; the 50-round soak with -m soak."""
from __future__ import annotations

import asyncio
import base64
import json
import re
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import aiormq
import pika
import pika.exceptions
import pytest

from mq.testing.cluster import Cluster, etcd_available

pytestmark = pytest.mark.skipif(not etcd_available(), reason="etcd is not installed")

TTL = 3
QUEUE = "cluster-q"


@pytest.fixture
def cluster(mq_cluster: Cluster) -> Cluster:
    """The plugin's three nodes (lease TTL 3 s, as TTL here), once both followers are in
    sync."""
    mq_cluster.wait_in_sync(3, timeout=20)
    return mq_cluster


def _connect(url: str, timeout: float = 10) -> pika.BlockingConnection:
    """A connection, retried for a while: a new leader listens once its store is open."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return pika.BlockingConnection(pika.URLParameters(
                url + "?heartbeat=0&connection_attempts=1&socket_timeout=5"))
        except pika.exceptions.AMQPConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _drain(url: str, queue: str) -> list[tuple[bytes, bool]]:
    """Every message of the queue (body, redelivered), acked."""
    conn = _connect(url)
    ch = conn.channel()
    out = []
    while True:
        method, _, body = ch.basic_get(queue)
        if method is None:
            break
        out.append((body, method.redelivered))
        ch.basic_ack(method.delivery_tag)
    conn.close()
    return out


def _http(node, method: str, path: str, body: object = None, user: str = "guest:guest"):
    req = urllib.request.Request(node.management_url + path, method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": "Basic "
                                          + base64.b64encode(user.encode()).decode(),
                                          "content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        data = resp.read()
        return json.loads(data) if data else None


class Publisher(threading.Thread):
    """Publishes persistent messages with confirms as fast as confirms come, numbered; on
    any error it reconnects to the next node (any node: followers relay to the leader) and
    goes on with the next number. Keeps which numbers were confirmed, and when."""

    def __init__(self, cluster: Cluster) -> None:
        super().__init__(daemon=True)
        self.cluster = cluster
        self.confirmed: dict[int, float] = {}
        self.stop = threading.Event()
        self.errors = 0

    def run(self) -> None:
        n, k = 0, 0
        while not self.stop.is_set():
            node = self.cluster.nodes[k % len(self.cluster.nodes)]
            k += 1
            try:
                conn = _connect(node.url, timeout=0)  # down: on to the next node at once
                ch = conn.channel()
                ch.confirm_delivery()
                ch.queue_declare(QUEUE, durable=True)
                while not self.stop.is_set():
                    n += 1
                    ch.basic_publish("", QUEUE, str(n).encode(),
                                     pika.BasicProperties(delivery_mode=2))
                    self.confirmed[n] = time.monotonic()
                conn.close()
            except (pika.exceptions.AMQPError, OSError):
                self.errors += 1
                time.sleep(0.05)

    def first_confirm_after(self, t: float, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            later = [c for c in list(self.confirmed.values()) if c > t]
            if later:
                return min(later)
            time.sleep(0.02)
        raise AssertionError(f"no confirm within {timeout} s")


def _check_all_confirmed(cluster: Cluster, pub: Publisher) -> None:
    leader = cluster.leader()
    got = _drain(leader.url, QUEUE)
    bodies = {int(b) for b, _ in got}
    lost = sorted(set(pub.confirmed) - bodies)
    assert not lost, f"{len(lost)} confirmed messages lost, first {lost[:10]}\n" \
                     + cluster.logs(tail=3000)


def _kill_rounds(cluster: Cluster, rounds: int) -> list[float]:
    pub = Publisher(cluster)
    pub.start()
    failovers = []
    try:
        pub.first_confirm_after(time.monotonic(), 10)
        for _ in range(rounds):
            cluster.wait_in_sync(3, timeout=30)
            old = cluster.leader()
            time.sleep(0.3)  # confirms flowing
            killed_at = time.monotonic()
            old.kill()
            cluster.wait_leader(not_name=old.name, timeout=TTL + 5)
            first = pub.first_confirm_after(killed_at, TTL + 10)
            failovers.append(first - killed_at)
            old.start()
        cluster.wait_in_sync(3, timeout=30)
    finally:
        pub.stop.set()
        pub.join(10)
    _check_all_confirmed(cluster, pub)
    assert len(pub.confirmed) > rounds * 10
    return failovers


def test_one_leader_the_others_follow_and_relay(cluster: Cluster) -> None:
    """B-CLUSTER-1, B-CLUSTER-2, B-CLUSTER-8: one leader, two in-sync followers; a client of
    a follower is served by the leader; /api/nodes on any node lists all three."""
    leader = cluster.leader()
    followers = cluster.followers()
    assert len(followers) == 2
    conn = _connect(followers[0].url)
    ch = conn.channel()
    ch.queue_declare("via-follower", durable=True)
    ch.confirm_delivery()
    ch.basic_publish("", "via-follower", b"hello", pika.BasicProperties(delivery_mode=2))
    conn.close()
    conn = _connect(followers[1].url)
    method, _, body = conn.channel().basic_get("via-follower", auto_ack=True)
    conn.close()
    assert body == b"hello"
    for node in cluster.nodes:
        nodes = {n["name"]: n for n in cluster.nodes_api(node)}
        assert set(nodes) == {"n1", "n2", "n3"}
        assert nodes[leader.name]["cluster_role"] == "leader"
        for f in followers:
            assert nodes[f.name]["cluster_role"] == "follower"
            assert nodes[f.name]["in_sync"] is True
            assert nodes[f.name]["running"] is True
            assert isinstance(nodes[f.name]["lag"], int)
    out = subprocess.run([sys.executable, "-m", "mq", "ctl", "--url", followers[0].management_url,
                          "cluster-status"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert leader.name in out.stdout and "leader" in out.stdout


def test_everything_durable_is_on_the_new_leader(cluster: Cluster) -> None:
    """B-CLUSTER-3, B-CLUSTER-4: topology, messages, acks, users, permissions and policies
    made on the leader are all there after it is killed; messages come back redelivered."""
    old = cluster.leader()
    conn = _connect(old.url)
    ch = conn.channel()
    ch.confirm_delivery()
    ch.exchange_declare("ex", "topic", durable=True)
    ch.queue_declare("kept", durable=True)
    ch.queue_bind("kept", "ex", "a.#")
    for i in range(100):
        ch.basic_publish("ex", "a.b", str(i).encode(), pika.BasicProperties(delivery_mode=2))
    for _ in range(40):  # 40 acked: gone for good
        method, _, _ = ch.basic_get("kept")
        ch.basic_ack(method.delivery_tag)
    tx = conn.channel()
    tx.tx_select()
    tx.basic_publish("ex", "a.c", b"in-tx", pika.BasicProperties(delivery_mode=2))
    tx.tx_commit()
    conn.close()
    _http(old, "PUT", "/api/users/alice", {"password": "pw", "tags": ""})
    _http(old, "PUT", "/api/permissions/%2F/alice", {"configure": "", "write": ".*",
                                                      "read": ".*"})
    _http(old, "PUT", "/api/policies/%2F/lim", {"pattern": "^kept$",
                                                "definition": {"max-length": 1000},
                                                "apply-to": "queues"})
    old.kill()
    new = cluster.wait_leader(not_name=old.name, timeout=TTL + 5)
    got = _drain(new.url.replace("guest:guest", "alice:pw"), "kept")
    assert [b for b, _ in got] == [str(i).encode() for i in range(40, 100)] + [b"in-tx"]
    assert all(redelivered for _, redelivered in got)
    policies = _http(new, "GET", "/api/policies/%2F")
    assert [p["name"] for p in policies] == ["lim"]
    conn = _connect(new.url)
    ch = conn.channel()
    ch.queue_declare("kept", durable=True, passive=True)
    ch.basic_publish("ex", "a.z", b"routed")  # the binding came over too
    assert ch.queue_declare("kept", durable=True, passive=True).method.message_count == 1
    conn.close()


def test_leader_killed_rounds_lose_no_confirmed_message(cluster: Cluster) -> None:
    """B-CLUSTER-4, B-CLUSTER-7: the leader is SIGKILLed three times while a publisher
    confirms throughout; a follower takes over within the lease TTL plus 2 s, the old
    leader rejoins as a follower, and every confirmed message is there at the end."""
    failovers = _kill_rounds(cluster, 3)
    assert max(failovers) <= TTL + 2, failovers


@pytest.mark.soak
@pytest.mark.timeout(1800)
def test_leader_killed_fifty_rounds() -> None:
    """B-CLUSTER-4, B-CLUSTER-7 (soak): 50 leader SIGKILL rounds, 0 confirmed lost."""
    with Cluster(n=3, lease_ttl=TTL) as c:
        failovers = _kill_rounds(c, 50)
    print(f"failover s: max {max(failovers):.2f} mean {sum(failovers) / len(failovers):.2f}")
    assert max(failovers) <= TTL + 2, failovers


async def _publish_async(url: str, bodies: list[bytes], wait: float,
                         ready: threading.Event | None = None,
                         go: threading.Event | None = None) -> list[bytes]:
    """Publish on one connection with confirms; the bodies acked within `wait` seconds.
    With ready/go: set ready once the channel is open, publish when go is set."""
    deadline = time.monotonic() + 10
    while True:  # a new leader listens once its store is open
        try:
            conn = await aiormq.connect(url)
            break
        except ConnectionError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
    ch = await conn.channel()
    await ch.confirm_delivery()
    if ready is not None and go is not None:
        ready.set()
        await asyncio.to_thread(go.wait)
    futures = [asyncio.ensure_future(ch.basic_publish(
        b, routing_key=QUEUE, properties=aiormq.spec.Basic.Properties(delivery_mode=2)))
        for b in bodies]
    done, _ = await asyncio.wait(futures, timeout=wait)
    acked = [b for b, f in zip(bodies, futures)
             if f in done and not f.exception()
             and isinstance(f.result(), aiormq.spec.Basic.Ack)]
    try:
        await asyncio.wait_for(conn.close(), 2)
    except Exception:
        pass
    return acked


def _declare(url: str) -> None:
    conn = _connect(url)
    conn.channel().queue_declare(QUEUE, durable=True)
    conn.close()


def test_paused_leader_confirms_nothing_the_new_leader_lacks(cluster: Cluster) -> None:
    """B-CLUSTER-5: the leader is paused (SIGSTOP) past its lease while publishes wait in
    its socket; a follower takes over; when the old leader runs again it confirms nothing
    the new leader lacks, and rejoins as a follower."""
    old = cluster.leader()
    _declare(old.url)
    result: list[bytes] = []
    ready, go = threading.Event(), threading.Event()

    def publish() -> None:  # sent while it is paused: they wait in its socket
        result.extend(asyncio.run(_publish_async(old.url, [b"p%d" % i for i in range(200)],
                                                 TTL + 8, ready, go)))

    publisher = threading.Thread(target=publish)
    publisher.start()
    assert ready.wait(10)
    old.pause()
    try:
        go.set()
        new = cluster.wait_leader(not_name=old.name, timeout=TTL + 5)
        time.sleep(0.5)
    finally:
        old.resume()
    publisher.join(TTL + 15)
    old.wait_for_log("stepping down", timeout=10)
    cluster.wait_in_sync(3, timeout=30)
    assert cluster.leader().name == new.name
    have = {b for b, _ in _drain(new.url, QUEUE)}
    assert set(result) <= have, sorted(set(result) - have)[:5]


def test_a_new_leader_waits_for_every_in_sync_follower(cluster: Cluster) -> None:
    """B-CLUSTER-3, B-CLUSTER-4: the leader is killed while one follower is paused; the
    other takes over with the paused one still in the in-sync set, and confirms nothing
    until etcd records it gone."""
    leader = cluster.leader()
    f1, f2 = cluster.followers()
    _declare(leader.url)
    f2.pause()
    try:
        leader.kill()
        new = cluster.wait_leader(not_name=leader.name, timeout=TTL + 5)
        assert new.name == f1.name
        acked = asyncio.run(_publish_async(new.url, [b"x"], 10))
        isr = cluster.isr()
    finally:
        f2.resume()
    assert acked == [b"x"]
    assert isr["members"] == [f1.name]


def test_etcd_paused_nothing_new_is_confirmed_then_all_resumes(cluster: Cluster) -> None:
    """B-CLUSTER-6: with etcd paused past the lease, a publish gets no confirm; after etcd
    is back a leader serves again and confirms, and nothing confirmed before is lost."""
    leader = cluster.leader()
    _declare(leader.url)
    before = asyncio.run(_publish_async(leader.url, [b"before"], 5))
    assert before == [b"before"]
    cluster.etcd.pause()
    try:
        time.sleep(TTL)
        during = asyncio.run(_publish_async(leader.url, [b"during"], 3))
        assert during == []
    finally:
        cluster.etcd.resume()
    deadline = time.monotonic() + 30
    after: list[bytes] = []
    while not after and time.monotonic() < deadline:
        try:
            after = asyncio.run(_publish_async(cluster.leader(10).url, [b"after"], 5))
        except (OSError, aiormq.exceptions.AMQPError, asyncio.TimeoutError):
            time.sleep(0.5)
    assert after == [b"after"]
    have = [b for b, _ in _drain(cluster.leader().url, QUEUE)]
    assert b"before" in have and b"after" in have


def test_follower_killed_the_cluster_confirms_on_and_it_catches_up(cluster: Cluster) -> None:
    """B-CLUSTER-3, B-CLUSTER-7: a killed follower leaves the in-sync set and the leader
    confirms on; restarted, it syncs what it missed and becomes in sync; then it alone
    can lead with every confirmed message."""
    leader = cluster.leader()
    f1, f2 = cluster.followers()
    _declare(leader.url)
    f1.kill()
    t = time.monotonic()
    acked = asyncio.run(_publish_async(leader.url, [b"m%d" % i for i in range(500)], 10))
    assert len(acked) == 500
    assert time.monotonic() - t < 5  # dropped from the gate after its silence
    assert f1.name not in cluster.isr()["members"]
    f1.start()
    cluster.wait_in_sync(3, timeout=30)
    nodes = {n["name"]: n for n in cluster.nodes_api(leader)}
    assert nodes[f1.name]["in_sync"] is True
    leader.kill()
    f2.kill()
    new = cluster.wait_leader(not_name=leader.name, timeout=TTL + 5)
    assert new.name == f1.name
    have = [b for b, _ in _drain(new.url, QUEUE)]
    assert have == acked


def test_a_node_not_in_sync_never_leads() -> None:
    """B-CLUSTER-7: a node that joins while the others are down is not in the in-sync set
    and does not take over; the cluster waits for a member."""
    with Cluster(n=3, lease_ttl=TTL) as c:
        c.wait_in_sync(3, timeout=20)
        leader = c.leader()
        f1, f2 = c.followers()
        _declare(leader.url)
        f2.kill()
        time.sleep(3)  # dropped from the in-sync set
        assert f2.name not in c.isr()["members"]
        leader.kill()
        f1.kill()
        f2.start()
        time.sleep(TTL + 2)
        assert c.leader_info() is None
        f1.start()
        assert c.wait_leader(timeout=TTL + 10).name == f1.name


def test_amqps_through_a_follower(tmp_path) -> None:
    """B-CLUSTER-2: with TLS configured, a follower relays its amqps port to the leader's
    (TLS ends at the leader); a client of the follower works over TLS."""
    if subprocess.run(["which", "openssl"], capture_output=True).returncode:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    with Cluster(n=2, lease_ttl=TTL, args=("--tls-cert", str(cert), "--tls-key", str(key),
                                           "--tls-port", "0")) as c:
        c.wait_in_sync(2, timeout=20)
        follower = c.followers()[0]
        port = int(re.search(r"proxy listening what=amqps \S+ port=(\d+)",
                             follower.log()).group(1))
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False
        params = pika.ConnectionParameters("127.0.0.1", port,
                                           ssl_options=pika.SSLOptions(context, "localhost"),
                                           credentials=pika.PlainCredentials("guest", "guest"))
        conn = pika.BlockingConnection(params)
        ch = conn.channel()
        ch.queue_declare("tls-q", durable=True)
        ch.confirm_delivery()
        ch.basic_publish("", "tls-q", b"over tls", pika.BasicProperties(delivery_mode=2))
        method, _, body = ch.basic_get("tls-q", auto_ack=True)
        conn.close()
        assert body == b"over tls"


def test_a_stream_and_its_tracked_offsets_survive_failover(cluster: Cluster) -> None:
    """B-CLUSTER-3, B-STREAM-6: a stream's messages and its consumers' tracked offsets are
    replicated: after the leader is killed, the new leader has every confirmed message and
    a tracking consumer resumes after its last ack."""
    old = cluster.leader()
    conn = _connect(old.url)
    ch = conn.channel()
    ch.queue_declare("events", durable=True, arguments={"x-queue-type": "stream"})
    ch.confirm_delivery()
    for i in range(30):
        ch.basic_publish("", "events", b"e%d" % i)
    ch.basic_qos(prefetch_count=10)
    got: list[int] = []

    def on(c, method, props, body):
        got.append(props.headers["x-stream-offset"])
        if len(got) <= 12:
            c.basic_ack(method.delivery_tag)
    ch.basic_consume("events", on, consumer_tag="reader", arguments={"x-stream-offset": None})
    deadline = time.monotonic() + 5
    while len(got) < 13 and time.monotonic() < deadline:
        conn.process_data_events(0.05)
    try:
        conn.close()
    except pika.exceptions.AMQPError:
        pass  # pika rejects deliveries it still buffers; a stream refuses (540, as RabbitMQ)
    time.sleep(1.5)  # tracked offsets are saved (and replicated) within half a second
    old.kill()
    new = cluster.wait_leader(not_name=old.name, timeout=TTL + 5)
    conn = _connect(new.url)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=50)
    again: list[int] = []
    ch.basic_consume("events", lambda c, m, p, b: again.append(p.headers["x-stream-offset"]),
                     consumer_tag="reader", arguments={"x-stream-offset": None})
    deadline = time.monotonic() + 5
    while len(again) < 18 and time.monotonic() < deadline:
        conn.process_data_events(0.05)
    conn.close()
    assert again == list(range(12, 30))
