"""The HTTP API's publish (POST /api/exchanges/{vhost}/{name}/publish) goes through the same
publish path as basic.publish (mq.broker.publish): it refuses what AMQP refuses, with the
answers RabbitMQ's API gives (its channel's close as a 400 "<code> <reply text>", an access
refusal as a 401 not_authorised), routes CC/BCC and answers {"routed": false} when nothing
matched (RabbitMQ publishes mandatory and reads the basic.return)."""
from __future__ import annotations

import base64
from typing import Iterator

import pytest

from ctlutil import amqp
from mq.ctl import ApiClient, ApiError
from mq.testing import BrokerProcess, run_broker

MAX_SIZE = 1024


@pytest.fixture(scope="module")
def broker() -> Iterator[BrokerProcess]:
    with run_broker(args=("--management-port", "0", "--max-message-size",
                          str(MAX_SIZE))) as b:
        yield b


@pytest.fixture
def api(broker: BrokerProcess) -> ApiClient:
    return ApiClient(broker.management_url)


def publish(api: ApiClient, exchange: str, body: dict) -> dict:
    return api.request("POST", f"/api/exchanges/%2F/{exchange}/publish",
                       {"routing_key": "", "payload": "", "payload_encoding": "string",
                        "properties": {}, **body})


def refused(api: ApiClient, exchange: str, body: dict) -> tuple[int, str]:
    with pytest.raises(ApiError) as info:
        publish(api, exchange, body)
    return info.value.status, info.value.reason


def test_routed_and_unrouted(broker: BrokerProcess, api: ApiClient, uid: str) -> None:
    conn = amqp(broker)
    ch = conn.channel()
    ch.queue_declare(f"hp-{uid}", exclusive=True)
    assert publish(api, "amq.default", {"routing_key": f"hp-{uid}", "payload": "hi"}) == \
        {"routed": True}
    assert publish(api, "amq.default", {"routing_key": f"none-{uid}"}) == {"routed": False}
    payload = base64.b64encode(b"\x00\xff").decode()
    assert publish(api, "amq.default", {"routing_key": f"hp-{uid}", "payload": payload,
                                        "payload_encoding": "base64"}) == {"routed": True}
    bodies = [ch.basic_get(f"hp-{uid}", auto_ack=True)[2] for _ in range(2)]
    assert bodies == [b"hi", b"\x00\xff"]
    conn.close()


def test_oversized_message_refused_as_over_amqp(broker: BrokerProcess, api: ApiClient,
                                                uid: str) -> None:
    conn = amqp(broker)
    ch = conn.channel()
    ch.queue_declare(f"big-{uid}", exclusive=True)
    status, reason = refused(api, "amq.default", {"routing_key": f"big-{uid}",
                                                  "payload": "x" * (MAX_SIZE + 1)})
    assert (status, reason) == (400, f"406 PRECONDITION_FAILED - message size {MAX_SIZE + 1} "
                                     f"is larger than configured max size {MAX_SIZE}")
    assert publish(api, "amq.default", {"routing_key": f"big-{uid}",
                                        "payload": "x" * MAX_SIZE}) == {"routed": True}
    assert ch.queue_declare(f"big-{uid}", passive=True).method.message_count == 1
    # The same text closes an AMQP channel.
    ch2 = conn.channel()
    ch2.basic_publish("", f"big-{uid}", b"x" * (MAX_SIZE + 1))
    with pytest.raises(Exception) as info:
        ch2.queue_declare(f"big-{uid}", passive=True)
    assert f"message size {MAX_SIZE + 1} is larger than configured max size" in str(info.value)
    conn.close()


def test_bad_expiration_refused(api: ApiClient, uid: str) -> None:
    status, reason = refused(api, "amq.default", {"routing_key": f"x-{uid}",
                                                  "properties": {"expiration": "soon"}})
    assert (status, reason) == (400, "406 PRECONDITION_FAILED - invalid expiration 'soon': "
                                     "no_integer")


def test_user_id_must_be_the_publishing_user(api: ApiClient, uid: str) -> None:
    status, reason = refused(api, "amq.default", {"properties": {"user_id": "someone"}})
    assert (status, reason) == (400, "406 PRECONDITION_FAILED - user_id property set to "
                                     "'someone' but authenticated user was 'guest'")
    assert publish(api, "amq.default", {"routing_key": f"x-{uid}",
                                        "properties": {"user_id": "guest"}}) == \
        {"routed": False}


def test_internal_exchange_refused(broker: BrokerProcess, api: ApiClient, uid: str) -> None:
    api.call("PUT", f"/api/exchanges/%2F/int-{uid}", {"type": "fanout", "internal": True,
                                                     "durable": False})
    try:
        status, reason = refused(api, f"int-{uid}", {"payload": "x"})
        assert (status, reason) == (401, f"ACCESS_REFUSED - cannot publish to internal "
                                         f"exchange 'int-{uid}' in vhost '/'")
    finally:
        api.call("DELETE", f"/api/exchanges/%2F/int-{uid}")


def test_bad_cc_header_refused(api: ApiClient, uid: str) -> None:
    status, reason = refused(api, "amq.default", {"properties": {"headers": {"CC": "q"}}})
    assert status == 400
    assert reason.startswith("406 PRECONDITION_FAILED - invalid message: "
                             "{unacceptable_type_in_header,\"CC\",")


def test_cc_and_bcc_route_and_bcc_is_removed(broker: BrokerProcess, api: ApiClient,
                                             uid: str) -> None:
    conn = amqp(broker)
    ch = conn.channel()
    for name in ("main", "cc", "bcc"):
        ch.queue_declare(f"{name}-{uid}", exclusive=True)
    headers = {"CC": [f"cc-{uid}"], "BCC": [f"bcc-{uid}"], "other": "kept"}
    assert publish(api, "amq.default", {"routing_key": f"main-{uid}", "payload": "m",
                                        "properties": {"headers": headers}}) == \
        {"routed": True}
    for name in ("main", "cc", "bcc"):
        method, props, body = ch.basic_get(f"{name}-{uid}", auto_ack=True)
        assert body == b"m", name
        assert props.headers == {"CC": [f"cc-{uid}"], "other": "kept"}, name
    # Only a BCC key matches: routed, and still no BCC header delivered.
    assert publish(api, "amq.default", {"routing_key": f"none-{uid}", "payload": "b",
                                        "properties": {"headers": {"BCC": [f"bcc-{uid}"]}}}) \
        == {"routed": True}
    method, props, body = ch.basic_get(f"bcc-{uid}", auto_ack=True)
    assert body == b"b" and not (props.headers or {}).get("BCC")
    conn.close()


def test_reject_publish_queue_is_a_rejected_publish(broker: BrokerProcess, api: ApiClient,
                                                    uid: str) -> None:
    """A nack (x-overflow reject-publish): RabbitMQ's 400 "rejected ..."."""
    conn = amqp(broker)
    ch = conn.channel()
    ch.queue_declare(f"full-{uid}", exclusive=True,
                     arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    assert publish(api, "amq.default", {"routing_key": f"full-{uid}"}) == {"routed": True}
    assert refused(api, "amq.default", {"routing_key": f"full-{uid}"}) == \
        (400, "rejected Unable to publish message. Check queue limits.")
    conn.close()


def test_persistent_publish_into_durable_queue(broker: BrokerProcess, api: ApiClient,
                                               uid: str) -> None:
    """Answered once the store has it on disk (the confirm RabbitMQ's API waits for)."""
    api.call("PUT", f"/api/queues/%2F/dur-{uid}", {"durable": True})
    try:
        assert publish(api, "amq.default", {"routing_key": f"dur-{uid}", "payload": "p",
                                            "properties": {"delivery_mode": 2}}) == \
            {"routed": True}
        conn = amqp(broker)
        method, props, body = conn.channel().basic_get(f"dur-{uid}", auto_ack=True)
        assert (body, props.delivery_mode) == (b"p", 2)
        conn.close()
    finally:
        api.call("DELETE", f"/api/queues/%2F/dur-{uid}")
