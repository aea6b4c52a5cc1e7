"""B-DUR-8 and B-DUR-9 through the management HTTP API: a durable queue, exchange or binding
made or removed over HTTP is answered as over AMQP (mq.broker.durability). The answer comes
only once its store record is on disk, without holding the event loop meanwhile (AMQP
clients and other HTTP requests go on); a disk write that fails is a 500 in RabbitMQ's shape
({"error": "internal_server_error", "reason": "disk write failed: ..."}); while writes fail
such changes are refused before anything changes; once writes work again, so do they.
Faults come from the store's test seam (MQ_TEST_FAULT_FILE, mq/store/segments.py) in real
broker processes."""
from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Iterator

import pytest
from pamqp import commands as spec
from rawamqp import RawClient

from mq.ctl import ApiClient, ApiError
from mq.store import segments
from mq.testing import BrokerProcess

MGMT_ARGS = ("--management-port", "0")
SLOW = segments.SLOW_SYNC


@pytest.fixture
def broker(fault_file: str) -> Iterator[BrokerProcess]:
    b = BrokerProcess(args=MGMT_ARGS).start()
    try:
        yield b
    finally:
        b.cleanup()


def set_fault(path: str, word: str) -> None:
    with open(path + ".tmp", "w") as fh:
        fh.write(word)
    os.replace(path + ".tmp", path)


def timed(api: ApiClient, method: str, path: str, body: Any = None) -> tuple[int, float]:
    start = time.monotonic()
    status, _ = api.call(method, path, body)
    return status, time.monotonic() - start


def raw_call(broker: BrokerProcess, method: str, path: str, body: Any) -> tuple[int, dict]:
    """(status, JSON body) of a request, errors included, to see the whole error body."""
    api = ApiClient(broker.management_url)
    req = urllib.request.Request(broker.management_url + path, method=method,
                                 data=json.dumps(body).encode(),
                                 headers={"Authorization": api.auth,
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else {}
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def exists(api: ApiClient, path: str) -> bool:
    try:
        api.get(path)
    except ApiError as exc:
        assert exc.status == 404, exc
        return False
    return True


def refused(api: ApiClient, method: str, path: str, body: Any, text: str) -> None:
    with pytest.raises(ApiError) as failed:
        api.call(method, path, body)
    assert failed.value.status == 500, failed.value
    assert failed.value.reason.startswith("disk write failed: ") \
        and text in failed.value.reason, failed.value


@pytest.mark.timeout(60)
def test_durable_changes_answer_once_on_disk_and_the_loop_goes_on(
        broker: BrokerProcess, fault_file: str) -> None:
    """B-DUR-8 / B-DUR-9: with every fsync 0.5 s slow, PUT of a durable queue is answered
    only once its record is on disk (>= 0.5 s, as a declare-ok), and so are a durable
    exchange, a binding between them and a delete; meanwhile an AMQP connection's
    basic.qos round trips and other HTTP requests stay fast (nothing waits on the loop),
    and a transient queue (nothing to write) is answered at once. Killed -9 right after its
    answer, the broker comes back with what was answered."""
    api = ApiClient(broker.management_url)
    raw = RawClient(broker.port, timeout=10)
    raw.handshake()
    raw.open_channel(1)
    set_fault(fault_file, "slow")

    answer: dict[str, Any] = {}

    def put() -> None:
        answer["put"] = timed(api, "PUT", "/api/queues/%2F/slow-q", {"durable": True})
    thread = threading.Thread(target=put)
    thread.start()
    qos_trips, http_trips = [], []
    while thread.is_alive():
        start = time.monotonic()
        raw.send_method(1, spec.Basic.Qos(prefetch_count=10))
        raw.expect("Basic.QosOk")
        qos_trips.append(time.monotonic() - start)
        http_trips.append(timed(api, "GET", "/api/whoami")[1])
        time.sleep(0.01)
    thread.join()
    status, elapsed = answer["put"]
    assert status == 201
    assert elapsed >= SLOW * 0.9, elapsed
    assert len(qos_trips) >= 5, qos_trips
    assert max(qos_trips) < 0.2, qos_trips
    assert max(http_trips) < 0.2, http_trips

    status, elapsed = timed(api, "PUT", "/api/queues/%2F/transient-q", {"durable": False})
    assert status == 201 and elapsed < SLOW * 0.5, elapsed
    status, elapsed = timed(api, "PUT", "/api/exchanges/%2F/slow-x",
                            {"type": "direct", "durable": True})
    assert status == 201 and elapsed >= SLOW * 0.9, elapsed
    status, elapsed = timed(api, "POST", "/api/bindings/%2F/e/slow-x/q/slow-q",
                            {"routing_key": "k"})
    assert status == 201 and elapsed >= SLOW * 0.9, elapsed
    api.call("PUT", "/api/queues/%2F/gone-q", {"durable": True})
    status, elapsed = timed(api, "DELETE", "/api/queues/%2F/gone-q")
    assert status == 204 and elapsed >= SLOW * 0.9, elapsed
    raw.close()

    set_fault(fault_file, "")
    broker.restart(kill=True)
    api = ApiClient(broker.management_url)
    assert exists(api, "/api/queues/%2F/slow-q")
    assert exists(api, "/api/exchanges/%2F/slow-x")
    assert [b["routing_key"] for b in api.get("/api/bindings/%2F/e/slow-x/q/slow-q")] == ["k"]
    assert not exists(api, "/api/queues/%2F/gone-q")
    assert not exists(api, "/api/queues/%2F/transient-q")


@pytest.mark.timeout(60)
def test_failed_write_is_an_error_and_changes_are_refused_until_writes_work(
        broker: BrokerProcess, fault_file: str) -> None:
    """B-DUR-8: with every fsync failing (EIO), PUT of a durable queue waiting for the disk
    is a 500 naming the disk error, in RabbitMQ's shape. While writes fail, durable
    changes are refused before they change anything: a queue, an exchange, a binding, a
    delete, a definitions import with topology; transient ones go on. Once writes work,
    PUT works again; killed -9, the broker comes back with what was answered and without
    what was refused."""
    api = ApiClient(broker.management_url)
    api.call("PUT", "/api/exchanges/%2F/dx", {"type": "direct", "durable": True})
    api.call("PUT", "/api/queues/%2F/dq", {"durable": True})
    api.call("POST", "/api/bindings/%2F/e/dx/q/dq", {"routing_key": "k"})
    text = "[Errno 5] Input/output error"

    set_fault(fault_file, "eio")
    status, body = raw_call(broker, "PUT", "/api/queues/%2F/during", {"durable": True})
    assert status == 500, body
    assert body == {"error": "internal_server_error", "reason": f"disk write failed: {text}"}

    refused(api, "PUT", "/api/queues/%2F/refused", {"durable": True}, text)
    assert not exists(api, "/api/queues/%2F/refused")
    refused(api, "PUT", "/api/exchanges/%2F/refused-x", {"type": "fanout", "durable": True},
            text)
    assert not exists(api, "/api/exchanges/%2F/refused-x")
    refused(api, "POST", "/api/bindings/%2F/e/dx/q/dq", {"routing_key": "refused"}, text)
    assert [b["routing_key"] for b in api.get("/api/bindings/%2F/e/dx/q/dq")] == ["k"]
    refused(api, "DELETE", "/api/queues/%2F/dq", None, text)
    assert exists(api, "/api/queues/%2F/dq")
    refused(api, "DELETE", "/api/exchanges/%2F/dx", None, text)
    assert exists(api, "/api/exchanges/%2F/dx")
    refused(api, "POST", "/api/definitions",
            {"queues": [{"name": "imported", "vhost": "/", "durable": True}]}, text)
    assert not exists(api, "/api/queues/%2F/imported")
    # Transient: nothing to write, nothing refused.
    assert api.call("PUT", "/api/queues/%2F/transient", {"durable": False})[0] == 201

    set_fault(fault_file, "")
    deadline = time.monotonic() + 10
    while True:  # the store's next retry succeeds, then durable changes work again
        try:
            status, _ = api.call("PUT", "/api/queues/%2F/after", {"durable": True})
            break
        except ApiError as exc:
            assert exc.status == 500 and time.monotonic() < deadline, exc
            time.sleep(0.1)
    assert status == 201
    assert api.call("POST", "/api/bindings/%2F/e/dx/q/after", {"routing_key": "a"})[0] == 201

    broker.restart(kill=True)
    api = ApiClient(broker.management_url)
    assert exists(api, "/api/queues/%2F/after")
    assert exists(api, "/api/queues/%2F/dq")
    assert [b["routing_key"] for b in api.get("/api/bindings/%2F/e/dx/q/after")] == ["a"]
    for path in ("/api/queues/%2F/refused", "/api/exchanges/%2F/refused-x",
                 "/api/queues/%2F/imported"):
        assert not exists(api, path), path
    assert [b["routing_key"] for b in api.get("/api/bindings/%2F/e/dx/q/dq")] == ["k"]
