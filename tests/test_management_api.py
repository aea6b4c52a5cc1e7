"""The management HTTP API (B-MGMT-1) and Prometheus metrics (B-MGMT-2) of a real broker,
driven over HTTP (urllib) and checked against what real clients (pika) see. Field names and
status codes follow RabbitMQ 3.10's management plugin."""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any, Iterator

import pika
import pytest

from ctlutil import amqp, eventually
from mq.ctl import ApiClient, ApiError, quote
from mq.testing import BrokerProcess, run_broker

MGMT_ARGS = ("--management-port", "0")
# RabbitMQ's own CLI (served by its management plugin at /cli/rabbitmqadmin).
RABBITMQADMIN = os.environ.get("MQ_RABBITMQADMIN") or shutil.which("rabbitmqadmin")


@pytest.fixture(scope="module")
def broker() -> Iterator[BrokerProcess]:
    with run_broker(args=MGMT_ARGS) as b:
        yield b


@pytest.fixture
def api(broker: BrokerProcess) -> ApiClient:
    return ApiClient(broker.management_url)


def raw_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_overview_shape_and_rates(broker: BrokerProcess, api: ApiClient, uid: str) -> None:
    """B-MGMT-1: /api/overview has RabbitMQ's sections, and message_stats counts publishes
    with a rate that goes up while messages flow."""
    conn = amqp(broker)
    ch = conn.channel()
    ch.queue_declare(f"ov-{uid}", exclusive=True)
    before = api.get("/api/overview")["message_stats"]["publish"]
    for keys in ("product_name", "product_version", "rabbitmq_version", "node",
                 "cluster_name", "listeners", "object_totals", "queue_totals",
                 "message_stats", "management_version"):
        assert keys in api.get("/api/overview")

    def publishing_rate() -> float:
        for _ in range(20):
            ch.basic_publish("", f"ov-{uid}", b"x")
        return api.get("/api/overview")["message_stats"]["publish_details"]["rate"]

    assert eventually(publishing_rate, timeout=15.0) > 0
    overview = api.get("/api/overview")
    assert overview["message_stats"]["publish"] >= before + 20
    assert set(overview["object_totals"]) == {"connections", "channels", "exchanges", "queues",
                                              "consumers"}
    assert overview["object_totals"]["connections"] >= 1
    assert overview["queue_totals"]["messages_ready"] >= 20
    assert {"messages", "messages_ready", "messages_unacknowledged",
            "messages_ready_details"} <= set(overview["queue_totals"])
    assert overview["product_name"] == "mq"
    assert any(l["protocol"] == "amqp" and l["port"] == broker.port
               for l in overview["listeners"])
    conn.close()


def test_declare_queue_via_api_then_use_it_with_pika(broker: BrokerProcess, api: ApiClient,
                                                     uid: str) -> None:
    """B-MGMT-1: PUT declares (201, then 204 when it exists, 400 with RabbitMQ's text when
    inequivalent); pika then publishes to it and gets the message back."""
    path = f"/api/queues/%2F/api-{uid}"
    assert api.call("PUT", path, {"durable": True, "arguments": {"x-max-length": 5}})[0] == 201
    assert api.call("PUT", path, {"durable": True, "arguments": {"x-max-length": 5}})[0] == 204
    with pytest.raises(ApiError) as info:
        api.call("PUT", path, {"durable": False})
    assert info.value.status == 400
    assert info.value.reason == (f"inequivalent arg 'durable' for queue 'api-{uid}' in vhost "
                                 "'/': received 'false' but current is 'true'")
    conn = amqp(broker)
    ch = conn.channel()
    ch.queue_declare(f"api-{uid}", passive=True)
    for i in range(7):
        ch.basic_publish("", f"api-{uid}", f"m{i}".encode())
    queue = eventually(lambda: (q := api.get(path))["messages_ready"] == 5 and q,
                       timeout=15.0)
    assert queue["name"] == f"api-{uid}" and queue["vhost"] == "/"
    assert queue["durable"] is True and queue["auto_delete"] is False
    assert queue["exclusive"] is False and queue["state"] == "running"
    assert queue["arguments"] == {"x-max-length": 5}
    assert queue["messages"] == 5 and queue["messages_unacknowledged"] == 0
    assert queue["message_stats"]["publish"] == 7
    method, _, body = ch.basic_get(f"api-{uid}")
    assert body == b"m2"  # x-max-length 5 dropped the two oldest
    queue = api.get(path)
    assert (queue["messages_ready"], queue["messages_unacknowledged"]) == (4, 1)
    ch.basic_ack(method.delivery_tag)
    queue = eventually(lambda: (q := api.get(path))["message_stats"]["ack"] == 1 and q,
                       timeout=15.0)
    assert queue["message_stats"]["deliver_get"] == 1 and queue["messages"] == 4
    conn.close()
    assert api.call("DELETE", path)[0] == 204


def test_queue_rates_consumers_purge_and_delete(broker: BrokerProcess, api: ApiClient,
                                                uid: str) -> None:
    """B-MGMT-1: consumer details and deliver rates while a consumer runs; purge empties
    the queue (DELETE …/contents); DELETE removes it and a GET is then 404."""
    name = f"rates-{uid}"
    path = f"/api/queues/%2F/{name}"
    api.call("PUT", path, {"durable": False})
    conn = amqp(broker)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=3)
    acking = [True]

    def on_message(c: Any, method: Any, props: Any, body: bytes) -> None:
        if acking[0]:
            c.basic_ack(method.delivery_tag)

    ch.basic_consume(name, on_message, consumer_tag=f"tag-{uid}")

    def flowing() -> bool:
        for _ in range(10):
            ch.basic_publish("", name, b"x")
        conn.process_data_events(0.1)
        return api.get(path)["message_stats"]["deliver_get_details"]["rate"] > 0

    assert eventually(flowing, timeout=15.0)
    acking[0] = False
    for _ in range(10):
        ch.basic_publish("", name, b"x")
    conn.process_data_events(0.3)
    queue = api.get(path)
    assert queue["message_stats"]["ack"] >= 10
    assert queue["consumers"] == 1
    assert queue["messages_unacknowledged"] == 3  # prefetch 3, nothing acked
    [consumer] = queue["consumer_details"]
    assert consumer["consumer_tag"] == f"tag-{uid}" and consumer["prefetch_count"] == 3
    assert consumer["ack_required"] is True
    consumers = [c for c in api.get("/api/consumers/%2F") if c["queue"]["name"] == name]
    assert [c["consumer_tag"] for c in consumers] == [f"tag-{uid}"]
    assert api.call("DELETE", path + "/contents")[0] == 204
    queue = api.get(path)
    assert queue["messages_ready"] == 0 and queue["messages_unacknowledged"] == 3
    conn.close()
    assert api.call("DELETE", path)[0] == 204
    with pytest.raises(ApiError) as info:
        api.get(path)
    assert info.value.status == 404


def test_exchanges_bindings_publish_and_get(api: ApiClient, uid: str) -> None:
    """B-MGMT-1: declare an exchange, bind a queue (Location names the binding), publish
    through the API ({"routed": true}), get the message (requeued, then acked), unbind."""
    x, q = f"x-{uid}", f"q-{uid}"
    assert api.call("PUT", f"/api/exchanges/%2F/{x}", {"type": "topic", "durable": False})[0] \
        == 201
    api.call("PUT", f"/api/queues/%2F/{q}", {"durable": False})
    status, _ = api.call("POST", f"/api/bindings/%2F/e/{x}/q/{q}",
                         {"routing_key": "a.#", "arguments": {}})
    assert status == 201
    expected = {"name": x, "vhost": "/", "type": "topic", "durable": False,
                "auto_delete": False, "internal": False, "arguments": {}}
    exchange = api.get(f"/api/exchanges/%2F/{x}")
    assert {key: exchange.get(key) for key in expected} == expected
    binding = {"source": x, "vhost": "/", "destination": q, "destination_type": "queue",
               "routing_key": "a.#", "arguments": {}, "properties_key": "a.#"}
    assert api.get(f"/api/bindings/%2F/e/{x}/q/{q}") == [binding]
    assert binding in api.get("/api/bindings/%2F")
    assert api.get(f"/api/queues/%2F/{q}/bindings")[1] == binding
    assert api.get(f"/api/queues/%2F/{q}/bindings")[0]["source"] == ""  # the default one
    published = api.request("POST", f"/api/exchanges/%2F/{x}/publish", {
        "properties": {"headers": {"h": 1}, "content_type": "text/plain"},
        "routing_key": "a.b", "payload": "hello", "payload_encoding": "string"})
    assert published == {"routed": True}
    get = {"count": 5, "ackmode": "ack_requeue_true", "encoding": "auto", "truncate": 50000}
    [message] = api.request("POST", f"/api/queues/%2F/{q}/get", get)
    assert message == {"payload_bytes": 5, "redelivered": False, "exchange": x,
                       "routing_key": "a.b", "message_count": 0,
                       "properties": {"content_type": "text/plain", "headers": {"h": 1}},
                       "payload": "hello", "payload_encoding": "string"}
    [message] = api.request("POST", f"/api/queues/%2F/{q}/get",
                            {**get, "ackmode": "ack_requeue_false"})
    assert message["redelivered"] is True
    assert api.request("POST", f"/api/queues/%2F/{q}/get", get) == []
    binary = base64.b64encode(b"\xff\x00").decode()
    api.request("POST", "/api/exchanges/%2F/amq.default/publish", {
        "properties": {}, "routing_key": q, "payload": binary, "payload_encoding": "base64"})
    [message] = api.request("POST", f"/api/queues/%2F/{q}/get",
                            {**get, "ackmode": "ack_requeue_false"})
    assert (message["payload"], message["payload_encoding"]) == (binary, "base64")
    assert api.call("DELETE", f"/api/bindings/%2F/e/{x}/q/{q}/a.%23")[0] == 204
    assert api.request("POST", f"/api/exchanges/%2F/{x}/publish", {
        "properties": {}, "routing_key": "a.b", "payload": "", "payload_encoding": "string"}) \
        == {"routed": False}
    with pytest.raises(ApiError) as info:
        api.call("PUT", f"/api/exchanges/%2F/bad-{uid}", {"type": "bogus"})
    assert (info.value.status, info.value.reason) == (400, "unknown exchange type 'bogus'")
    assert api.call("DELETE", f"/api/exchanges/%2F/{x}")[0] == 204
    assert api.call("DELETE", f"/api/queues/%2F/{q}")[0] == 204


def test_connections_channels_and_forced_close(broker: BrokerProcess, api: ApiClient,
                                               uid: str) -> None:
    """B-MGMT-1: a pika connection is listed with its user, vhost and client properties,
    its channel too; DELETE /api/connections/{name} closes it with 320 CONNECTION_FORCED."""
    conn = amqp(broker)
    ch = conn.channel()
    ch.confirm_delivery()
    local_port = conn._impl._transport._sock.getsockname()[1]

    def mine() -> dict | None:
        return next((c for c in api.get("/api/connections") if c["peer_port"] == local_port),
                    None)

    info = mine()
    assert info["user"] == "guest" and info["vhost"] == "/" and info["state"] == "running"
    assert info["client_properties"]["product"] == "Pika Python Client Library"
    assert info["protocol"] == "AMQP 0-9-1" and info["channels"] == 1
    assert info["port"] == broker.port and info["recv_oct"] > 0
    channels = api.get(f"/api/connections/{quote(info['name'])}/channels")
    assert [(c["number"], c["confirm"], c["user"]) for c in channels] == [(1, True, "guest")]
    assert channels[0] in api.get("/api/channels")
    status, _ = api.call("DELETE", f"/api/connections/{quote(info['name'])}",
                         headers={"X-Reason": f"bye {uid}"})
    assert status == 204
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
        conn.process_data_events(2)
        ch.basic_publish("", "nowhere", b"x")
    assert closed.value.reply_code == 320
    assert closed.value.reply_text == f"CONNECTION_FORCED - bye {uid}"
    assert eventually(lambda: mine() is None, timeout=15.0)


def test_vhosts_users_permissions(broker: BrokerProcess, api: ApiClient, uid: str) -> None:
    """B-MGMT-1: a vhost, a user (by password, then by password_hash) and permissions made
    over HTTP let pika in; clearing the permissions shuts it out; deletes are 204, then 404."""
    vhost, user = f"vh-{uid}", f"u-{uid}"
    assert api.call("PUT", f"/api/vhosts/{vhost}")[0] == 201
    assert api.call("PUT", f"/api/users/{user}", {"password": "pw1", "tags": "monitoring"})[0] \
        == 201
    assert api.call("PUT", f"/api/permissions/{vhost}/{user}",
                    {"configure": "^own", "write": ".*", "read": ".*"})[0] == 201
    assert api.get(f"/api/permissions/{vhost}/{user}") == {
        "user": user, "vhost": vhost, "configure": "^own", "write": ".*", "read": ".*"}
    assert api.get(f"/api/users/{user}")["tags"] == ["monitoring"]
    assert vhost in [v["name"] for v in api.get("/api/vhosts")]
    conn = amqp(broker, user, "pw1", vhost)
    ch = conn.channel()
    ch.queue_declare("own-q")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
        ch.queue_declare("other-q")
    assert refused.value.reply_code == 403
    conn.close()
    # A hash from another user's password works the same (RabbitMQ's format).
    api.call("PUT", f"/api/users/other-{uid}", {"password": "pw2", "tags": ""})
    password_hash = api.get(f"/api/users/other-{uid}")["password_hash"]
    assert api.call("PUT", f"/api/users/{user}", {"password_hash": password_hash,
                                                  "tags": ["monitoring"]})[0] == 204
    amqp(broker, user, "pw2", vhost).close()
    assert api.call("DELETE", f"/api/permissions/{vhost}/{user}")[0] == 204
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        amqp(broker, user, "pw2", vhost)
    assert api.call("DELETE", f"/api/vhosts/{vhost}")[0] == 204
    assert api.call("DELETE", f"/api/users/{user}")[0] == 204
    api.call("DELETE", f"/api/users/other-{uid}")
    for path in (f"/api/vhosts/{vhost}", f"/api/users/{user}"):
        with pytest.raises(ApiError) as info:
            api.get(path)
        assert info.value.status == 404


def test_authentication_and_tags(broker: BrokerProcess, api: ApiClient, uid: str) -> None:
    """B-MGMT-1: 401 without credentials (with a Basic challenge) and with a wrong
    password; a user without a management tag is refused; monitoring reads but cannot
    change; a management user sees only the vhosts it has permissions on."""
    url = broker.management_url + "/api/overview"
    status, headers, body = raw_get(url)
    assert status == 401 and headers.get("WWW-Authenticate", "").startswith("Basic")
    for user, password in (("guest", "wrong"), (f"nobody-{uid}", "x")):
        with pytest.raises(ApiError) as info:
            ApiClient(broker.management_url, user, password).get("/api/overview")
        assert (info.value.status, info.value.reason) == (401, "Login failed")
    api.call("PUT", f"/api/users/plain-{uid}", {"password": "p", "tags": ""})
    api.call("PUT", f"/api/users/mon-{uid}", {"password": "p", "tags": "monitoring"})
    api.call("PUT", f"/api/users/mgmt-{uid}", {"password": "p", "tags": "management"})
    with pytest.raises(ApiError) as info:
        ApiClient(broker.management_url, f"plain-{uid}", "p").get("/api/overview")
    assert (info.value.status, info.value.reason) == (401, "Not management user")
    monitoring = ApiClient(broker.management_url, f"mon-{uid}", "p")
    assert monitoring.get("/api/whoami") == {"name": f"mon-{uid}", "tags": ["monitoring"]}
    assert "/" in [v["name"] for v in monitoring.get("/api/vhosts")]
    with pytest.raises(ApiError) as info:
        monitoring.call("PUT", f"/api/queues/%2F/mon-{uid}", {})
    assert (info.value.status, info.value.reason) == (401, "Not administrator user")
    assert ApiClient(broker.management_url, f"mgmt-{uid}", "p").get("/api/vhosts") == []
    for name in ("plain", "mon", "mgmt"):
        api.call("DELETE", f"/api/users/{name}-{uid}")


def test_definitions_round_trip(broker: BrokerProcess, api: ApiClient, uid: str) -> None:
    """B-MGMT-1: GET /api/definitions from one broker, POST it to a fresh one: the same
    users, vhosts, permissions, durable exchanges, queues and bindings (RabbitMQ's JSON)."""
    api.call("PUT", f"/api/vhosts/defs-{uid}")
    api.call("PUT", f"/api/users/defs-{uid}", {"password": "p", "tags": "management"})
    api.call("PUT", f"/api/permissions/defs-{uid}/defs-{uid}",
             {"configure": "", "write": "w", "read": "r"})
    api.call("PUT", f"/api/exchanges/defs-{uid}/dx", {"type": "fanout", "durable": True})
    api.call("PUT", f"/api/queues/defs-{uid}/dq", {"durable": True,
                                                   "arguments": {"x-max-priority": 3}})
    api.call("POST", f"/api/bindings/defs-{uid}/e/dx/q/dq", {"routing_key": "k"})
    exported = api.get("/api/definitions")
    for key in ("rabbit_version", "users", "vhosts", "permissions", "exchanges", "queues",
                "bindings", "policies", "parameters"):
        assert key in exported
    with run_broker(args=MGMT_ARGS) as other:
        target = ApiClient(other.management_url)
        assert target.call("POST", "/api/definitions", exported)[0] == 204
        imported = target.get("/api/definitions")

        def mine(defs: dict, key: str) -> list:
            return sorted((d for d in defs[key] if f"defs-{uid}" in (d.get("vhost"), d.get("name"))),
                          key=str)

        for key in ("users", "vhosts", "permissions", "exchanges", "queues", "bindings"):
            assert mine(imported, key) == mine(exported, key), key
        assert mine(imported, "queues")[0]["arguments"] == {"x-max-priority": 3}
        # The imported user logs in with the password it had.
        assert ApiClient(other.management_url, f"defs-{uid}", "p").get("/api/whoami")["name"] \
            == f"defs-{uid}"
    api.call("DELETE", f"/api/vhosts/defs-{uid}")
    api.call("DELETE", f"/api/users/defs-{uid}")


def test_dashboard_is_served_and_self_contained(broker: BrokerProcess) -> None:
    """B-MGMT-1: GET / is the dashboard page; it and its script and style load nothing from
    elsewhere (no CDN), and they are served without credentials (the page asks for them)."""
    status, headers, page = raw_get(broker.management_url + "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'id="rates-chart"' in page and b'id="login"' in page
    for path in re.findall(rb'(?:src|href)="(/static/[^"]+)"', page):
        status, _, body = raw_get(broker.management_url + path.decode())
        assert status == 200 and body
        assert not re.search(rb"https?://", body), path
    assert not re.search(rb"https?://", page)


def test_node_checks_defaults_and_errors(api: ApiClient, uid: str) -> None:
    """B-MGMT-1: aliveness and node health answer ok; an empty PUT declares as RabbitMQ's
    does (transient; a direct exchange); errors have RabbitMQ's status codes."""
    assert api.get("/api/aliveness-test/%2F") == {"status": "ok"}
    assert api.get("/api/healthchecks/node") == {"status": "ok"}
    api.call("PUT", f"/api/queues/%2F/dflt-{uid}", {"exclusive": True})
    queue = api.get(f"/api/queues/%2F/dflt-{uid}")
    assert (queue["durable"], queue["auto_delete"], queue["exclusive"]) == (False, False, False)
    api.call("PUT", f"/api/exchanges/%2F/dflt-{uid}", {})
    exchange = api.get(f"/api/exchanges/%2F/dflt-{uid}")
    assert (exchange["type"], exchange["durable"]) == ("direct", False)
    api.call("DELETE", f"/api/queues/%2F/dflt-{uid}")
    api.call("DELETE", f"/api/exchanges/%2F/dflt-{uid}")
    errors = [
        ("GET", "/api/queues/nope", None, 404, "Not Found"),
        ("GET", "/api/queues/%2F/nope", None, 404, "Not Found"),
        ("DELETE", "/api/exchanges/%2F/nope", None, 404, "Not Found"),
        ("PUT", "/api/queues/%2F/amq.nope", {}, 401,
         "queue name 'amq.nope' contains reserved prefix 'amq.*'"),
        ("DELETE", "/api/exchanges/%2F/amq.direct", None, 401,
         "deletion of system exchange 'amq.direct' in vhost '/' not allowed"),
        ("PUT", "/api/permissions/nope/guest", {"configure": ".*"}, 400,
         "vhost_or_user_not_found"),
        ("PUT", "/api/queues/%2F/bad", {"arguments": {"x-max-length": "ten"}}, 400, None),
    ]
    for method, path, body, status, reason in errors:
        with pytest.raises(ApiError) as info:
            api.call(method, path, body)
        assert info.value.status == status, path
        if reason is not None:
            assert info.value.reason == reason, path


METRIC_LINE = re.compile(r'^[a-z_]+(\{([a-z_]+="([^"\\]|\\.)*",?)*\})? -?[0-9.e+]+$')


def test_prometheus_metrics(broker: BrokerProcess, api: ApiClient, uid: str) -> None:
    """B-MGMT-2: /metrics is the Prometheus text format; the queue's ready gauge and the
    global received counter move when pika publishes."""
    name = f"metrics-{uid}"
    api.call("PUT", f"/api/queues/%2F/{name}", {"durable": False})
    gauge = f'rabbitmq_queue_messages_ready{{vhost="/",queue="{name}"}}'

    def scrape() -> dict[str, float]:
        status, headers, body = raw_get(broker.management_url + "/metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        lines = body.decode().splitlines()
        samples = [line for line in lines if line and not line.startswith("#")]
        assert all(METRIC_LINE.match(line) for line in samples), samples
        return {line.rpartition(" ")[0]: float(line.rpartition(" ")[2]) for line in samples}

    before = scrape()
    assert before[gauge] == 0
    for family in ("rabbitmq_connections", "rabbitmq_channels", "rabbitmq_queues",
                   "rabbitmq_consumers"):
        assert family in before
    conn = amqp(broker)
    ch = conn.channel()
    for _ in range(3):
        ch.basic_publish("", name, b"x")
    ch.queue_declare(name, passive=True)  # a round trip: the publishes are in
    after = scrape()
    assert after[gauge] == 3
    assert after["rabbitmq_global_messages_received_total"] >= \
        before["rabbitmq_global_messages_received_total"] + 3
    assert after["rabbitmq_connections"] >= 1
    conn.close()
    api.call("DELETE", f"/api/queues/%2F/{name}")
    assert gauge not in scrape()


@pytest.mark.skipif(not RABBITMQADMIN, reason="rabbitmqadmin not found: put it on PATH or set "
                    "MQ_RABBITMQADMIN (RabbitMQ's management plugin serves it at "
                    "/cli/rabbitmqadmin)")
def test_rabbitmqadmin_works_unchanged(broker: BrokerProcess, uid: str, tmp_path) -> None:
    """B-MGMT-1: RabbitMQ's rabbitmqadmin, unchanged, declares, binds, publishes, gets,
    lists and exports through mq's API."""
    def admin(*args: str) -> str:
        result = subprocess.run([sys.executable, RABBITMQADMIN, "-H", "127.0.0.1", "-P",
                                 str(broker.management_port), "-f", "raw_json", *args],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    admin("declare", "queue", f"name=adm-{uid}", "durable=false")
    admin("declare", "exchange", f"name=admx-{uid}", "type=fanout", "durable=false")
    admin("declare", "binding", f"source=admx-{uid}", f"destination=adm-{uid}")
    admin("publish", f"exchange=admx-{uid}", "routing_key=x", "payload=hello")
    [queue] = [q for q in json.loads(admin("list", "queues")) if q["name"] == f"adm-{uid}"]
    assert queue["messages"] == 1
    [message] = json.loads(admin("get", f"queue=adm-{uid}", "ackmode=ack_requeue_false"))
    assert (message["payload"], message["exchange"]) == ("hello", f"admx-{uid}")
    assert any(n["name"].startswith("mq@") for n in json.loads(admin("list", "nodes")))
    admin("export", str(tmp_path / "defs.json"))
    assert "queues" in json.loads((tmp_path / "defs.json").read_text())
    admin("delete", "exchange", f"name=admx-{uid}")
    admin("delete", "queue", f"name=adm-{uid}")


def test_users_vhosts_permissions_survive_a_restart(uid: str) -> None:
    """B-MGMT-1: users, vhosts and permissions changed over HTTP are kept in the data dir:
    after a restart the new administrator logs in and a deleted guest stays deleted."""
    with run_broker(args=MGMT_ARGS) as b:
        guest = ApiClient(b.management_url)
        guest.call("PUT", f"/api/users/admin-{uid}", {"password": "pw", "tags": "administrator"})
        admin = ApiClient(b.management_url, f"admin-{uid}", "pw")
        admin.call("PUT", "/api/vhosts/kept")
        admin.call("PUT", f"/api/permissions/kept/admin-{uid}",
                   {"configure": ".*", "write": ".*", "read": "^r"})
        assert admin.call("DELETE", "/api/users/guest")[0] == 204
        b.restart()
        assert admin.get("/api/whoami") == {"name": f"admin-{uid}", "tags": ["administrator"]}
        assert admin.get(f"/api/permissions/kept/admin-{uid}")["read"] == "^r"
        assert [u["name"] for u in admin.get("/api/users")] == [f"admin-{uid}"]
        with pytest.raises(ApiError) as info:
            guest.get("/api/whoami")
        assert info.value.status == 401
        with pytest.raises(pika.exceptions.AMQPConnectionError):
            amqp(b)
        amqp(b, f"admin-{uid}", "pw", "kept").close()


# A RabbitMQ with the management plugin to compare shapes with: "MGMT_URL,AMQP_URL", e.g.
# "http://127.0.0.1:15699,amqp://guest:guest@127.0.0.1:5699/".
RABBITMQ = os.environ.get("MQ_RABBITMQ_MANAGEMENT", "")
# Fields of ours that RabbitMQ 3.10 does not have.
OUR_EXTRAS = {"python_version", "uptime", "message_bytes_ready", "policy"}


def _same_scenario(amqp_url: str, uid: str) -> pika.BlockingConnection:
    """A queue bound to a topic exchange, five messages, one consumer holding them."""
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    ch = conn.channel()
    ch.queue_declare(f"shape-{uid}", auto_delete=True)
    ch.exchange_declare(f"shape-{uid}", "topic", auto_delete=True)
    ch.queue_bind(f"shape-{uid}", f"shape-{uid}", "a.#")
    for _ in range(5):
        ch.basic_publish(f"shape-{uid}", "a.b", b"x")
    ch.basic_consume(f"shape-{uid}", lambda *a: None)
    conn.process_data_events(0.3)
    return conn


def _shape_differences(ours: Any, theirs: Any, where: str = "") -> list[str]:
    """Keys of ours RabbitMQ lacks, and keys both have whose JSON types differ."""
    if isinstance(theirs, list) or isinstance(ours, list):
        return _shape_differences(ours[0], theirs[0], where) if ours and theirs else []
    out = []
    for key, value in ours.items():
        if key not in theirs:
            if key not in OUR_EXTRAS:
                out.append(f"{where}{key}: not in RabbitMQ's")
        elif theirs[key] is not None and value is not None and type(value) is not type(
                theirs[key]) and not {type(value), type(theirs[key])} <= {int, float}:
            out.append(f"{where}{key}: {type(value).__name__} vs {type(theirs[key]).__name__}")
        elif isinstance(value, dict) and isinstance(theirs[key], dict) and key not in (
                "arguments", "client_properties", "cluster_state"):  # keyed by data
            out += _shape_differences(value, theirs[key], f"{where}{key}.")
    return out


@pytest.mark.skipif(not RABBITMQ, reason="set MQ_RABBITMQ_MANAGEMENT='MGMT_URL,AMQP_URL' of a "
                    "RabbitMQ with the management plugin to compare shapes with")
def test_shapes_match_rabbitmq(broker: BrokerProcess, api: ApiClient, uid: str) -> None:
    """B-MGMT-1: after the same scenario on both brokers, every field mq returns for the
    covered endpoints is one RabbitMQ returns too, with the same JSON type, and the fields
    tools read most are all there."""
    mgmt_url, amqp_url = RABBITMQ.split(",")
    rabbit = ApiClient(mgmt_url)
    conns = [_same_scenario(broker.url, uid), _same_scenario(amqp_url, uid)]
    time.sleep(6)  # RabbitMQ emits stats every 5 s; until then its objects lack fields
    paths = ["/api/overview", f"/api/queues/%2F/shape-{uid}", f"/api/exchanges/%2F/shape-{uid}",
             f"/api/bindings/%2F/e/shape-{uid}/q/shape-{uid}", "/api/connections",
             "/api/channels", "/api/consumers", "/api/vhosts/%2F", "/api/users/guest",
             "/api/permissions/%2F/guest", "/api/whoami", "/api/definitions"]
    try:
        problems = []
        for path in paths:
            ours, theirs = api.get(path), rabbit.get(path)
            problems += _shape_differences(ours, theirs, f"{path}: ")
        assert problems == []
        queue = api.get(f"/api/queues/%2F/shape-{uid}")
        for key in ("name", "vhost", "durable", "auto_delete", "exclusive", "arguments",
                    "messages", "messages_ready", "messages_unacknowledged", "consumers",
                    "state", "message_stats"):
            assert key in queue
        for key in ("publish", "publish_details", "deliver_get", "deliver_get_details", "ack",
                    "ack_details", "redeliver"):
            assert key in queue["message_stats"]
    finally:
        for conn in conns:
            conn.close()
