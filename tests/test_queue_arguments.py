"""Queue argument validation (B-Q-9) and x-expires (B-Q-10), end to end with pika.

The 406 texts are RabbitMQ 3.10's, word for word (collected from it with the same
declarations). Run against RabbitMQ too: MQ_TEST_URL=amqp://guest:guest@127.0.0.1:5672/ ."""
from __future__ import annotations

import time
from decimal import Decimal
from typing import Any, Callable, Iterator

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel


TEN_YEARS_MS = 315_360_000_000


@pytest.fixture
def declared(connection: pika.BlockingConnection) -> Iterator[list[str]]:
    """Names of queues a test declared, deleted afterwards."""
    names: list[str] = []
    yield names
    if connection.is_open:
        channel = connection.channel()
        for name in names:
            channel.queue_delete(name)


def declare(connection: pika.BlockingConnection, name: str, arguments: dict) -> BlockingChannel:
    """Declare on a channel of its own (a 406 costs only that channel)."""
    channel = connection.channel()
    channel.queue_declare(name, arguments=arguments)
    return channel


# ---- B-Q-9: argument validation ----------------------------------------------------------

# (arguments, RabbitMQ's reason after "invalid arg ... for queue 'Q' in vhost '/': ")
BAD_ARGUMENTS = [
    ({"x-message-ttl": -1}, "'x-message-ttl'", "{value_negative,-1}"),
    ({"x-message-ttl": "abc"}, "'x-message-ttl'", '"expected integer, got longstr"'),
    ({"x-message-ttl": Decimal("1.5")}, "'x-message-ttl'", '"expected integer, got decimal"'),
    ({"x-message-ttl": True}, "'x-message-ttl'", '"expected integer, got bool"'),
    ({"x-message-ttl": TEN_YEARS_MS + 1}, "'x-message-ttl'", "{value_too_large,315360000001}"),
    ({"x-expires": 0}, "'x-expires'", "{value_zero,0}"),
    ({"x-expires": -5}, "'x-expires'", "{value_negative,-5}"),
    ({"x-expires": "10"}, "'x-expires'", '"expected integer, got longstr"'),
    ({"x-expires": TEN_YEARS_MS + 1}, "'x-expires'", "{value_too_large,315360000001}"),
    ({"x-max-length": -1}, "'x-max-length'", "{value_negative,-1}"),
    ({"x-max-length": "x"}, "'x-max-length'", '"expected integer, got longstr"'),
    ({"x-max-length-bytes": -1}, "'x-max-length-bytes'", "{value_negative,-1}"),
    ({"x-overflow": "bogus"}, "'x-overflow'", "invalid_overflow"),
    ({"x-overflow": 5}, "'x-overflow'", "{unacceptable_type,signedint}"),
    ({"x-dead-letter-routing-key": "rk"}, "'x-dead-letter-routing-key'",
     "routing_key_but_no_dlx_defined"),
    ({"x-dead-letter-routing-key": 5}, "'x-dead-letter-routing-key'",
     "{unacceptable_type,signedint}"),
    ({"x-max-priority": 256}, "'x-max-priority'", "{max_value_exceeded,256}"),
    ({"x-max-priority": -1}, "'x-max-priority'", "{value_negative,-1}"),
    ({"x-max-priority": "x"}, "'x-max-priority'", '"expected integer, got longstr"'),
    ({"x-single-active-consumer": 1}, "'x-single-active-consumer'",
     "{unacceptable_type,signedint}"),
    ({"x-single-active-consumer": "true"}, "'x-single-active-consumer'",
     "{unacceptable_type,longstr}"),
    ({"x-queue-mode": "weird"}, "'x-queue-mode'", "\"unsupported queue mode 'weird'\""),
    ({"x-queue-mode": 5}, "'x-queue-mode'", "{unacceptable_type,signedint}"),
    ({"x-queue-type": "bogus"}, "'x-queue-type'", "\"unsupported queue type 'bogus'\""),
    ({"x-queue-type": 5}, "'x-queue-type'", "{unacceptable_type,signedint}"),
]


@pytest.mark.parametrize("arguments,key,reason", BAD_ARGUMENTS,
                         ids=[f"{next(iter(a))}={a[next(iter(a))]!r}" for a, _, _ in BAD_ARGUMENTS])
def test_bad_argument_is_406_with_rabbitmq_text(connection, uid, arguments: dict,
                                                key: str, reason: str) -> None:
    """B-Q-9: a queue argument of the wrong type or out of range closes the channel with 406
    and RabbitMQ's text naming the argument, the queue and the vhost; no queue is made."""
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        declare(connection, uid, arguments)
    assert (info.value.reply_code, info.value.reply_text) == (
        406, f"PRECONDITION_FAILED - invalid arg {key} for queue '{uid}' in vhost '/': {reason}")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        connection.channel().queue_declare(uid, passive=True)
    assert info.value.reply_code == 404


def test_dead_letter_exchange_of_wrong_type(connection, uid) -> None:
    """B-Q-9: x-dead-letter-exchange must be a string: RabbitMQ's 'invalid type' wording."""
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        declare(connection, uid, {"x-dead-letter-exchange": 5})
    assert (info.value.reply_code, info.value.reply_text) == (
        406, f"PRECONDITION_FAILED - invalid type 'signedint' for arg 'x-dead-letter-exchange' "
             f"in queue '{uid}' in vhost '/'")


def test_first_bad_argument_named_in_rabbitmq_order(connection, uid) -> None:
    """B-Q-9: with several bad arguments the 406 names the one RabbitMQ checks first (dead-
    letter exchange type, queue type, x-expires, x-message-ttl, ... x-single-active-consumer),
    whatever order the table lists them in."""
    order = ["x-dead-letter-exchange", "x-queue-type", "x-expires", "x-message-ttl",
             "x-dead-letter-routing-key", "x-max-length", "x-max-length-bytes",
             "x-max-priority", "x-overflow", "x-queue-mode", "x-single-active-consumer"]
    bad = {"x-dead-letter-exchange": 5, "x-queue-type": "z", "x-expires": 0,
           "x-message-ttl": -1, "x-dead-letter-routing-key": 5, "x-max-length": -1,
           "x-max-length-bytes": -1, "x-max-priority": -1, "x-overflow": "z",
           "x-queue-mode": "z", "x-single-active-consumer": 1}
    named = []
    arguments = dict(reversed(bad.items()))
    while arguments:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            declare(connection, uid, arguments)
        assert info.value.reply_code == 406
        key = next(k for k in arguments if f"'{k}'" in info.value.reply_text)
        named.append(key)
        del arguments[key]
    assert named == order


GOOD_ARGUMENTS = [
    {"x-message-ttl": 0}, {"x-message-ttl": TEN_YEARS_MS}, {"x-expires": 1},
    {"x-expires": TEN_YEARS_MS}, {"x-max-length": 0}, {"x-max-length": 2**40},
    {"x-max-length-bytes": 0}, {"x-max-priority": 0}, {"x-max-priority": 255},
    {"x-overflow": "drop-head"}, {"x-overflow": "reject-publish"},
    {"x-overflow": "reject-publish-dlx", "x-dead-letter-exchange": ""},
    {"x-dead-letter-exchange": "not-yet-declared", "x-dead-letter-routing-key": "rk"},
    {"x-single-active-consumer": True}, {"x-single-active-consumer": False},
    {"x-queue-mode": "lazy"}, {"x-queue-mode": "default"}, {"x-queue-type": "classic"},
    {"x-unknown-argument": -1},
]


@pytest.mark.parametrize("arguments", GOOD_ARGUMENTS, ids=[repr(a) for a in GOOD_ARGUMENTS])
def test_valid_arguments_accepted(connection, uid, declared, arguments: dict) -> None:
    """B-Q-9: values at the edges of each range, every overflow mode and unknown x-
    arguments are accepted, and the queue keeps them (redeclaring with them is a no-op)."""
    declared.append(uid)
    channel = declare(connection, uid, arguments)
    ok = channel.queue_declare(uid, arguments=arguments)
    assert ok.method.queue == uid


# ---- B-Q-10: x-expires -------------------------------------------------------------------

def queue_gone(channel: BlockingChannel, queue: str) -> bool:
    """Whether the queue is gone, asked without using it: a mandatory publish under confirms
    comes back unroutable only when there is no queue. (A passive declare or a get would
    count as use and restart the countdown.)"""
    try:
        channel.basic_publish("", queue, b"probe", mandatory=True)
    except pika.exceptions.UnroutableError:
        return True
    return False


@pytest.fixture
def prober(connection: pika.BlockingConnection) -> BlockingChannel:
    channel = connection.channel()
    channel.confirm_delivery()
    return channel


def wait_gone(connection: pika.BlockingConnection, prober: BlockingChannel, queue: str,
              timeout: float = 15.0) -> float:
    """Poll until the queue is deleted; returns when (time.monotonic())."""
    deadline = time.monotonic() + timeout
    while not queue_gone(prober, queue):
        assert time.monotonic() < deadline, f"queue {queue} was not deleted"
        connection.process_data_events(time_limit=0.05)
    return time.monotonic()


def keep_using(connection: pika.BlockingConnection, seconds: float,
               use: Callable[[], Any]) -> None:
    """Call use() every 100 ms for a while."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        use()
        connection.process_data_events(time_limit=0.1)


def test_unused_queue_deleted_after_expiry(connection, prober, uid) -> None:
    """B-Q-10: a queue nobody uses goes once x-expires has passed since its declaration, not
    before, messages and all."""
    started = time.monotonic()
    channel = declare(connection, uid, {"x-expires": 800})
    channel.basic_publish("", uid, b"lost with the queue")
    gone_at = wait_gone(connection, prober, uid)
    assert gone_at - started >= 0.8


def test_publishing_is_not_use(connection, prober, uid) -> None:
    """B-Q-10: messages published to the queue do not keep it alive (RabbitMQ counts only
    consumers, basic.get and declarations as use)."""
    started = time.monotonic()
    channel = declare(connection, uid, {"x-expires": 800})
    keep_using(connection, 0.5, lambda: channel.basic_publish("", uid, b"m"))
    gone_at = wait_gone(connection, prober, uid)
    assert gone_at - started >= 0.8


def test_use_restarts_countdown(connection, prober, uid, declared) -> None:
    """B-Q-10: basic.get, a redeclaration and a passive declaration (as in RabbitMQ) each
    restart the countdown: used more often than x-expires, each queue outlives it twice
    over; left alone afterwards, each goes, no sooner than x-expires after its last use."""
    arguments = {"x-expires": 1000}
    names = {use: f"{uid}-{use}" for use in ("get", "redeclare", "passive")}
    declared.extend(names.values())
    channel = connection.channel()
    for name in names.values():
        channel.queue_declare(name, arguments=arguments)

    def use_all() -> None:
        channel.basic_get(names["get"], auto_ack=True)
        channel.queue_declare(names["redeclare"], arguments=arguments)
        channel.queue_declare(names["passive"], passive=True)

    keep_using(connection, 2.2, use_all)
    assert [use for use, name in names.items() if queue_gone(prober, name)] == []
    last_use = time.monotonic()
    use_all()
    for name in names.values():
        assert wait_gone(connection, prober, name) - last_use >= 1.0


def test_consumer_keeps_queue_until_cancelled(connection, prober, uid, declared) -> None:
    """B-Q-10: while a consumer is subscribed the queue stays however long that is; the
    countdown starts when the last consumer goes."""
    declared.append(uid)
    channel = declare(connection, uid, {"x-expires": 600})
    tag = channel.basic_consume(uid, lambda *args: None, auto_ack=True)
    keep_using(connection, 1.3, lambda: None)
    assert not queue_gone(prober, uid)
    cancelled_at = time.monotonic()
    channel.basic_cancel(tag)
    assert wait_gone(connection, prober, uid) - cancelled_at >= 0.6


def test_consumer_connection_closing_starts_countdown(connection, prober, mq_url, uid,
                                                      declared) -> None:
    """B-Q-10: a consumer whose connection closes counts as gone: the queue expires after."""
    declared.append(uid)
    declare(connection, uid, {"x-expires": 600})
    other = pika.BlockingConnection(pika.URLParameters(mq_url))
    other.channel().basic_consume(uid, lambda *args: None, auto_ack=True)
    keep_using(connection, 1.0, lambda: None)
    assert not queue_gone(prober, uid)
    closed_at = time.monotonic()
    other.close()
    assert wait_gone(connection, prober, uid) - closed_at >= 0.6
