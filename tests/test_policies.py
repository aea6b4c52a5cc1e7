"""issue 4: policies (RabbitMQ 3.10 semantics), end to end: a broker started with a
definitions file holding policies, runtime set/clear through the management API and
`mq ctl`, effects seen with pika."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any, Iterator

import pika
import pika.exceptions
import pytest

from ctlutil import ctl, eventually
from queuetest import drain, message_count
from mq.ctl import ApiClient, ApiError
from mq.testing import BrokerProcess, run_broker

MGMT_ARGS = ("--management-port", "0")
# RabbitMQ's own CLI (served by its management plugin at /cli/rabbitmqadmin).
RABBITMQADMIN = os.environ.get("MQ_RABBITMQADMIN") or shutil.which("rabbitmqadmin")
DEFINITIONS = {
    "exchanges": [
        {"name": "pol.dlx", "vhost": "/", "type": "direct", "durable": True},
        {"name": "pol.ae", "vhost": "/", "type": "fanout", "durable": True},
    ],
    "policies": [
        {"vhost": "/", "name": "dlx-ttl", "pattern": r"^ttl\.", "apply-to": "queues",
         "definition": {"message-ttl": 100, "dead-letter-exchange": "pol.dlx"}, "priority": 0},
        {"vhost": "/", "name": "len-low", "pattern": r"^len\.", "apply-to": "queues",
         "definition": {"max-length": 2, "dead-letter-exchange": "pol.dlx"}, "priority": 0},
        {"vhost": "/", "name": "len-high", "pattern": r"^len\.high\.", "apply-to": "queues",
         "definition": {"max-length": 1}, "priority": 5},
        {"vhost": "/", "name": "ae", "pattern": r"^ae\.", "apply-to": "exchanges",
         "definition": {"alternate-exchange": "pol.ae"}, "priority": 0},
    ],
}


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    path = tmp_path_factory.mktemp("policies") / "definitions.json"
    path.write_text(json.dumps(DEFINITIONS))
    with run_broker(args=MGMT_ARGS + ("--definitions", str(path))) as b:
        yield b


@pytest.fixture
def api(broker: BrokerProcess) -> ApiClient:
    return ApiClient(broker.management_url)


@pytest.fixture
def ch(broker: BrokerProcess) -> Iterator[Any]:
    conn = pika.BlockingConnection(pika.URLParameters(broker.url))
    yield conn.channel()
    conn.close()


def bodies(ch: Any, queue: str) -> list[bytes]:
    return [body for _, _, body in drain(ch, queue)]


def dead_queue(ch: Any, source: str, exchange: str = "pol.dlx") -> str:
    """A queue that receives what `source` dead-letters to the direct exchange (by the
    message's original routing key, the source queue's name)."""
    name = f"dead.{source}"
    ch.queue_declare(name)
    ch.queue_bind(name, exchange, routing_key=source)
    return name


def set_policy(api: ApiClient, name: str, pattern: str, definition: dict,
               priority: int = 0, apply_to: str = "all", vhost: str = "%2F") -> int:
    return api.call("PUT", f"/api/policies/{vhost}/{name}", {
        "pattern": pattern, "definition": definition, "priority": priority,
        "apply-to": apply_to})[0]


def test_policy_dead_letters_expired_messages(ch: Any, uid: str) -> None:
    """issue 4: a policy from a definitions file gives matching queues message-ttl and a
    dead-letter exchange. B-TTL-2, B-DLX-1, B-DLX-3 through a policy: the message expires
    and arrives once on the DLX, with x-death naming the queue and reason expired."""
    queue = f"ttl.{uid}"
    ch.queue_declare(queue)
    dead = dead_queue(ch, queue)
    ch.basic_publish("", queue, b"m1")
    assert eventually(lambda: message_count(ch, dead) == 1)
    _, props, body = ch.basic_get(dead, auto_ack=True)
    assert body == b"m1"
    death = props.headers["x-death"][0]
    assert (death["queue"], death["reason"], death["count"]) == (queue, "expired", 1)
    assert death["routing-keys"] == [queue]
    assert props.headers["x-first-death-reason"] == "expired"
    assert message_count(ch, queue) == 0


def test_policy_max_length_drop_head(ch: Any, uid: str) -> None:
    """issue 4: max-length by policy, drop-head: the oldest go, dead-lettered with reason
    maxlen (B-LEN-2, B-DLX-1 through a policy)."""
    queue = f"len.{uid}"
    ch.queue_declare(queue)
    dead = dead_queue(ch, queue)
    for i in range(4):
        ch.basic_publish("", queue, f"m{i}".encode())
    assert eventually(lambda: message_count(ch, dead) == 2)
    assert bodies(ch, queue) == [b"m2", b"m3"]
    _, props, body = ch.basic_get(dead, auto_ack=True)
    assert body == b"m0" and props.headers["x-death"][0]["reason"] == "maxlen"


def test_lower_of_argument_and_policy_wins(ch: Any, uid: str) -> None:
    """issue 4: for message-ttl and max-length the lower of queue argument and policy
    applies, whichever side it comes from (B-TTL-1, B-LEN-1 through a policy)."""
    ttl_queue = f"ttl.{uid}"
    ch.queue_declare(ttl_queue, arguments={"x-message-ttl": 60000})  # policy: 100 ms
    dead = dead_queue(ch, ttl_queue)
    ch.basic_publish("", ttl_queue, b"short")
    assert eventually(lambda: message_count(ch, dead) == 1, timeout=3.0)
    for own_limit, kept in ((1, [b"m2"]), (5, [b"m1", b"m2"])):  # policy: 2
        queue = f"len.{own_limit}.{uid}"
        ch.queue_declare(queue, arguments={"x-max-length": own_limit})
        for i in range(3):
            ch.basic_publish("", queue, f"m{i}".encode())
        assert bodies(ch, queue) == kept


def test_argument_wins_for_dead_letter_exchange(ch: Any, uid: str) -> None:
    """issue 4: the queue's x-dead-letter-exchange beats the policy's (B-DLX-2 through a
    policy): the expired message goes to the argument's exchange only."""
    queue = f"ttl.{uid}"
    own = f"own-dlx.{uid}"
    ch.exchange_declare(own, "direct", auto_delete=True)
    ch.queue_declare(queue, arguments={"x-dead-letter-exchange": own})
    mine, policy_dead = dead_queue(ch, queue, own), f"policy-dead.{uid}"
    ch.queue_declare(policy_dead)
    ch.queue_bind(policy_dead, "pol.dlx", routing_key=queue)
    ch.basic_publish("", queue, b"m1")
    assert eventually(lambda: message_count(ch, mine) == 1)
    assert message_count(ch, policy_dead) == 0


def test_highest_priority_policy_alone_applies(ch: Any, api: ApiClient, uid: str) -> None:
    """issue 4: two policies match; only the higher priority one applies (its max-length 1,
    and none of the other's dead-lettering); the API shows it as the queue's policy."""
    queue = f"len.high.{uid}"
    ch.queue_declare(queue)
    policy_dead = dead_queue(ch, queue)
    for i in range(3):
        ch.basic_publish("", queue, f"m{i}".encode())
    assert bodies(ch, queue) == [b"m2"]
    time.sleep(0.1)
    assert message_count(ch, policy_dead) == 0
    assert api.get(f"/api/queues/%2F/{queue}")["policy"] == "len-high"


def test_equal_priority_lowest_name_wins(ch: Any, api: ApiClient, uid: str) -> None:
    """issue 4: with equal priorities the policy with the lowest name applies (what
    RabbitMQ 3.10 picks), whatever order they were set in."""
    queue = f"tie.{uid}"
    for name, limit in ((f"tie-b-{uid}", 2), (f"tie-a-{uid}", 1), (f"tie-c-{uid}", 3)):
        assert set_policy(api, name, rf"^tie\.{uid}$", {"max-length": limit}) == 201
    try:
        ch.queue_declare(queue)
        for i in range(3):
            ch.basic_publish("", queue, f"m{i}".encode())
        assert bodies(ch, queue) == [b"m2"]
        assert api.get(f"/api/queues/%2F/{queue}")["policy"] == f"tie-a-{uid}"
    finally:
        for name in ("a", "b", "c"):
            api.request("DELETE", f"/api/policies/%2F/tie-{name}-{uid}")


def test_alternate_exchange_by_policy(ch: Any, api: ApiClient, uid: str) -> None:
    """issue 4: alternate-exchange from a policy (B-EX-11 through a policy): an unroutable
    mandatory publish is not returned and reaches the alternate's queue."""
    exchange, caught = f"ae.{uid}", f"caught.{uid}"
    ch.exchange_declare(exchange, "direct", auto_delete=False)
    assert api.get(f"/api/exchanges/%2F/{exchange}")["policy"] == "ae"
    ch.queue_declare(caught, exclusive=True)
    ch.queue_bind(caught, "pol.ae")
    returned = []
    ch.add_on_return_callback(lambda *args: returned.append(args))
    ch.confirm_delivery()
    ch.basic_publish(exchange, "nowhere", b"lost?", mandatory=True)
    assert returned == [] and bodies(ch, caught) == [b"lost?"]
    ch.exchange_delete(exchange)


def test_apply_to_and_clear(ch: Any, api: ApiClient, uid: str) -> None:
    """issue 4: apply-to is honoured (an exchanges-only policy leaves a queue of a matching
    name alone); set at run time for queues it takes effect at once (the excess dropped
    from the head); cleared, the queue has no limit again."""
    queue, policy = f"applyto.{uid}", f"applyto-{uid}"
    ch.queue_declare(queue)
    assert set_policy(api, policy, rf"^applyto\.{uid}$", {"max-length": 1},
                      apply_to="exchanges") == 201
    for i in range(3):
        ch.basic_publish("", queue, f"m{i}".encode())
    assert eventually(lambda: message_count(ch, queue) == 3)
    assert api.get(f"/api/queues/%2F/{queue}")["policy"] is None
    assert set_policy(api, policy, rf"^applyto\.{uid}$", {"max-length": 1},
                      apply_to="queues") == 204
    assert message_count(ch, queue) == 1
    api.request("DELETE", f"/api/policies/%2F/{policy}")
    for i in range(3, 6):
        ch.basic_publish("", queue, f"m{i}".encode())
    assert eventually(lambda: message_count(ch, queue) == 4)
    assert bodies(ch, queue) == [b"m2", b"m3", b"m4", b"m5"]


def test_clearing_a_ttl_policy_keeps_new_messages(ch: Any, api: ApiClient, uid: str) -> None:
    """issue 4: a message-ttl policy set at run time expires messages; once cleared, new
    messages stay."""
    queue, policy = f"clear.{uid}", f"clear-{uid}"
    ch.queue_declare(queue)
    set_policy(api, policy, rf"^clear\.{uid}$", {"message-ttl": 50}, apply_to="queues")
    ch.basic_publish("", queue, b"gone")
    assert eventually(lambda: message_count(ch, queue) == 0)
    api.request("DELETE", f"/api/policies/%2F/{policy}")
    ch.basic_publish("", queue, b"kept")
    time.sleep(0.3)
    assert bodies(ch, queue) == [b"kept"]


def test_policy_overflow_reject_publish(ch: Any, api: ApiClient, uid: str) -> None:
    """issue 4: overflow from a policy (B-LEN-2 through a policy): with reject-publish the
    publish past max-length is nacked and the queue keeps the first message."""
    queue, policy = f"rej.{uid}", f"rej-{uid}"
    assert set_policy(api, policy, rf"^rej\.{uid}$",
                      {"max-length": 1, "overflow": "reject-publish"}) == 201
    try:
        ch.queue_declare(queue)
        ch.confirm_delivery()
        ch.basic_publish("", queue, b"first")
        with pytest.raises(pika.exceptions.NackError):
            ch.basic_publish("", queue, b"second")
        assert bodies(ch, queue) == [b"first"]
    finally:
        api.request("DELETE", f"/api/policies/%2F/{policy}")


def test_policy_expires_unused_queue(ch: Any, api: ApiClient, uid: str) -> None:
    """issue 4: expires from a policy (B-Q-10 through a policy): an unused queue is deleted
    once it has been unused that long."""
    queue, policy = f"exp.{uid}", f"exp-{uid}"
    ch.queue_declare(queue)
    assert set_policy(api, policy, rf"^exp\.{uid}$", {"expires": 200}, apply_to="queues") == 201
    try:
        def gone() -> bool:
            try:
                api.get(f"/api/queues/%2F/{queue}")  # a GET is not a use of the queue
            except ApiError as exc:
                return exc.status == 404
            return False
        assert eventually(gone, timeout=3.0)
    finally:
        api.request("DELETE", f"/api/policies/%2F/{policy}")


def test_policy_delivery_limit_on_quorum_queue(ch: Any, api: ApiClient, uid: str) -> None:
    """issue 4: delivery-limit from a policy, lower than the queue's x-delivery-limit, wins:
    a quorum queue message returned twice is dead-lettered with reason delivery_limit."""
    queue, policy = f"dl.{uid}", f"dl-{uid}"
    assert set_policy(api, policy, rf"^dl\.{uid}$",
                      {"delivery-limit": 1, "dead-letter-exchange": "pol.dlx"}) == 201
    try:
        ch.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum",
                                                         "x-delivery-limit": 5})
        dead = dead_queue(ch, queue)
        ch.basic_publish("", queue, b"poison")
        for _ in range(2):
            method = eventually(lambda: ch.basic_get(queue)[0])
            ch.basic_nack(method.delivery_tag, requeue=True)
        assert eventually(lambda: message_count(ch, dead) == 1)
        _, props, _ = ch.basic_get(dead, auto_ack=True)
        assert props.headers["x-death"][0]["reason"] == "delivery_limit"
        assert message_count(ch, queue) == 0
    finally:
        api.request("DELETE", f"/api/policies/%2F/{policy}")
        ch.queue_delete(queue)


@pytest.mark.parametrize("body, reason", [
    ({"pattern": "x", "definition": {"foo": 1, "bar": "b"}},
     '[{<<"bar">>,<<"b">>},{<<"foo">>,1}] are not recognised policy settings'),
    ({"pattern": "x", "definition": {"message-ttl": "a", "expires": 0}},
     "0 is not a valid queue expiry"),
    ({"pattern": "x", "definition": {"max-length": -1}}, "-1 is not a valid maximum length"),
    ({"pattern": "x", "definition": {"overflow": "x"}}, '<<"x">> is not a valid overflow value'),
    ({"pattern": "x", "definition": {"single-active-consumer": True}},
     '[{<<"single-active-consumer">>,true}] are not recognised policy settings'),
    ({"pattern": "x", "definition": {}}, "no policy provided"),
    ({"pattern": "x", "definition": {"queue-version": True}},
     "true is not a valid queue-version value"),
    ({"pattern": "x", "definition": {"ha-mode": "exactly"}},
     'ha-mode="exactly" takes an integer, none given'),
    ({"pattern": "x", "definition": {"ha-params": 2}},
     "ha-mode must be specified to specify ha-params, ha-sync-mode or ha-promote-on-shutdown"),
    ({"pattern": "x", "definition": {"expires": 10}, "apply-to": "foo"},
     "apply-to 'foo' unrecognised; should be 'queues', 'exchanges' or 'all'"),
])
def test_invalid_policy_refused(api: ApiClient, uid: str, body: dict, reason: str) -> None:
    """issue 4: a definition RabbitMQ refuses is refused with its message (400), and no
    policy is made."""
    with pytest.raises(ApiError) as err:
        api.request("PUT", f"/api/policies/%2F/bad-{uid}", body)
    assert (err.value.status, err.value.reason) == (400, f"Validation failed\n\n{reason}\n")
    with pytest.raises(ApiError) as err:
        api.get(f"/api/policies/%2F/bad-{uid}")
    assert err.value.status == 404


def test_keys_without_effect_accepted(api: ApiClient, uid: str) -> None:
    """issue 4: keys RabbitMQ accepts for features mq lacks (mirroring, queue version,
    locators) are accepted, so RabbitMQ definitions load."""
    definition = {"ha-mode": "exactly", "ha-params": 2, "ha-sync-mode": "automatic",
                  "queue-version": 2, "queue-master-locator": "min-masters", "max-length": 5}
    assert set_policy(api, f"ha-{uid}", rf"^ha\.{uid}$", definition) == 201
    assert api.get(f"/api/policies/%2F/ha-{uid}")["definition"] == definition
    api.request("DELETE", f"/api/policies/%2F/ha-{uid}")


def test_policies_in_api_and_definitions(api: ApiClient) -> None:
    """issue 4 (B-MGMT-1): /api/policies and the definitions export list the policies in RabbitMQ's
    shape."""
    expected = {p["name"]: p for p in DEFINITIONS["policies"]}
    listed = {p["name"]: p for p in api.get("/api/policies/%2F") if p["name"] in expected}
    assert listed == expected
    assert api.get("/api/policies/%2F/ae") == expected["ae"]
    exported = {p["name"]: p for p in api.get("/api/definitions")["policies"]}
    assert {k: exported[k] for k in expected} == expected


def test_ctl_set_list_clear_policy(broker: BrokerProcess, ch: Any, uid: str) -> None:
    """issue 4 (B-MGMT-3): `mq ctl set_policy / list_policies / clear_policy`, as
    rabbitmqctl takes them (and `list policies` as the other lists)."""
    def run(*args: str) -> str:
        return ctl(broker, *args).stdout

    queue, policy = f"ctl.{uid}", f"ctl-{uid}"
    ch.queue_declare(queue)
    assert run("set_policy", policy, rf"^ctl\.{uid}$", '{"max-length": 1}', "--priority", "3",
               "--apply-to", "queues").strip() == f"policy {policy} set"
    for i in range(2):
        ch.basic_publish("", queue, f"m{i}".encode())
    assert eventually(lambda: message_count(ch, queue) == 1)
    row = next(line for line in run("list_policies").splitlines() if policy in line)
    assert row.split() == ["/", policy, rf"^ctl\.{uid}$", "queues", '{"max-length":', "1}", "3"]
    assert row in run("list", "policies").splitlines()
    assert run("clear_policy", policy).strip() == f"policy {policy} cleared"
    assert policy not in run("list-policies")


@pytest.mark.skipif(not RABBITMQADMIN, reason="rabbitmqadmin not found: put it on PATH or set "
                    "MQ_RABBITMQADMIN")
def test_rabbitmqadmin_policies(broker: BrokerProcess, uid: str) -> None:
    """issue 4 (B-MGMT-1): RabbitMQ's rabbitmqadmin, unchanged, declares, lists and deletes
    policies on mq, and shows RabbitMQ's refusal text for a bad one."""
    def admin(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, RABBITMQADMIN, "-H", "127.0.0.1", "-P",
                                 str(broker.management_port), "-u", "guest", "-p", "guest",
                                 *args], capture_output=True, text=True, timeout=30)
        assert (result.returncode == 0) == ok, result.stderr
        return result

    name = f"admin-{uid}"
    admin("declare", "policy", f"name={name}", rf"pattern=^admin\.{uid}$",
          'definition={"max-length": 2}', "apply-to=queues", "priority=2")
    listed = json.loads(admin("-f", "raw_json", "list", "policies").stdout)
    assert {"vhost": "/", "name": name, "pattern": rf"^admin\.{uid}$", "apply-to": "queues",
            "definition": {"max-length": 2}, "priority": 2} in listed
    refused = admin("declare", "policy", f"name={name}-bad", "pattern=x",
                    'definition={"max-lengthx": 2}', ok=False)
    assert '[{<<"max-lengthx">>,2}] are not recognised policy settings' in refused.stderr
    admin("delete", "policy", f"name={name}")
    assert name not in admin("list", "policies").stdout


def test_policy_survives_restart(uid: str) -> None:
    """issue 4: a policy set through the API is kept in the data dir: after a restart it is
    listed and still limits the durable queue it matches."""
    queue = f"keep.{uid}"
    with run_broker(args=MGMT_ARGS) as broker:
        api = ApiClient(broker.management_url)
        assert set_policy(api, "keep", r"^keep\.", {"max-length": 1}, apply_to="queues") == 201
        conn = pika.BlockingConnection(pika.URLParameters(broker.url))
        conn.channel().queue_declare(queue, durable=True)
        conn.close()
        broker.restart()
        assert api.get("/api/policies/%2F/keep")["definition"] == {"max-length": 1}
        conn = pika.BlockingConnection(pika.URLParameters(broker.url))
        ch = conn.channel()
        for i in range(3):
            ch.basic_publish("", queue, f"m{i}".encode())
        assert bodies(ch, queue) == [b"m2"]
        conn.close()


def test_invalid_policy_in_definitions_stops_start(tmp_path: Any) -> None:
    """issue 4: a definitions file with a policy RabbitMQ would refuse stops the broker at
    start with one readable line (RabbitMQ's message), not a traceback."""
    path = tmp_path / "definitions.json"
    path.write_text(json.dumps({"policies": [{"vhost": "/", "name": "p", "pattern": "x",
                                              "definition": {"message-ttl": -5}}]}))
    result = subprocess.run([sys.executable, "-m", "mq", "--port", "0", "--management-port=-1",
                             "--data-dir", str(tmp_path / "data"), "--definitions", str(path)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert result.stderr.splitlines()[-1] == \
        f"mq: definitions {path}: -5 is not a valid message TTL"
    assert "Traceback" not in result.stderr
