"""Deduplication (B-DEDUP), end to end with pika: the interface of the
rabbitmq-message-deduplication plugin (exchange type x-message-deduplication, queue argument
x-message-deduplication, header x-deduplication-header, x-cache-ttl) and LavinMQ's form (the
argument on an ordinary exchange). Debian's RabbitMQ has no such plugin: mq only. The
retrying publisher over forced disconnects shows effectively-once delivery."""
from __future__ import annotations

import json
import threading
import time
import urllib.request
from base64 import b64encode
from typing import Any

import pika
import pytest

from exqutil import drain
from mq.testing import run_broker
from queuetest import message_count

ID = "x-deduplication-header"


def _props(key: str | int | None = None, ttl: int | None = None, persistent: bool = True):
    headers: dict[str, Any] = {}
    if key is not None:
        headers[ID] = key
    if ttl is not None:
        headers["x-cache-ttl"] = ttl
    return pika.BasicProperties(delivery_mode=2 if persistent else 1, headers=headers or None)


@pytest.fixture
def ch(mq_fresh_broker):
    conn = pika.BlockingConnection(pika.URLParameters(mq_fresh_broker.url))
    channel = conn.channel()
    channel.confirm_delivery()
    yield channel
    if conn.is_open:
        conn.close()


def _dedup_exchange(ch: Any, name: str = "dd", queue: str = "q", **arguments: Any) -> None:
    ch.exchange_declare(name, "x-message-deduplication", durable=True,
                        arguments={"x-cache-size": 100, **arguments})
    ch.queue_declare(queue, durable=True)
    ch.queue_bind(queue, name, "")


def test_a_seen_message_is_not_routed_and_still_confirmed(ch) -> None:
    """B-DEDUP-1, B-DEDUP-3: a message whose x-deduplication-header was seen is not routed;
    its publish is still confirmed (basic_publish returns without a nack); one without the
    header always passes; the exchange routes as fanout does (any routing key)."""
    _dedup_exchange(ch)
    for key in ("a", "b", "a", "a", "c", "b"):
        ch.basic_publish("dd", "any-key", key.encode(), _props(key))
    ch.basic_publish("dd", "", b"plain", _props())
    ch.basic_publish("dd", "", b"plain", _props())
    assert drain(ch, "q") == [b"a", b"b", b"c", b"plain", b"plain"]


def test_a_mandatory_duplicate_is_returned(ch) -> None:
    """B-DEDUP-1: a duplicate is unroutable: with mandatory it comes back (basic.return)."""
    _dedup_exchange(ch)
    ch.basic_publish("dd", "", b"first", _props("k"), mandatory=True)
    with pytest.raises(pika.exceptions.UnroutableError):
        ch.basic_publish("dd", "", b"again", _props("k"), mandatory=True)
    assert drain(ch, "q") == [b"first"]


def test_the_ttl_and_a_messages_own_ttl(ch) -> None:
    """B-DEDUP-1: x-cache-ttl (ms) bounds how long an identity is remembered; a message's
    own x-cache-ttl header overrides it."""
    _dedup_exchange(ch, **{"x-cache-ttl": 300})
    ch.basic_publish("dd", "", b"short", _props("s"))
    ch.basic_publish("dd", "", b"long", _props("l", ttl=5000))
    time.sleep(0.5)
    ch.basic_publish("dd", "", b"short-again", _props("s"))
    ch.basic_publish("dd", "", b"long-again", _props("l"))
    assert drain(ch, "q") == [b"short", b"long", b"short-again"]


def test_lavinmq_form_keeps_the_exchanges_own_routing(ch) -> None:
    """B-DEDUP-1: x-message-deduplication: true on a direct exchange deduplicates and routes
    as a direct exchange."""
    ch.exchange_declare("direct-dd", "direct", arguments={"x-message-deduplication": True,
                                                          "x-cache-size": 10})
    ch.queue_declare("red")
    ch.queue_declare("blue")
    ch.queue_bind("red", "direct-dd", "red")
    ch.queue_bind("blue", "direct-dd", "blue")
    for rk, key in (("red", "1"), ("blue", "2"), ("red", "1"), ("blue", "1")):
        ch.basic_publish("direct-dd", rk, f"{rk}{key}".encode(), _props(key))
    assert drain(ch, "red") == [b"red1"]
    assert drain(ch, "blue") == [b"blue2"]


def test_the_cache_size_is_required_and_bounds_the_cache(ch) -> None:
    """B-DEDUP-1, B-DEDUP-4: no x-cache-size is 406; with x-cache-size 2 the oldest identity
    is forgotten first."""
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.exchange_declare("nosize", "x-message-deduplication")
    assert info.value.reply_code == 406 and "x-cache-size" in info.value.reply_text
    conn = ch.connection
    ch = conn.channel()
    ch.confirm_delivery()
    _dedup_exchange(ch, "small", "sq", **{"x-cache-size": 2})
    for key in ("a", "b", "c", "a", "c"):  # "a" was evicted by "c"; "c" is still known
        ch.basic_publish("small", "", key.encode(), _props(key))
    assert drain(ch, "sq") == [b"a", b"b", b"c", b"a"]


def test_an_expired_identity_seen_again_keeps_its_place(ch) -> None:
    """B-DEDUP-1, B-DEDUP-4: an identity seen again after its TTL is routed and remembered,
    in its old place in the order (as LavinMQ does): it is still the oldest, the first
    forgotten when the cache is full."""
    _dedup_exchange(ch, "aged", "aq", **{"x-cache-size": 2})
    ch.basic_publish("aged", "", b"a", _props("a", ttl=100))
    ch.basic_publish("aged", "", b"b", _props("b"))
    time.sleep(0.2)
    for body, key in ((b"a-expired", "a"), (b"c", "c"), (b"a-forgotten", "a"),
                      (b"c-again", "c")):
        ch.basic_publish("aged", "", body, _props(key))
    assert drain(ch, "aq") == [b"a", b"b", b"a-expired", b"c", b"a-forgotten"]


def test_huge_sizes_and_ttls_are_taken_as_for_ever(ch) -> None:
    """B-DEDUP-1, B-DEDUP-4: an x-cache-size or x-cache-ttl (argument or header) as large as
    a long holds is a very long time, not an error: the identity is kept, nothing else is
    harmed."""
    _dedup_exchange(ch, "huge", "hq", **{"x-cache-size": 2**63 - 1, "x-cache-ttl": 2**63 - 1})
    ch.basic_publish("huge", "", b"1", _props("k", ttl=2**63 - 1))
    ch.basic_publish("huge", "", b"2", _props("k"))
    ch.basic_publish("huge", "", b"3", _props("j"))
    assert drain(ch, "hq") == [b"1", b"3"]


def test_queue_level_deduplication(ch) -> None:
    """B-DEDUP-2: a queue with x-message-deduplication drops a message whose identity is
    that of one still in it (ready or unacked); once that one is acked, it may come in
    again; the dropped publish is confirmed."""
    ch.queue_declare("qd", arguments={"x-message-deduplication": True})
    for key in ("m", "n", "m"):
        ch.basic_publish("", "qd", key.encode(), _props(key))
    assert message_count(ch, "qd") == 2
    method, _, body = ch.basic_get("qd")
    assert body == b"m"
    ch.basic_publish("", "qd", b"m-while-unacked", _props("m"))
    assert message_count(ch, "qd") == 1
    ch.basic_ack(method.delivery_tag)
    ch.basic_publish("", "qd", b"m-after-ack", _props("m"))
    assert drain(ch, "qd") == [b"n", b"m-after-ack"]


def test_a_refused_message_leaves_no_identity_behind(ch) -> None:
    """B-DEDUP-2: a message the deduplicating queue refuses (x-overflow reject-publish: the
    publish is nacked) is not in the queue, so its identity is not either: republished once
    there is room, it comes in."""
    ch.queue_declare("qr", arguments={"x-message-deduplication": True, "x-max-length": 1,
                                      "x-overflow": "reject-publish"})
    ch.basic_publish("", "qr", b"a", _props("a"))
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", "qr", b"b", _props("b"))
    assert drain(ch, "qr") == [b"a"]
    ch.basic_publish("", "qr", b"b-again", _props("b"))
    assert drain(ch, "qr") == [b"b-again"]


def test_the_identity_is_the_top_level_header_of_any_type(ch) -> None:
    """B-DEDUP-1: the identity is the message's own x-deduplication-header, a string or any
    other type; the same name inside a nested table (or as a value) is no identity."""
    _dedup_exchange(ch)
    nested = pika.BasicProperties(headers={"outer": {ID: "k"}, "note": ID})
    for body, props in ((b"int", _props(7)), (b"int-again", _props(7)),
                        (b"nested", nested), (b"nested-again", nested)):
        ch.basic_publish("dd", "", body, props)
    assert drain(ch, "q") == [b"int", b"nested", b"nested-again"]


@pytest.mark.parametrize("kill", [False, True], ids=["restart", "kill-9"])
def test_a_durable_exchanges_cache_survives_a_restart(mq_fresh_broker, kill) -> None:
    """B-DEDUP-4: a durable deduplication exchange remembers its identities across a
    restart and kill -9 (saved within 0.2 s); with x-cache-persistence "memory" it does
    not."""
    conn = pika.BlockingConnection(pika.URLParameters(mq_fresh_broker.url))
    ch = conn.channel()
    ch.confirm_delivery()
    _dedup_exchange(ch, "kept", "kq")
    _dedup_exchange(ch, "mem", "mq", **{"x-cache-persistence": "memory"})
    ch.basic_publish("kept", "", b"1", _props("one"))
    ch.basic_publish("mem", "", b"1", _props("one"))
    conn.close()
    time.sleep(0.5)
    mq_fresh_broker.restart(kill=kill)
    conn = pika.BlockingConnection(pika.URLParameters(mq_fresh_broker.url))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish("kept", "", b"1-again", _props("one"))
        ch.basic_publish("mem", "", b"1-again", _props("one"))
        assert drain(ch, "kq") == [b"1"]
        assert drain(ch, "mq") == [b"1", b"1-again"]
    finally:
        conn.close()


def test_a_clean_stop_saves_a_big_caches_pending_change(mq_fresh_broker) -> None:
    """B-DEDUP-4: a big busy cache is saved less often than every 0.2 s (saving it takes
    long), yet a clean stop saves what is pending: an identity seen just before the stop is
    still known after it."""
    conn = pika.BlockingConnection(pika.URLParameters(mq_fresh_broker.url))
    ch = conn.channel()
    _dedup_exchange(ch, "big", "bq", **{"x-cache-size": 50_000})
    for n in range(30_000):
        ch.basic_publish("big", "", b"", _props(f"id-{n}", persistent=False))
    ch.confirm_delivery()
    ch.basic_publish("big", "", b"last", _props("last"))
    conn.close()
    mq_fresh_broker.restart()
    conn = pika.BlockingConnection(pika.URLParameters(mq_fresh_broker.url))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_purge("bq")
        ch.basic_publish("big", "", b"last-again", _props("last"))
        ch.basic_publish("big", "", b"first-again", _props("id-0"))
        ch.basic_publish("big", "", b"new", _props("new"))
        assert drain(ch, "bq") == [b"new"]
    finally:
        conn.close()


def _close_connections(broker: Any, name_filter: str) -> int:
    auth = {"Authorization": "Basic " + b64encode(b"guest:guest").decode()}
    req = urllib.request.Request(broker.management_url + "/api/connections", headers=auth)
    with urllib.request.urlopen(req, timeout=5) as resp:
        conns = json.loads(resp.read())
    closed = 0
    for c in conns:
        if name_filter in (c.get("client_properties") or {}).get("connection_name", ""):
            req = urllib.request.Request(
                broker.management_url + "/api/connections/" + urllib.request.quote(c["name"]),
                method="DELETE", headers=auth)
            urllib.request.urlopen(req, timeout=5).close()
            closed += 1
    return closed


def _retrying_publisher(disconnects: int) -> None:
    with run_broker(args=("--management-port", "0")) as broker:
        setup = pika.BlockingConnection(pika.URLParameters(broker.url))
        sch = setup.channel()
        _dedup_exchange(sch, "orders", "orders-q", **{"x-cache-size": 1_000_000})
        setup.close()
        enough, done = threading.Event(), threading.Event()
        sent = [0]

        def publisher() -> None:
            """Publishes ids 0, 1, 2, ... with confirms until told to stop; on a lost
            connection it reconnects and republishes from the first unconfirmed id (a retry
            may resend what the broker had already taken: the cache drops those)."""
            confirmed = 0
            while not (enough.is_set() and confirmed >= 100):
                try:
                    params = pika.URLParameters(broker.url)
                    params.client_properties = {"connection_name": "retrying-publisher"}
                    conn = pika.BlockingConnection(params)
                    ch = conn.channel()
                    ch.confirm_delivery()
                    while not (enough.is_set() and confirmed >= 100):
                        ch.basic_publish("orders", "", str(confirmed).encode(),
                                         _props(f"order-{confirmed}"))
                        confirmed += 1
                    conn.close()
                except (pika.exceptions.AMQPError, OSError):
                    time.sleep(0.01)
            sent[0] = confirmed
            done.set()

        thread = threading.Thread(target=publisher, daemon=True)
        thread.start()
        cut = 0
        while cut < disconnects:
            if _close_connections(broker, "retrying-publisher"):
                cut += 1
                time.sleep(0.05)  # let it reconnect and publish a little
        enough.set()
        thread.join(120)
        assert done.is_set()
        conn = pika.BlockingConnection(pika.URLParameters(broker.url))
        bodies = [int(b) for b in drain(conn.channel(), "orders-q")]
        conn.close()
        assert sorted(bodies) == list(range(sent[0])), (len(bodies), len(set(bodies)), sent[0])


def test_a_retrying_publisher_gets_each_message_in_once() -> None:
    """B-DEDUP-3: a publisher that reconnects after its connection is closed under it and
    republishes everything unconfirmed with the same ids produces each message exactly once
    in the queue (20 forced disconnects here; 100 in the soak)."""
    _retrying_publisher(20)


@pytest.mark.soak
@pytest.mark.timeout(600)
def test_a_retrying_publisher_over_a_hundred_disconnects() -> None:
    """B-DEDUP-3 (soak): the same over 100 forced disconnects."""
    _retrying_publisher(100)
