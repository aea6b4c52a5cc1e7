"""The delayed-message exchange (B-DELAY), end to end with pika: the interface of
rabbitmq-delayed-message-exchange (exchange type x-delayed-message, x-delayed-type, header
x-delay in ms). Debian's RabbitMQ has no such plugin, so these run against mq only."""
from __future__ import annotations

import json
import time
import urllib.request
from base64 import b64encode
from typing import Any

import pika
import pytest

from mq.testing import run_broker


def _publish(ch: Any, exchange: str, key: str, body: bytes, delay: Any = None,
             persistent: bool = True, headers: dict | None = None) -> None:
    h = dict(headers or {})
    if delay is not None:
        h["x-delay"] = delay
    ch.basic_publish(exchange, key, body, pika.BasicProperties(
        delivery_mode=2 if persistent else 1, headers=h or None))


def _collect(conn: pika.BlockingConnection, queue: str, count: int,
             timeout: float = 10) -> list[tuple[bytes, float]]:
    """(body, seconds since the call) of the first `count` messages, acked."""
    ch = conn.channel()
    start = time.monotonic()
    got: list[tuple[bytes, float]] = []
    ch.basic_consume(queue, lambda c, m, p, body: (got.append((body, time.monotonic() - start)),
                                                   c.basic_ack(m.delivery_tag)))
    while len(got) < count and time.monotonic() - start < timeout:
        conn.process_data_events(0.02)
    return got


@pytest.fixture
def conn(mq_fresh_broker):
    c = pika.BlockingConnection(pika.URLParameters(mq_fresh_broker.url))
    yield c
    if c.is_open:
        c.close()


def _delayed(ch: Any, name: str, kind: str = "direct", queue: str = "q",
             key: str = "k", durable: bool = True, bind_args: dict | None = None) -> None:
    ch.exchange_declare(name, "x-delayed-message", durable=durable,
                        arguments={"x-delayed-type": kind})
    ch.queue_declare(queue, durable=durable)
    ch.queue_bind(queue, name, key, arguments=bind_args)


def test_delayed_message_is_routed_after_its_delay(conn) -> None:
    """B-DELAY-1: a message with x-delay 500 reaches the queue after about half a second,
    routed by the delayed type (direct: only the matching key); without x-delay, or with 0
    or a negative delay, at once."""
    ch = conn.channel()
    _delayed(ch, "dx")
    ch.confirm_delivery()
    _publish(ch, "dx", "k", b"later", 500)
    _publish(ch, "dx", "other-key", b"nowhere", 100)
    _publish(ch, "dx", "k", b"now")
    _publish(ch, "dx", "k", b"zero", 0)
    _publish(ch, "dx", "k", b"negative", -100)
    got = _collect(conn, "q", 4)
    assert [b for b, _ in got[:3]] == [b"now", b"zero", b"negative"]
    assert all(t < 0.4 for _, t in got[:3])
    assert got[3][0] == b"later" and 0.35 <= got[3][1] < 1.5
    time.sleep(0.3)
    assert ch.queue_declare("q", passive=True).method.message_count == 0


def test_a_delayed_route_does_not_take_undelayed_messages(conn) -> None:
    """B-DELAY-1: after delayed messages to a key (whose route, the hold, a channel may
    reuse), a message to that key without a positive integer x-delay is routed at once by
    the delayed type: returned when mandatory and unroutable, queued when it matches; one
    whose x-delay is a string of digits is still delayed."""
    ch = conn.channel()
    _delayed(ch, "dx")
    ch.confirm_delivery()
    for _ in range(3):
        _publish(ch, "dx", "other-key", b"held", 300)
        _publish(ch, "dx", "k", b"held", 300)
    with pytest.raises(pika.exceptions.UnroutableError) as returned:
        ch.basic_publish("dx", "other-key", b"unroutable", pika.BasicProperties(
            delivery_mode=2, headers={"x-delay": 0}), mandatory=True)
    assert [m.body for m in returned.value.messages] == [b"unroutable"]
    _publish(ch, "dx", "k", b"now", 0)
    _publish(ch, "dx", "k", b"string", "200")
    got = _collect(conn, "q", 5)
    assert [b for b, _ in got] == [b"now", b"string", b"held", b"held", b"held"]
    assert got[0][1] < 0.15 <= got[1][1]


@pytest.mark.parametrize("kind,key,bind_args,headers", [
    ("topic", "a.b.c", None, None),
    ("fanout", "anything", None, None),
    ("headers", "", {"x-match": "all", "colour": "red"}, {"colour": "red"}),
])
def test_each_delayed_type_routes(conn, kind, key, bind_args, headers) -> None:
    """B-DELAY-1: topic, fanout and headers as the delayed type route as those types do."""
    ch = conn.channel()
    _delayed(ch, f"dx-{kind}", kind, f"q-{kind}", "a.#" if kind == "topic" else "",
             bind_args=bind_args)
    ch.confirm_delivery()
    _publish(ch, f"dx-{kind}", key, b"m", 200, headers=headers)
    got = _collect(conn, f"q-{kind}", 1)
    assert [b for b, _ in got] == [b"m"]
    assert got[0][1] >= 0.1


def test_missing_delayed_type_is_refused(conn) -> None:
    """B-DELAY-1: x-delayed-message without x-delayed-type (or with one that is no
    exchange type) is 406, with the plugin's text."""
    for arguments in ({}, {"x-delayed-type": "nonsense"}):
        ch = conn.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            ch.exchange_declare("bad", "x-delayed-message", arguments=arguments)
        assert info.value.reply_code == 406
        assert "x-delayed-type" in info.value.reply_text


def test_messages_are_routed_in_order_of_due_time(conn) -> None:
    """B-DELAY-2: published with delays 900, 300, 600, 100 ms, they arrive 100, 300, 600,
    900."""
    ch = conn.channel()
    _delayed(ch, "order")
    ch.confirm_delivery()
    for delay in (900, 300, 600, 100):
        _publish(ch, "order", "k", str(delay).encode(), delay)
    got = _collect(conn, "q", 4)
    assert [b for b, _ in got] == [b"100", b"300", b"600", b"900"]


@pytest.mark.parametrize("kill", [False, True], ids=["restart", "kill-9"])
def test_delayed_messages_survive_a_restart(mq_fresh_broker, kill) -> None:
    """B-DELAY-3: persistent messages held by a durable delayed exchange survive a restart
    and kill -9: one still due comes at its time, one that fell due while the broker was
    down comes at once."""
    conn = pika.BlockingConnection(pika.URLParameters(mq_fresh_broker.url))
    ch = conn.channel()
    _delayed(ch, "keep")
    ch.confirm_delivery()
    _publish(ch, "keep", "k", b"overdue", 300)
    _publish(ch, "keep", "k", b"later", 3000)
    conn.close()
    mq_fresh_broker.restart(kill=kill)
    time.sleep(0.5)
    conn = pika.BlockingConnection(pika.URLParameters(mq_fresh_broker.url))
    try:
        got = _collect(conn, "q", 2)
    finally:
        conn.close()
    assert [b for b, _ in got] == [b"overdue", b"later"]
    assert got[0][1] < 0.5 and got[1][1] >= 1.0


def test_management_shows_how_many_are_held() -> None:
    """B-DELAY-4: GET /api/exchanges/{vhost}/{name} has messages_delayed."""
    with run_broker(args=("--management-port", "0")) as broker:
        conn = pika.BlockingConnection(pika.URLParameters(broker.url))
        ch = conn.channel()
        _delayed(ch, "held")
        ch.confirm_delivery()
        for i in range(3):
            _publish(ch, "held", "k", b"x", 60_000)
        conn.close()
        req = urllib.request.Request(broker.management_url + "/api/exchanges/%2F/held",
                                     headers={"Authorization": "Basic "
                                              + b64encode(b"guest:guest").decode()})
        with urllib.request.urlopen(req, timeout=10) as resp:
            view = json.loads(resp.read())
        assert view["type"] == "x-delayed-message"
        assert view["messages_delayed"] == 3
