"""Queue length limits (B-LEN-1..2) and the nacks they cause under confirms (B-PUB-6), end
to end with pika. Run against RabbitMQ too: MQ_TEST_URL=amqp://guest:guest@127.0.0.1:5672/ ."""
from __future__ import annotations

import pika
import pytest

from amqputil import settle
from queuetest import Scratch, bodies, drain, publish, scratch, wait_count, wait_get, x_death

__all__ = ["scratch"]


def publish_confirmed(channel, queue: str, body: bytes) -> bool:
    """Publish under confirms; True when acked, False when nacked."""
    try:
        channel.basic_publish("", queue, body)
        return True
    except pika.exceptions.NackError:
        return False


# ---- B-LEN-1: what is bounded --------------------------------------------------------------

def test_max_length_keeps_the_newest(scratch: Scratch) -> None:
    """B-LEN-1, B-LEN-2: x-max-length 3 with 5 published keeps the 3 newest (drop-head)."""
    ch = scratch.channel
    q = scratch.queue("q", **{"x-max-length": 3})
    for i in range(5):
        publish(ch, q, b"m%d" % i)
    assert bodies(drain(ch, q)) == [b"m2", b"m3", b"m4"]


def test_max_length_bytes_counts_bodies_only(scratch: Scratch) -> None:
    """B-LEN-1: x-max-length-bytes bounds the sum of ready bodies; properties and headers
    don't count."""
    ch = scratch.channel
    q = scratch.queue("q", **{"x-max-length-bytes": 10})
    publish(ch, q, b"aaaa", headers={"big": "x" * 1000})
    publish(ch, q, b"bbbb")
    wait_count(ch, q, 2)
    publish(ch, q, b"cccc")  # 12 bytes: the oldest goes
    assert bodies(drain(ch, q)) == [b"bbbb", b"cccc"]


def test_body_larger_than_max_length_bytes_is_dropped(scratch: Scratch) -> None:
    """B-LEN-1: a single body over x-max-length-bytes cannot stay at all."""
    ch = scratch.channel
    q = scratch.queue("q", **{"x-max-length-bytes": 3})
    publish(ch, q, b"ok")
    publish(ch, q, b"too long")
    settle(scratch.connection, 0.2)
    assert drain(ch, q) == []


def test_unacked_messages_do_not_count(scratch: Scratch) -> None:
    """B-LEN-1: only ready messages count: two delivered-but-unacked messages leave room for
    two more ready ones; requeueing them enforces the limit again."""
    ch = scratch.channel
    q = scratch.queue("q", **{"x-max-length": 2})
    publish(ch, q, b"a")
    publish(ch, q, b"b")
    wait_get(ch, q, auto_ack=False)
    wait_get(ch, q, auto_ack=False)
    publish(ch, q, b"c")
    publish(ch, q, b"d")
    wait_count(ch, q, 2)
    ch.basic_recover(requeue=True)
    settle(scratch.connection, 0.2)
    # Requeued at the head, over the limit: drop-head drops them again (as RabbitMQ).
    assert bodies(drain(ch, q)) == [b"c", b"d"]


def test_max_length_zero_with_waiting_consumer(scratch: Scratch) -> None:
    """B-LEN-1: x-max-length 0 keeps nothing ready, but a consumer with room still gets the
    message at once (as in RabbitMQ)."""
    ch = scratch.channel
    q = scratch.queue("q", **{"x-max-length": 0})
    publish(ch, q, b"nobody")
    wait_count(ch, q, 0)
    got: list[bytes] = []
    ch.basic_consume(q, lambda c, m, p, b: got.append(b), auto_ack=True)
    publish(ch, q, b"taken")
    settle(scratch.connection, 0.3)
    assert got == [b"taken"]


# ---- B-LEN-2: overflow behaviours ------------------------------------------------------------

def test_drop_head_dead_letters_with_reason_maxlen(scratch: Scratch) -> None:
    """B-LEN-2, B-DLX-1: drop-head dead-letters the oldest messages with reason `maxlen`, in
    order."""
    ch = scratch.channel
    dlx, dead = scratch.dead_letter_target()
    q = scratch.queue("q", **{"x-max-length": 2, "x-dead-letter-exchange": dlx,
                              "x-overflow": "drop-head"})
    for i in range(4):
        publish(ch, q, b"m%d" % i)
    wait_count(ch, dead, 2)
    dropped = drain(ch, dead)
    assert bodies(dropped) == [b"m0", b"m1"]
    assert all(x_death(p)[0]["reason"] == "maxlen" for _, p, _ in dropped)
    assert bodies(drain(ch, q)) == [b"m2", b"m3"]


def test_reject_publish_nacks_under_confirms(scratch: Scratch) -> None:
    """B-LEN-2, B-PUB-6: reject-publish refuses a message when the queue is full: nack under
    confirms, the queue keeps the oldest; after room is made, publishes are acked again."""
    ch = scratch.channel
    q = scratch.queue("q", **{"x-max-length": 2, "x-overflow": "reject-publish"})
    ch.confirm_delivery()
    assert [publish_confirmed(ch, q, b"m%d" % i) for i in range(4)] == \
        [True, True, False, False]
    assert bodies([wait_get(ch, q)]) == [b"m0"]
    assert publish_confirmed(ch, q, b"m4")
    assert bodies(drain(ch, q)) == [b"m1", b"m4"]


def test_reject_publish_without_confirms_drops_silently(scratch: Scratch) -> None:
    """B-LEN-2: without confirms a refused message just disappears; the channel stays open."""
    ch = scratch.channel
    q = scratch.queue("q", **{"x-max-length": 1, "x-overflow": "reject-publish"})
    publish(ch, q, b"first")
    publish(ch, q, b"refused")
    settle(scratch.connection, 0.2)
    assert ch.is_open
    assert bodies(drain(ch, q)) == [b"first"]


def test_reject_publish_does_not_dead_letter(scratch: Scratch) -> None:
    """B-LEN-2: plain reject-publish does not dead-letter the refused message."""
    ch = scratch.channel
    dlx, dead = scratch.dead_letter_target()
    q = scratch.queue("q", **{"x-max-length": 1, "x-overflow": "reject-publish",
                              "x-dead-letter-exchange": dlx})
    publish(ch, q, b"first")
    publish(ch, q, b"refused")
    settle(scratch.connection, 0.3)
    assert drain(ch, dead) == []


def test_reject_publish_dlx_dead_letters_the_refused_one(scratch: Scratch) -> None:
    """B-LEN-2, B-DLX-1: reject-publish-dlx nacks the refused message and dead-letters it
    with reason `maxlen`; the queued ones stay."""
    ch = scratch.channel
    dlx, dead = scratch.dead_letter_target()
    q = scratch.queue("q", **{"x-max-length": 1, "x-overflow": "reject-publish-dlx",
                              "x-dead-letter-exchange": dlx})
    ch.confirm_delivery()
    assert publish_confirmed(ch, q, b"kept")
    assert not publish_confirmed(ch, q, b"refused")
    _, props, body = wait_get(ch, dead)
    [death] = x_death(props)
    assert (body, death["reason"], death["queue"]) == (b"refused", "maxlen", q)
    assert bodies(drain(ch, q)) == [b"kept"]


def test_reject_publish_with_max_length_bytes(scratch: Scratch) -> None:
    """B-LEN-2: reject-publish applies to x-max-length-bytes too: the body that would pass
    the limit is nacked."""
    ch = scratch.channel
    q = scratch.queue("q", **{"x-max-length-bytes": 8, "x-overflow": "reject-publish"})
    ch.confirm_delivery()
    assert publish_confirmed(ch, q, b"1234")
    assert publish_confirmed(ch, q, b"5678")
    assert not publish_confirmed(ch, q, b"9")
    assert bodies(drain(ch, q)) == [b"1234", b"5678"]


@pytest.mark.parametrize("overflow", ["reject-publish", "reject-publish-dlx"])
def test_refused_by_one_queue_nacks_whole_publish(scratch: Scratch, overflow: str) -> None:
    """B-LEN-2, B-PUB-6: a message routed to two queues, one of them full, is nacked, while
    the queue with room still gets it (as RabbitMQ)."""
    ch = scratch.channel
    fanout = scratch.exchange("fan")
    full = scratch.queue("full", **{"x-max-length": 0, "x-overflow": overflow})
    roomy = scratch.queue("roomy")
    ch.queue_bind(full, fanout)
    ch.queue_bind(roomy, fanout)
    ch.confirm_delivery()
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish(fanout, "", b"both")
    assert bodies(drain(ch, roomy)) == [b"both"]
