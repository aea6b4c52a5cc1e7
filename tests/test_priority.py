"""Priority queues (B-PRI-1..3), end to end with pika, alone and with TTL, length limits,
dead lettering, purge and get. Run against RabbitMQ too:
MQ_TEST_URL=amqp://guest:guest@127.0.0.1:5672/ ."""
from __future__ import annotations

from amqputil import collect, settle
from queuetest import (Scratch, bodies, drain, publish, scratch, wait_count, wait_get,
                       x_death)

__all__ = ["scratch"]


def publish_prioritised(scratch: Scratch, queue: str, messages: list[tuple[str, int | None]],
                        **props) -> None:
    for body, priority in messages:
        publish(scratch.channel, queue, body.encode(), priority=priority, **props)


# ---- B-PRI-1: order ---------------------------------------------------------------------

def test_higher_priority_first_equal_in_publish_order(scratch: Scratch) -> None:
    """B-PRI-1: higher priorities first; equal priorities in publish order; no priority is
    0; a priority above x-max-priority counts as the maximum."""
    q = scratch.queue("q", **{"x-max-priority": 5})
    publish_prioritised(scratch, q, [("none", None), ("p3a", 3), ("p5", 5), ("p9", 9),
                                     ("p0", 0), ("p3b", 3), ("p1", 1), ("p255", 255)])
    assert bodies(drain(scratch.channel, q)) == \
        [b"p5", b"p9", b"p255", b"p3a", b"p3b", b"p1", b"none", b"p0"]


def test_priority_order_for_a_consumer(scratch: Scratch) -> None:
    """B-PRI-1: a consumer subscribing to a filled queue gets the same order, and the
    priority property is delivered unchanged (not capped)."""
    q = scratch.queue("q", **{"x-max-priority": 2})
    publish_prioritised(scratch, q, [("low", 1), ("high", 7), ("mid", 2)])
    wait_count(scratch.channel, q, 3)
    got = collect(scratch.connection, scratch.channel, q, 3, auto_ack=True)
    assert [(b, p.priority) for _, p, b in got] == [(b"high", 7), (b"mid", 2), (b"low", 1)]


def test_queue_without_max_priority_ignores_priority(scratch: Scratch) -> None:
    """B-PRI-1: without x-max-priority the queue is plain FIFO."""
    q = scratch.queue("q")
    publish_prioritised(scratch, q, [("a", 1), ("b", 9), ("c", 5)])
    assert bodies(drain(scratch.channel, q)) == [b"a", b"b", b"c"]


# ---- B-PRI-2: requeue --------------------------------------------------------------------

def test_requeued_go_back_ahead_of_newer_at_their_level(scratch: Scratch) -> None:
    """B-PRI-2: requeued messages return to their level in their original order, ahead of
    newer messages of that level, and behind higher levels; they are marked redelivered."""
    ch = scratch.channel
    q = scratch.queue("q", **{"x-max-priority": 5})
    publish_prioritised(scratch, q, [("a", 2), ("b", 2), ("c", 2)])
    first, _, _ = wait_get(ch, q, auto_ack=False)
    second, _, _ = wait_get(ch, q, auto_ack=False)
    publish_prioritised(scratch, q, [("d", 2), ("low", 1), ("high", 4)])
    ch.basic_nack(second.delivery_tag, requeue=True)
    ch.basic_nack(first.delivery_tag, requeue=True)
    settle(scratch.connection, 0.2)
    got = drain(ch, q)
    assert bodies(got) == [b"high", b"a", b"b", b"c", b"d", b"low"]
    assert [m.redelivered for m, _, _ in got] == [False, True, True, False, False, False]


def test_requeue_on_channel_close_keeps_priority(scratch: Scratch) -> None:
    """B-PRI-2: unacked messages of a closed channel come back at their priority level."""
    ch = scratch.channel
    q = scratch.queue("q", **{"x-max-priority": 5})
    publish_prioritised(scratch, q, [("high", 5), ("low", 1)])
    other = scratch.connection.channel()
    wait_get(other, q, auto_ack=False)  # takes "high"
    publish_prioritised(scratch, q, [("mid", 3)])
    other.close()
    settle(scratch.connection, 0.2)
    assert bodies(drain(ch, q)) == [b"high", b"mid", b"low"]


# ---- B-PRI-3: with the other features ------------------------------------------------------

def test_priority_with_drop_head_drops_the_head(scratch: Scratch) -> None:
    """B-PRI-3, B-LEN-2: in a priority queue drop-head drops the head, i.e. the next message
    that would be delivered: the highest priority, oldest first. (The contract said lowest
    first; RabbitMQ 3.10 drops the head, and mq follows RabbitMQ.) Dropped ones are
    dead-lettered as `maxlen` with their priority."""
    ch = scratch.channel
    dlx, dead = scratch.dead_letter_target()
    q = scratch.queue("q", **{"x-max-priority": 5, "x-max-length": 3,
                              "x-dead-letter-exchange": dlx})
    publish_prioritised(scratch, q, [("l1", 1), ("h1", 5), ("l2", 1), ("h2", 5), ("m1", 3)])
    wait_count(ch, dead, 2)
    dropped = drain(ch, dead)
    assert [(b, p.priority, x_death(p)[0]["reason"]) for _, p, b in dropped] == \
        [(b"h1", 5, "maxlen"), (b"h2", 5, "maxlen")]
    assert bodies(drain(ch, q)) == [b"m1", b"l1", b"l2"]


def test_priority_with_max_length_bytes(scratch: Scratch) -> None:
    """B-PRI-3, B-LEN-1: x-max-length-bytes in a priority queue also drops from the head."""
    ch = scratch.channel
    q = scratch.queue("q", **{"x-max-priority": 5, "x-max-length-bytes": 6})
    publish_prioritised(scratch, q, [("l1", 1), ("h1", 5), ("l2", 1), ("h2", 5)])
    assert bodies(drain(ch, q)) == [b"h2", b"l1", b"l2"]


def test_priority_with_reject_publish(scratch: Scratch) -> None:
    """B-PRI-3, B-LEN-2: reject-publish refuses even a higher-priority message when full."""
    ch = scratch.channel
    q = scratch.queue("q", **{"x-max-priority": 5, "x-max-length": 1,
                              "x-overflow": "reject-publish"})
    publish_prioritised(scratch, q, [("low", 1), ("high", 5)])
    assert bodies(drain(ch, q)) == [b"low"]


def test_priority_with_ttl(scratch: Scratch) -> None:
    """B-PRI-3, B-TTL-1, B-TTL-2: expired messages of every level are never delivered and are
    dead-lettered as `expired` with their priority; the others come in priority order."""
    ch = scratch.channel
    dlx, dead = scratch.dead_letter_target()
    q = scratch.queue("q", **{"x-max-priority": 5, "x-dead-letter-exchange": dlx})
    publish(ch, q, b"high-expires", priority=5, expiration="200")
    publish(ch, q, b"high-stays", priority=5)
    publish(ch, q, b"low-expires", priority=1, expiration="200")
    publish(ch, q, b"low-stays", priority=1)
    _, props, body = wait_get(ch, dead)
    assert (body, props.priority, x_death(props)[0]["reason"]) == (b"high-expires", 5, "expired")
    # (RabbitMQ expires only the queue's head, so there low-expires goes during this drain.)
    assert bodies(drain(ch, q)) == [b"high-stays", b"low-stays"]
    _, props, body = wait_get(ch, dead)
    assert (body, props.priority, x_death(props)[0]["reason"]) == (b"low-expires", 1, "expired")


def test_priority_with_rejection_to_dlx(scratch: Scratch) -> None:
    """B-PRI-3, B-DLX-1: a rejected message keeps its priority in the dead-letter queue, and
    a priority dead-letter queue orders what it receives."""
    ch = scratch.channel
    dlx = scratch.exchange("dlx")
    dead = scratch.queue("dead", **{"x-max-priority": 5})
    ch.queue_bind(dead, dlx)
    q = scratch.queue("q", **{"x-max-priority": 5, "x-dead-letter-exchange": dlx})
    publish_prioritised(scratch, q, [("low", 1), ("high", 5)])
    for _ in range(2):
        method, _, _ = wait_get(ch, q, auto_ack=False)
        ch.basic_reject(method.delivery_tag, requeue=False)
    wait_count(ch, dead, 2)
    got = drain(ch, dead)
    assert [(b, p.priority) for _, p, b in got] == [(b"high", 5), (b"low", 1)]


def test_priority_with_purge_and_get(scratch: Scratch) -> None:
    """B-PRI-3: basic.get takes the highest level first and reports the remaining count
    over all levels; purge counts and removes every level."""
    ch = scratch.channel
    q = scratch.queue("q", **{"x-max-priority": 3})
    publish_prioritised(scratch, q, [("p0", 0), ("p1", 1), ("p2", 2), ("p3", 3), ("p3b", 3)])
    method, _, body = wait_get(ch, q)
    assert (body, method.message_count) == (b"p3", 4)
    assert ch.queue_purge(q).method.message_count == 4
    assert drain(ch, q) == []
    publish_prioritised(scratch, q, [("after", 1)])
    assert bodies([wait_get(ch, q)]) == [b"after"]
