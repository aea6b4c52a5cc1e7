"""Topic permissions (B-AUTH-1, RabbitMQ's "topic authorisation"): per user, vhost and topic
exchange, a write pattern searched in the routing key of a publish and a read pattern in the
binding key of a bind/unbind; checked with pika against a broker started from definitions,
and managed over the management API and `mq ctl` as RabbitMQ 3.10 does."""
from __future__ import annotations

import json
from typing import Any, Callable, Iterator

import pika
import pytest

from ctlutil import ctl
from mq.ctl import ApiClient, ApiError
from mq.testing import BrokerProcess, run_broker

DEFINITIONS = {
    "users": [{"name": "tina", "password": "pw", "tags": []},
              {"name": "tom", "password": "pw", "tags": []}],
    "vhosts": [{"name": "/"}],
    "permissions": [{"user": u, "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}
                    for u in ("tina", "tom")],
    "exchanges": [{"name": "tp.free", "vhost": "/", "type": "topic", "durable": True}],
    "topic_permissions": [
        {"user": u, "vhost": "/", "exchange": "amq.topic", "write": "^{username}\\.",
         "read": "^r\\."} for u in ("tina", "tom")],
}


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    path = tmp_path_factory.mktemp("defs") / "definitions.json"
    path.write_text(json.dumps(DEFINITIONS))
    with run_broker(args=("--definitions", str(path), "--management-port", "0")) as b:
        yield b


@pytest.fixture
def api(broker: BrokerProcess) -> ApiClient:
    return ApiClient(broker.management_url)


def _channel(broker: BrokerProcess, user: str) -> pika.adapters.blocking_connection.BlockingChannel:
    conn = pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", broker.port, credentials=pika.PlainCredentials(user, "guest"
                                                                    if user == "guest" else "pw")))
    ch = conn.channel()
    ch.confirm_delivery()
    return ch


def _refused(fn: Callable[[], Any]) -> tuple[int, str]:
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        fn()
    return info.value.reply_code, info.value.reply_text


def _text(key: str, user: str, exchange: str = "amq.topic") -> str:
    """RabbitMQ 3.10's words (the same with any permission kind)."""
    return (f"ACCESS_REFUSED - access to topic '{key}' in exchange '{exchange}' in vhost '/' "
            f"refused for user '{user}'")


def _bound_queue(broker: BrokerProcess, exchange: str, key: str) -> tuple[Any, str]:
    """A queue bound by guest (who has no topic permission) to watch what arrives."""
    ch = _channel(broker, "guest")
    queue = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(queue, exchange, key)
    return ch, queue


def _drain(ch: Any, queue: str) -> list[tuple[str, bytes]]:
    out = []
    while True:
        method, _, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            return out
        out.append((method.routing_key, body))


def test_publish_allowed_or_refused_by_routing_key(broker: BrokerProcess) -> None:
    """B-AUTH-1: a publish to a topic exchange is allowed when the write pattern (with
    {username} expanded) matches the routing key, else the channel closes 403 in
    RabbitMQ's words and the message is not routed."""
    watch, queue = _bound_queue(broker, "amq.topic", "#")
    ch = _channel(broker, "tina")
    ch.basic_publish("amq.topic", "tina.news", b"mine")
    code, text = _refused(lambda: ch.basic_publish("amq.topic", "tom.news", b"not mine"))
    assert (code, text) == (403, _text("tom.news", "tina"))
    ch = _channel(broker, "tina")
    assert _refused(lambda: ch.basic_publish("amq.topic", "", b"x")) == (403, _text("", "tina"))
    assert _drain(watch, queue) == [("tina.news", b"mine")]


def test_username_variable_is_each_users_own(broker: BrokerProcess) -> None:
    """B-AUTH-1: the same pattern '^{username}\\.' lets tom publish under 'tom.' and not
    under 'tina.'."""
    watch, queue = _bound_queue(broker, "amq.topic", "#")
    ch = _channel(broker, "tom")
    ch.basic_publish("amq.topic", "tom.a", b"1")
    assert _refused(lambda: ch.basic_publish("amq.topic", "tina.a", b"2")) == (
        403, _text("tina.a", "tom"))
    assert _drain(watch, queue) == [("tom.a", b"1")]


def test_bind_and_unbind_check_the_binding_key(broker: BrokerProcess) -> None:
    """B-AUTH-1: queue.bind, queue.unbind and exchange.bind from a topic exchange check the
    read pattern against the binding key; a topic exchange as destination is not checked."""
    ch = _channel(broker, "tina")
    queue = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(queue, "amq.topic", "r.#")
    ch.queue_unbind(queue, "amq.topic", "r.#")
    assert _refused(lambda: ch.queue_bind(queue, "amq.topic", "x.#")) == (
        403, _text("x.#", "tina"))
    ch = _channel(broker, "tina")
    assert _refused(lambda: ch.queue_unbind(queue, "amq.topic", "x.y")) == (
        403, _text("x.y", "tina"))
    ch = _channel(broker, "tina")
    ch.exchange_declare("tp.fan", "fanout", auto_delete=True)
    ch.exchange_bind("amq.topic", "tp.fan", "x.q")  # amq.topic is the destination: no check
    assert _refused(lambda: ch.exchange_bind("tp.fan", "amq.topic", "x.q")) == (
        403, _text("x.q", "tina"))


def test_other_exchanges_and_no_topic_permission_allow_everything(broker: BrokerProcess) -> None:
    """B-AUTH-1: only topic exchanges are checked, and a topic exchange the user has no
    topic permission for allows any key."""
    watch, queue = _bound_queue(broker, "tp.free", "#")
    ch = _channel(broker, "tina")
    ch.basic_publish("amq.direct", "tom.news", b"direct")
    ch.basic_publish("tp.free", "tom.news", b"free")
    own = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(own, "amq.direct", "x.#")
    ch.queue_bind(own, "tp.free", "x.#")
    assert _drain(watch, queue) == [("tom.news", b"free")]
    # guest has no topic permissions at all
    _channel(broker, "guest").basic_publish("amq.topic", "anything", b"x")


def _new_user(api: ApiClient, name: str) -> None:
    """A user of its own for a test that changes topic permissions."""
    api.call("PUT", f"/api/users/{name}", {"password": "pw", "tags": ""})
    api.call("PUT", f"/api/permissions/%2F/{name}",
             {"configure": ".*", "write": ".*", "read": ".*"})


def test_management_api_shapes_and_changes_take_effect(broker: BrokerProcess, api: ApiClient,
                                                        uid: str) -> None:
    """B-AUTH-1: /api/topic-permissions lists RabbitMQ's shape; PUT and DELETE on
    /api/topic-permissions/{vhost}/{user} change what pika may do; bad input is 400/404."""
    assert {"user": "tina", "vhost": "/", "exchange": "amq.topic", "write": "^{username}\\.",
            "read": "^r\\."} in api.get("/api/topic-permissions")
    assert [p["user"] for p in api.get("/api/users/tom/topic-permissions")] == ["tom"]
    assert {"tina", "tom"} <= {p["user"] for p in api.get("/api/vhosts/%2F/topic-permissions")}
    user = f"api-{uid}"
    _new_user(api, user)
    path = f"/api/topic-permissions/%2F/{user}"
    with pytest.raises(ApiError) as info:
        api.get(path)
    assert info.value.status == 404
    assert api.call("PUT", path, {"exchange": "tp.free", "write": "^free$", "read": ""})[0] == 201
    assert api.call("PUT", path, {"exchange": "amq.topic", "write": "", "read": ""})[0] == 204
    assert sorted(p["exchange"] for p in api.get(path)) == ["amq.topic", "tp.free"]
    ch = _channel(broker, user)
    ch.basic_publish("tp.free", "free", b"x")
    assert _refused(lambda: ch.basic_publish("tp.free", "other", b"x")) == (
        403, _text("other", user, "tp.free"))
    exported = api.get("/api/definitions")["topic_permissions"]
    assert {"user": user, "vhost": "/", "exchange": "tp.free", "write": "^free$",
            "read": ""} in exported
    assert api.call("DELETE", path)[0] == 204
    assert api.get(f"/api/users/{user}/topic-permissions") == []
    _channel(broker, user).basic_publish("tp.free", "other", b"now allowed")
    for bad_path, body in ((path, {"write": ".*", "read": ".*"}),
                           (path, {"exchange": "x", "write": "(", "read": ""}),
                           ("/api/topic-permissions/%2F/nobody",
                            {"exchange": "x", "write": "", "read": ""})):
        with pytest.raises(ApiError) as info:
            api.call("PUT", bad_path, body)
        assert info.value.status == 400, body
    with pytest.raises(ApiError) as info:
        api.call("DELETE", path)
    assert info.value.status == 404


def test_topic_permissions_survive_a_restart(uid: str) -> None:
    """B-AUTH-1: topic permissions set over HTTP are saved with users and permissions."""
    with run_broker(args=("--management-port", "0")) as b:
        api = ApiClient(b.management_url)
        api.call("PUT", f"/api/users/u-{uid}", {"password": "pw", "tags": ""})
        api.call("PUT", f"/api/permissions/%2F/u-{uid}",
                 {"configure": ".*", "write": ".*", "read": ".*"})
        assert api.call("PUT", f"/api/topic-permissions/%2F/u-{uid}",
                        {"exchange": "amq.topic", "write": "^ok$", "read": ".*"})[0] == 201
        b.restart()
        assert api.get(f"/api/topic-permissions/%2F/u-{uid}") == [
            {"user": f"u-{uid}", "vhost": "/", "exchange": "amq.topic", "write": "^ok$",
             "read": ".*"}]
        conn = pika.BlockingConnection(pika.ConnectionParameters(
            "127.0.0.1", b.port, credentials=pika.PlainCredentials(f"u-{uid}", "pw")))
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish("amq.topic", "ok", b"x")
        assert _refused(lambda: ch.basic_publish("amq.topic", "no", b"x")) == (
            403, _text("no", f"u-{uid}"))


def test_ctl_set_list_clear(broker: BrokerProcess, api: ApiClient, uid: str) -> None:
    """B-AUTH-1: `mq ctl set-topic-permissions/list-topic-permissions/clear-topic-permissions`."""
    def run(*args: str) -> str:
        return ctl(broker, *args).stdout
    user = f"ctl-{uid}"
    _new_user(api, user)
    run("set-topic-permissions", user, "tp.free", "--write", "^w$", "--read", "^r$")
    rows = [line.split() for line in run("list-topic-permissions", "--vhost", "/").splitlines()]
    assert rows[0] == ["user", "vhost", "exchange", "write", "read"]
    assert [user, "/", "tp.free", "^w$", "^r$"] in rows
    ch = _channel(broker, user)
    assert _refused(lambda: ch.basic_publish("tp.free", "x", b"x")) == (
        403, _text("x", user, "tp.free"))
    run("clear-topic-permissions", user)
    assert user not in {p["user"] for p in json.loads(run("--json", "list-topic-permissions"))}
    _channel(broker, user).basic_publish("tp.free", "x", b"x")


def test_permission_set_after_publishing_applies_on_the_same_channel(
        broker: BrokerProcess, api: ApiClient, uid: str) -> None:
    """B-AUTH-1: a topic permission set while a channel keeps publishing with one routing key
    (a route the channel has cached) applies to that channel's next publish."""
    user = f"late-{uid}"
    _new_user(api, user)
    watch, queue = _bound_queue(broker, "tp.free", "#")
    ch = _channel(broker, user)
    for i in range(3):
        ch.basic_publish("tp.free", "other", b"%d" % i)
    assert [body for _, body in _drain(watch, queue)] == [b"0", b"1", b"2"]
    api.call("PUT", f"/api/topic-permissions/%2F/{user}",
             {"exchange": "tp.free", "write": "^free$", "read": ""})
    assert _refused(lambda: ch.basic_publish("tp.free", "other", b"3")) == (
        403, _text("other", user, "tp.free"))
    assert _drain(watch, queue) == []
