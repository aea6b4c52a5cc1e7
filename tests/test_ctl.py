"""`mq ctl` (B-MGMT-3), run as a user runs it (`python -m mq ctl …` in a subprocess)
against a real broker's management port; effects checked with pika and the API."""
from __future__ import annotations

import json
import subprocess
import sys
from typing import Iterator

import pika
import pytest

from ctlutil import amqp, ctl
from mq.ctl import ApiClient
from mq.testing import BrokerProcess, run_broker


@pytest.fixture(scope="module")
def broker() -> Iterator[BrokerProcess]:
    with run_broker(args=("--management-port", "0")) as b:
        yield b


def table(output: str) -> list[dict[str, str]]:
    """Rows of a ctl table, by column name."""
    header, *rows = output.splitlines()
    names = header.split()
    return [dict(zip(names, row.split())) for row in rows]


def test_queues_declare_list_purge_delete(broker: BrokerProcess, uid: str) -> None:
    """B-MGMT-3: declare a queue with an argument, see pika's messages in `list queues`
    (table and --json), purge it, delete it."""
    name = f"ctl-{uid}"
    assert ctl(broker, "declare-queue", name, "--arg", "x-max-length=10").stdout.strip() \
        == f"queue {name} declared"
    conn = amqp(broker)
    ch = conn.channel()
    for _ in range(3):
        ch.basic_publish("", name, b"x")
    ch.queue_declare(name, passive=True, durable=True, arguments={"x-max-length": 10})
    [row] = [r for r in table(ctl(broker, "list", "queues").stdout) if r["name"] == name]
    assert row == {"vhost": "/", "name": name, "messages": "3", "messages_ready": "3",
                   "messages_unacknowledged": "0", "consumers": "0", "durable": "True"}
    [queue] = [q for q in json.loads(ctl(broker, "--json", "list", "queues", "--vhost", "/")
                                     .stdout) if q["name"] == name]
    assert queue["arguments"] == {"x-max-length": 10}
    got = json.loads(ctl(broker, "--json", "get", name, "--count", "2").stdout)
    assert [m["payload"] for m in got] == ["x", "x"]
    ctl(broker, "purge-queue", name)
    assert ch.queue_declare(name, passive=True).method.message_count == 0
    ctl(broker, "delete-queue", name)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.queue_declare(name, passive=True)
    assert info.value.reply_code == 404
    conn.close()
    result = ctl(broker, "delete-queue", name, ok=False)
    assert result.stderr.strip() == "mq ctl: error 404: Not Found"


def test_exchanges_and_bindings(broker: BrokerProcess, uid: str) -> None:
    """B-MGMT-3: declare an exchange, bind a queue to it, route through it (publish),
    unbind, delete."""
    x, q = f"cx-{uid}", f"cq-{uid}"
    ctl(broker, "declare-exchange", x, "topic")
    ctl(broker, "declare-queue", q, "--transient")
    ctl(broker, "bind", x, q, "--routing-key", "k.*")
    rows = [r for r in table(ctl(broker, "list", "bindings").stdout) if r["source"] == x]
    assert rows == [{"vhost": "/", "source": x, "destination": q, "destination_type": "queue",
                     "routing_key": "k.*"}]
    [exchange] = [r for r in table(ctl(broker, "list", "exchanges").stdout) if r["name"] == x]
    assert exchange["type"] == "topic" and exchange["durable"] == "True"
    assert ctl(broker, "publish", x, "k.a", "hello").stdout.strip() == "routed"
    [message] = json.loads(ctl(broker, "--json", "get", q, "--ack").stdout)
    assert (message["payload"], message["routing_key"]) == ("hello", "k.a")
    ctl(broker, "unbind", x, q, "--routing-key", "k.*")
    assert ctl(broker, "publish", x, "k.a", "hello").stdout.strip() == "not routed"
    ctl(broker, "delete-exchange", x)
    ctl(broker, "delete-queue", q)
    assert x not in ctl(broker, "list", "exchanges").stdout


def test_users_vhosts_permissions(broker: BrokerProcess, uid: str) -> None:
    """B-MGMT-3: add a vhost and a user, set permissions: pika gets in and the permission
    patterns hold; clear them: refused; delete both."""
    vhost, user = f"cv-{uid}", f"cu-{uid}"
    ctl(broker, "add-vhost", vhost)
    ctl(broker, "add-user", user, "pw", "--tags", "management")
    ctl(broker, "set-permissions", user, "--vhost", vhost, "--configure", "^mine",
        "--write", ".*", "--read", ".*")
    rows = [r for r in table(ctl(broker, "list", "permissions").stdout) if r["user"] == user]
    assert rows == [{"user": user, "vhost": vhost, "configure": "^mine", "write": ".*",
                     "read": ".*"}]
    assert {"name": user, "tags": "management"} in table(ctl(broker, "list", "users").stdout)
    assert vhost in [r["name"] for r in table(ctl(broker, "list", "vhosts").stdout)]
    conn = amqp(broker, user, "pw", vhost)
    ch = conn.channel()
    ch.queue_declare("mine-1")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.queue_declare("theirs")
    assert info.value.reply_code == 403
    conn.close()
    ctl(broker, "clear-permissions", user, "--vhost", vhost)
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        amqp(broker, user, "pw", vhost)
    ctl(broker, "delete-vhost", vhost)
    ctl(broker, "delete-user", user)
    assert vhost not in ctl(broker, "list", "vhosts").stdout
    assert user not in ctl(broker, "list", "users").stdout


def test_close_connection(broker: BrokerProcess, uid: str) -> None:
    """B-MGMT-3: `close-connection NAME` closes that client with 320 CONNECTION_FORCED and
    the reason given."""
    conn = amqp(broker)
    conn.channel()
    port = conn._impl._transport._sock.getsockname()[1]
    [row] = [r for r in table(ctl(broker, "list", "connections").stdout)
             if r["peer_port"] == str(port)]
    assert row["user"] == "guest" and row["vhost"] == "/" and row["channels"] == "1"
    ctl(broker, "close-connection", row["name"], "--reason", f"maintenance-{uid}")
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
        conn.process_data_events(2)
        conn.channel()
    assert (info.value.reply_code, info.value.reply_text) == (
        320, f"CONNECTION_FORCED - maintenance-{uid}")


def test_export_import_definitions(broker: BrokerProcess, uid: str, tmp_path) -> None:
    """B-MGMT-3: `export` writes RabbitMQ-shaped definitions; `import` into a second broker
    recreates the durable queue and exchange, the binding and the user."""
    ctl(broker, "declare-exchange", f"ex-{uid}", "direct")
    ctl(broker, "declare-queue", f"eq-{uid}")
    ctl(broker, "bind", f"ex-{uid}", f"eq-{uid}", "--routing-key", "r")
    ctl(broker, "add-user", f"eu-{uid}", "secret", "--tags", "administrator")
    path = tmp_path / "defs.json"
    ctl(broker, "export", str(path))
    exported = json.loads(path.read_text())
    assert {"name": f"eq-{uid}", "vhost": "/", "durable": True, "auto_delete": False,
            "arguments": {}} in exported["queues"]
    with run_broker(args=("--management-port", "0")) as other:
        ctl(other, "import", str(path))
        assert f"eq-{uid}" in ctl(other, "list", "queues").stdout
        bindings = table(ctl(other, "list", "bindings").stdout)
        assert {"vhost": "/", "source": f"ex-{uid}", "destination": f"eq-{uid}",
                "destination_type": "queue", "routing_key": "r"} in bindings
        # The imported administrator can use ctl with the password from the first broker.
        whoami = ApiClient(other.management_url, f"eu-{uid}", "secret").get("/api/whoami")
        assert whoami == {"name": f"eu-{uid}", "tags": ["administrator"]}
    for args in (("delete-queue", f"eq-{uid}"), ("delete-exchange", f"ex-{uid}"),
                 ("delete-user", f"eu-{uid}")):
        ctl(broker, *args)


def test_errors_are_readable(broker: BrokerProcess) -> None:
    """B-MGMT-3: a wrong password, an inequivalent redeclare and an unreachable broker
    each give one readable line and a non-zero exit."""
    assert ctl(broker, "list", "queues", ok=False, password="nope").stderr.strip() \
        == "mq ctl: error 401: Login failed"
    ctl(broker, "declare-queue", "ctl-durable")
    assert ctl(broker, "declare-queue", "ctl-durable", "--transient", ok=False).stderr.strip() \
        == ("mq ctl: error 400: inequivalent arg 'durable' for queue 'ctl-durable' in vhost "
            "'/': received 'false' but current is 'true'")
    ctl(broker, "delete-queue", "ctl-durable")
    result = subprocess.run([sys.executable, "-m", "mq", "ctl", "--url", "http://127.0.0.1:9",
                             "list", "queues"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert result.stderr.startswith("mq ctl: cannot reach http://127.0.0.1:9")


def test_cluster_status_on_a_single_node(broker: BrokerProcess) -> None:
    """B-CLUSTER-8: `ctl cluster-status` prints the nodes of /api/nodes as a table: a single
    node leads, in sync, lag 0, running, with its AMQP address; --json gives the nodes."""
    result = ctl(broker, "cluster-status")
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["name", "role", "in_sync", "lag", "running", "amqp_address"]
    [row] = table(result.stdout)
    assert row["name"].startswith("mq@")
    assert (row["role"], row["in_sync"], row["lag"], row["running"]) == \
        ("leader", "True", "0", "True")
    assert row["amqp_address"].endswith(f":{broker.port}")
    [node] = json.loads(ctl(broker, "--json", "cluster-status").stdout)
    assert (node["name"], node["cluster_role"]) == (row["name"], "leader")
