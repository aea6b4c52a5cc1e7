"""Message TTL (B-TTL-1..4) and the expiration property's validation (B-PUB-8), end to end
with pika. Run against RabbitMQ too: MQ_TEST_URL=amqp://guest:guest@127.0.0.1:5672/ ."""
from __future__ import annotations

import time

import pika
import pytest

from amqputil import assert_channel_closed, settle, wait_for
from queuetest import (Scratch, bodies, drain, mq_only, publish, scratch, wait_count, wait_get,
                       x_death)

__all__ = ["scratch"]


# ---- B-TTL-1: queue TTL and per-message expiration, the lower one wins --------------------

@pytest.mark.parametrize("queue_ttl,expiration", [(300, None), (60000, "300"), (300, "60000")])
def test_lower_of_queue_and_message_ttl_applies(scratch: Scratch, queue_ttl: int,
                                                expiration: str | None) -> None:
    """B-TTL-1: with x-message-ttl and an expiration property, the lower one applies; the
    expired message is never delivered, while one published without a limit stays."""
    ch = scratch.channel
    q = scratch.queue("q", **{"x-message-ttl": queue_ttl})
    ch.confirm_delivery()  # so the message is queued before its count is polled
    publish(ch, q, b"short-lived", expiration=expiration)
    wait_count(ch, q, 0)
    assert drain(ch, q) == []


def test_message_within_its_ttl_is_delivered(scratch: Scratch) -> None:
    """B-TTL-1: a message consumed before its TTL is delivered normally, with its expiration
    property unchanged."""
    ch = scratch.channel
    q = scratch.queue("q", **{"x-message-ttl": 60000})
    publish(ch, q, b"fresh", expiration="30000")
    method, props, body = wait_get(ch, q)
    assert body == b"fresh" and props.expiration == "30000"


def test_expired_message_not_delivered_to_late_consumer(scratch: Scratch) -> None:
    """B-TTL-1: a consumer that subscribes after the TTL passed gets nothing; one published
    without expiry next to it is delivered."""
    ch = scratch.channel
    q = scratch.queue("q")
    publish(ch, q, b"expires", expiration="200")
    publish(ch, q, b"stays")
    time.sleep(0.6)
    got: list[bytes] = []
    ch.basic_consume(q, lambda c, m, p, b: got.append(b), auto_ack=True)
    wait_for(scratch.connection, lambda: got)
    settle(scratch.connection)
    assert got == [b"stays"]


# ---- B-TTL-2: prompt removal, dead-lettered as expired -----------------------------------

def test_expired_message_dead_lettered_with_reason_expired(scratch: Scratch) -> None:
    """B-TTL-2: an expired message goes to the DLX with an x-death entry, reason `expired`,
    the queue's name, and (for a per-message TTL) original-expiration; the property is gone."""
    ch = scratch.channel
    dlx, dead = scratch.dead_letter_target()
    q = scratch.queue("q", **{"x-dead-letter-exchange": dlx})
    publish(ch, q, b"late", expiration="250")
    _, props, body = wait_get(ch, dead)
    assert body == b"late"
    assert props.expiration is None
    [death] = x_death(props)
    assert (death["queue"], death["reason"], death["original-expiration"]) == \
        (q, "expired", "250")
    wait_count(ch, q, 0)


def test_queue_ttl_expiry_has_no_original_expiration(scratch: Scratch) -> None:
    """B-TTL-2: expired by the queue's x-message-ttl: reason `expired`, and no
    original-expiration since the message had none."""
    ch = scratch.channel
    dlx, dead = scratch.dead_letter_target()
    q = scratch.queue("q", **{"x-dead-letter-exchange": dlx, "x-message-ttl": 250})
    publish(ch, q, b"late")
    _, props, _ = wait_get(ch, dead)
    [death] = x_death(props)
    assert death["reason"] == "expired" and "original-expiration" not in death


@mq_only
def test_short_ttl_behind_long_ttl_expires_on_time(scratch: Scratch) -> None:
    """B-TTL-2: a short-TTL message behind a long-TTL one is removed and dead-lettered on
    time, not when it reaches the head (RabbitMQ only expires at the head; mq does better)."""
    ch = scratch.channel
    dlx, dead = scratch.dead_letter_target()
    q = scratch.queue("q", **{"x-dead-letter-exchange": dlx})
    publish(ch, q, b"long", expiration="60000")
    publish(ch, q, b"short", expiration="300")
    started = time.monotonic()
    _, props, body = wait_get(ch, dead, timeout=3.0)
    assert body == b"short" and time.monotonic() - started < 3.0
    assert x_death(props)[0]["reason"] == "expired"
    wait_count(ch, q, 1)
    assert bodies(drain(ch, q)) == [b"long"]


@mq_only
def test_expired_messages_leave_the_ready_count(scratch: Scratch) -> None:
    """B-TTL-2: expired messages stop counting without anyone reading the queue (promptly,
    even those behind a message that never expires)."""
    ch = scratch.channel
    q = scratch.queue("q")
    publish(ch, q, b"forever")
    for i in range(5):
        publish(ch, q, b"brief %d" % i, expiration="300")
    wait_count(ch, q, 6)
    wait_count(ch, q, 1)


# ---- B-TTL-3: TTL 0 -------------------------------------------------------------------------

def test_ttl_zero_delivered_to_ready_consumer(scratch: Scratch) -> None:
    """B-TTL-3: with TTL 0 a message is delivered when a consumer can take it at once."""
    ch = scratch.channel
    q = scratch.queue("q", **{"x-message-ttl": 0})
    got: list[bytes] = []
    ch.basic_consume(q, lambda c, m, p, b: got.append(b), auto_ack=True)
    publish(ch, q, b"now or never")
    publish(ch, q, b"per-message zero", expiration="0")
    wait_for(scratch.connection, lambda: len(got) == 2)
    assert got == [b"now or never", b"per-message zero"]


def test_ttl_zero_without_consumer_expires(scratch: Scratch) -> None:
    """B-TTL-3: with TTL 0 and no consumer the message expires at once (dead-lettered as
    `expired`), and a later consumer gets nothing."""
    ch = scratch.channel
    dlx, dead = scratch.dead_letter_target()
    q = scratch.queue("q", **{"x-dead-letter-exchange": dlx})
    publish(ch, q, b"nobody home", expiration="0")
    _, props, body = wait_get(ch, dead)
    assert body == b"nobody home" and x_death(props)[0]["reason"] == "expired"
    assert drain(ch, q) == []


def test_ttl_zero_consumer_without_room_does_not_get_it(scratch: Scratch) -> None:
    """B-TTL-3: a consumer at its prefetch limit can't take the message at once: it expires
    and is not delivered when the consumer later acks."""
    ch = scratch.channel
    q = scratch.queue("q")
    ch.basic_qos(prefetch_count=1)
    got: list = []
    ch.basic_consume(q, lambda c, m, p, b: got.append((m, b)))
    publish(ch, q, b"takes the slot")
    wait_for(scratch.connection, lambda: got)
    publish(ch, q, b"zero", expiration="0")
    settle(scratch.connection)
    ch.basic_ack(got[0][0].delivery_tag)
    settle(scratch.connection, 0.5)
    assert [b for _, b in got] == [b"takes the slot"]


# ---- B-TTL-4: requeue keeps the original expiry ---------------------------------------------

def test_requeued_message_past_its_ttl_is_not_redelivered(scratch: Scratch) -> None:
    """B-TTL-4: a message requeued after its TTL passed is expired (dead-lettered), not
    redelivered."""
    ch = scratch.channel
    dlx, dead = scratch.dead_letter_target()
    q = scratch.queue("q", **{"x-dead-letter-exchange": dlx, "x-message-ttl": 300})
    publish(ch, q, b"held too long")
    method, _, _ = wait_get(ch, q, auto_ack=False)
    time.sleep(0.6)
    ch.basic_nack(method.delivery_tag, requeue=True)
    _, props, body = wait_get(ch, dead)
    assert body == b"held too long" and x_death(props)[0]["reason"] == "expired"
    assert drain(ch, q) == []


def test_requeued_message_keeps_its_deadline(scratch: Scratch) -> None:
    """B-TTL-4: a message requeued before it expires keeps its original deadline (the TTL
    does not start again): with TTL 1.5 s and a requeue after 1 s it is dead-lettered well
    before 2.5 s (the earliest a restarted TTL could end)."""
    ch = scratch.channel
    dlx, dead = scratch.dead_letter_target()
    q = scratch.queue("q", **{"x-dead-letter-exchange": dlx, "x-message-ttl": 1500})
    started = time.monotonic()
    publish(ch, q, b"requeued")
    method, _, _ = wait_get(ch, q, auto_ack=False)
    time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
    ch.basic_reject(method.delivery_tag, requeue=True)
    wait_get(ch, dead, timeout=5.0)
    assert time.monotonic() - started < 2.3


def test_requeue_on_channel_close_keeps_expiry(scratch: Scratch) -> None:
    """B-TTL-4: unacked messages returned by a channel close keep their expiry too."""
    ch = scratch.channel
    q = scratch.queue("q", **{"x-message-ttl": 300})
    publish(ch, q, b"orphan")
    other = scratch.connection.channel()
    wait_get(other, q, auto_ack=False)
    time.sleep(0.6)
    other.close()
    settle(scratch.connection)
    assert drain(ch, q) == []


# ---- B-PUB-8: invalid expiration ------------------------------------------------------------

@pytest.mark.parametrize("expiration,reason", [
    ("abc", "no_integer"),
    ("", "no_integer"),
    (" 5", "no_integer"),
    ("-1", "{value_negative,-1}"),
    ("1.5", '{leftover_string,".5"}'),
    ("5s", '{leftover_string,"s"}'),
    ("315360000001", "{value_too_large,315360000001}"),
])
def test_invalid_expiration_is_406(connection: pika.BlockingConnection, uid: str,
                                   expiration: str, reason: str) -> None:
    """B-PUB-8: an expiration that is not a non-negative integer string (or is over RabbitMQ's
    ten-year limit) closes the channel with 406 and RabbitMQ's text naming the value."""
    ch = connection.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.basic_publish("amq.direct", uid, b"x", pika.BasicProperties(expiration=expiration))
        ch.exchange_declare("amq.direct", passive=True)  # a round trip to see the close
    assert_channel_closed(info, 406, f"PRECONDITION_FAILED - invalid expiration "
                                     f"'{expiration}': {reason}")


@pytest.mark.parametrize("exchange,code,text", [
    ("no-such-exchange", 404, "NOT_FOUND - no exchange 'no-such-exchange' in vhost '/'"),
    ("amq.rabbitmq.trace", 403, "ACCESS_REFUSED - cannot publish to internal exchange "
                                "'amq.rabbitmq.trace' in vhost '/'"),
])
def test_exchange_is_checked_before_expiration(connection: pika.BlockingConnection,
                                               exchange: str, code: int, text: str) -> None:
    """B-PUB-8: as in RabbitMQ, the exchange is checked first: a missing one is 404 and an
    internal one 403 even when the expiration is invalid too."""
    ch = connection.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.basic_publish(exchange, "k", b"x", pika.BasicProperties(expiration="bad"))
        ch.exchange_declare("amq.direct", passive=True)
    assert_channel_closed(info, code, text)


@pytest.mark.parametrize("expiration", ["+5000", "007", "315360000000"])
def test_expiration_forms_rabbitmq_accepts(scratch: Scratch, expiration: str) -> None:
    """B-PUB-8: a leading `+`, leading zeros and the ten-year maximum are valid, as in
    RabbitMQ (Erlang's integer parsing); the message is delivered."""
    ch = scratch.channel
    q = scratch.queue("q")
    publish(ch, q, b"ok", expiration=expiration)
    _, props, body = wait_get(ch, q)
    assert body == b"ok" and props.expiration == expiration
