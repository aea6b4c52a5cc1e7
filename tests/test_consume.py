"""Consuming (B-CON-3..10): delivery tags, prefetch, round robin, settling, requeue, recover,
basic.get and cancel, with pika, aio-pika and py-amqp."""
from __future__ import annotations

import time

import amqp
import aio_pika
import pika
import pytest
from pamqp import commands as spec

from amqputil import (assert_channel_closed, assert_connection_closed, collect, fresh_queue,
                      publish_many, ready_count, settle, wait_for)
from rawamqp import RawClient


def bodies(n: int) -> list[bytes]:
    return [b"m%d" % i for i in range(1, n + 1)]


def get_all(channel, queue: str) -> list[tuple[bytes, bool]]:
    """basic.get (auto-ack) until empty: (body, redelivered) in delivery order."""
    out = []
    while True:
        method, _, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return out
        out.append((body, method.redelivered))


# ---- B-CON-3: delivery tags -----------------------------------------------------------------

def test_delivery_tags_per_channel_from_one(connection, uid):
    """B-CON-3: delivery tags are per channel, start at 1 and grow by one per delivery,
    basic.deliver and basic.get-ok sharing the sequence."""
    ch1, ch2 = connection.channel(), connection.channel()
    q1, q2 = fresh_queue(ch1, uid, "-a"), fresh_queue(ch1, uid, "-b")
    publish_many(ch1, q1, bodies(4))
    publish_many(ch1, q2, bodies(3))
    ch1.basic_qos(prefetch_count=3)  # the 4th stays for basic.get below
    got1 = collect(connection, ch1, q1, 3)
    got2 = collect(connection, ch2, q2, 3, auto_ack=True)
    ch1.basic_cancel(got1[0][0].consumer_tag)
    assert [m.delivery_tag for m, _, _ in got1] == [1, 2, 3]
    assert [m.delivery_tag for m, _, _ in got2] == [1, 2, 3]
    method, _, _ = ch1.basic_get(q1)
    assert method.delivery_tag == 4


# ---- B-CON-4: prefetch ----------------------------------------------------------------------

def test_qos_per_consumer(connection, channel, uid):
    """B-CON-4: global=false prefetch applies to each consumer created afterwards: two
    consumers on one channel get 2 unacked each; one created before the qos is unlimited."""
    qa, qb, qc = (fresh_queue(channel, uid, s) for s in ("-a", "-b", "-c"))
    for q in (qa, qb, qc):
        publish_many(channel, q, bodies(5))
    early = collect(connection, channel, qc, 5)
    channel.basic_qos(prefetch_count=2)
    got_a = collect(connection, channel, qa, 2)
    got_b = collect(connection, channel, qb, 2)
    settle(connection)
    assert (len(early), len(got_a), len(got_b)) == (5, 2, 2)
    channel.basic_ack(got_a[0][0].delivery_tag)
    wait_for(connection, lambda: len(got_a) == 3)
    settle(connection)
    assert (len(got_a), len(got_b)) == (3, 2)


def test_qos_global(connection, channel, uid):
    """B-CON-4: global=true limits the unacked deliveries of the whole channel."""
    qa, qb = fresh_queue(channel, uid, "-a"), fresh_queue(channel, uid, "-b")
    publish_many(channel, qa, bodies(5))
    publish_many(channel, qb, bodies(5))
    channel.basic_qos(prefetch_count=3, global_qos=True)
    got = []
    for q in (qa, qb):
        channel.basic_consume(q, lambda ch, m, p, b: got.append(m))
    wait_for(connection, lambda: len(got) == 3)
    settle(connection)
    assert len(got) == 3
    channel.basic_ack(got[-1].delivery_tag)
    wait_for(connection, lambda: len(got) == 4)
    settle(connection)
    assert len(got) == 4


def test_qos_per_consumer_and_global_together(connection, channel, uid):
    """B-CON-4: both limits at once: 2 per consumer and 3 for the channel give 2 + 1."""
    qa, qb = fresh_queue(channel, uid, "-a"), fresh_queue(channel, uid, "-b")
    publish_many(channel, qa, bodies(5))
    publish_many(channel, qb, bodies(5))
    channel.basic_qos(prefetch_count=2)
    channel.basic_qos(prefetch_count=3, global_qos=True)
    got_a = collect(connection, channel, qa, 2)
    got_b = collect(connection, channel, qb, 1)
    settle(connection)
    assert (len(got_a), len(got_b)) == (2, 1)
    # Freeing room under the global limit only helps b: a is still at its own limit.
    channel.basic_ack(got_a[0][0].delivery_tag)
    wait_for(connection, lambda: len(got_a) + len(got_b) == 4)
    settle(connection)
    assert (len(got_a), len(got_b)) in ((3, 1), (2, 2))


def test_prefetch_size_is_540(connection, channel):
    """B-CON-4: prefetch_size != 0 is 540 NOT_IMPLEMENTED (a connection error)."""
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
        channel.basic_qos(prefetch_size=10, prefetch_count=1)
    assert_connection_closed(info, 540, "NOT_IMPLEMENTED - prefetch_size!=0 (10)")


@pytest.mark.anyio
async def test_aio_pika_prefetch_and_requeue(mq_url, uid):
    """B-CON-4, B-CON-7: aio-pika with prefetch 2 holds two unacked; a nack(requeue) comes back
    with redelivered=true before later messages."""
    conn = await aio_pika.connect(mq_url)
    async with conn:
        ch = await conn.channel()
        await ch.set_qos(prefetch_count=2)
        queue = await ch.declare_queue(uid, exclusive=True)
        for body in bodies(4):
            await ch.default_exchange.publish(aio_pika.Message(body), uid)
        seen = []
        async with queue.iterator() as it:
            async for message in it:
                seen.append((message.body, message.redelivered, message.delivery_tag))
                if len(seen) == 1:
                    await message.nack(requeue=True)
                else:
                    await message.ack()
                if len(seen) == 5:
                    break
        # m1 and m2 were both in flight (prefetch 2) when m1 was nacked; m1 then comes back
        # ahead of m3.
        assert [(b, r) for b, r, _ in seen] == [(b"m1", False), (b"m2", False), (b"m1", True),
                                               (b"m3", False), (b"m4", False)]
        assert [t for _, _, t in seen] == [1, 2, 3, 4, 5]


# ---- B-CON-5: round robin -------------------------------------------------------------------

def test_round_robin(connection, channel, uid):
    """B-CON-5: messages go round-robin among a queue's consumers (equal priority)."""
    queue = fresh_queue(channel, uid)
    order = []
    for tag in ("c1", "c2", "c3"):
        channel.basic_consume(queue, lambda ch, m, p, b: order.append((m.consumer_tag, b)),
                              auto_ack=True, consumer_tag=tag)
    publish_many(connection.channel(), queue, bodies(9))
    wait_for(connection, lambda: len(order) == 9)
    tags = [t for t, _ in order]
    assert sorted(tags[:3]) == ["c1", "c2", "c3"]
    assert tags == tags[:3] * 3
    assert [b for _, b in order] == bodies(9)


def test_round_robin_skips_consumers_without_room(connection, uid):
    """B-CON-5: a consumer at its prefetch limit is skipped; the others take its turns."""
    ch1, ch2 = connection.channel(), connection.channel()
    queue = fresh_queue(ch1, uid)
    ch1.basic_qos(prefetch_count=1)
    slow = collect(connection, ch1, queue, 0)
    fast = collect(connection, ch2, queue, 0, auto_ack=True)
    publish_many(ch2, queue, bodies(6))
    wait_for(connection, lambda: len(slow) + len(fast) == 6)
    assert len(slow) == 1 and len(fast) == 5


# ---- B-CON-6: ack / nack / reject -------------------------------------------------------------

def take(connection, channel, queue: str, n: int) -> list:
    """n unacked deliveries (by consuming), in order."""
    return [m for m, _, _ in collect(connection, channel, queue, n)]


def test_ack_multiple(connection, channel, uid):
    """B-CON-6: ack(multiple) settles every delivery up to the tag; the rest stay unacked and
    come back when the channel closes."""
    queue = fresh_queue(channel, uid)
    publish_many(channel, queue, bodies(5))
    methods = take(connection, channel, queue, 5)
    channel.basic_ack(methods[2].delivery_tag, multiple=True)
    channel.close()
    assert get_all(connection.channel(), queue) == [(b"m4", True), (b"m5", True)]


def test_ack_multiple_zero_acks_all(connection, channel, uid):
    """B-CON-6: ack(delivery_tag=0, multiple=true) settles everything outstanding."""
    queue = fresh_queue(channel, uid)
    publish_many(channel, queue, bodies(3))
    take(connection, channel, queue, 3)
    channel.basic_ack(0, multiple=True)
    channel.close()
    assert ready_count(connection.channel(), queue) == 0


def test_nack_multiple_and_reject_discard(connection, channel, uid):
    """B-CON-6: nack(multiple, requeue=false) and reject(requeue=false) discard."""
    queue = fresh_queue(channel, uid)
    publish_many(channel, queue, bodies(5))
    methods = take(connection, channel, queue, 5)
    channel.basic_nack(methods[1].delivery_tag, multiple=True, requeue=False)
    channel.basic_reject(methods[3].delivery_tag, requeue=False)
    channel.close()
    assert get_all(connection.channel(), queue) == [(b"m3", True), (b"m5", True)]


@pytest.mark.parametrize("settle_twice", ["ack", "nack", "reject"])
def test_unknown_or_settled_tag_is_406(connection, channel, uid, settle_twice):
    """B-CON-6: settling an already acked tag, or one never delivered, is 406 and closes the
    channel; the unsettled deliveries go back to the queue."""
    queue = fresh_queue(channel, uid)
    publish_many(channel, queue, bodies(2))
    methods = take(connection, channel, queue, 2)
    channel.basic_ack(methods[0].delivery_tag)
    again = {"ack": lambda t: channel.basic_ack(t),
             "nack": lambda t: channel.basic_nack(t, requeue=False),
             "reject": lambda t: channel.basic_reject(t, requeue=False)}[settle_twice]
    again(methods[0].delivery_tag)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        channel.queue_declare(queue, passive=True)
    assert_channel_closed(info, 406, "PRECONDITION_FAILED - unknown delivery tag 1")
    assert get_all(connection.channel(), queue) == [(b"m2", True)]


def test_unknown_tag_never_delivered_is_406(channel):
    """B-CON-6: acking a tag that was never delivered is 406 naming the tag."""
    channel.basic_ack(42)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        channel.queue_declare("", exclusive=True)
    assert_channel_closed(info, 406, "PRECONDITION_FAILED - unknown delivery tag 42")


@pytest.mark.parametrize("settle", ["ack", "reject", "nack"])
def test_tag_past_2_63_is_an_unknown_tag(connection, settle):
    """B-CON-6: a delivery tag past 2**63 (tags are unsigned 64-bit) is an unknown tag: 406
    naming it as sent, for basic.ack, basic.reject and basic.nack alike."""
    channel = connection.channel()
    tag = 2**63
    {"ack": channel.basic_ack, "reject": channel.basic_reject,
     "nack": channel.basic_nack}[settle](tag)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        channel.queue_declare("", exclusive=True)
    assert_channel_closed(info, 406, f"PRECONDITION_FAILED - unknown delivery tag {tag}")


# ---- B-CON-7: requeue -----------------------------------------------------------------------

def test_nack_and_reject_requeue_keep_order(connection, channel, uid):
    """B-CON-7: nack/reject(requeue) put messages back at their original places with
    redelivered=true, ahead of the messages published after them."""
    queue = fresh_queue(channel, uid)
    publish_many(channel, queue, bodies(6))
    got = [channel.basic_get(queue) for _ in range(4)]
    assert [m.redelivered for m, _, _ in got] == [False] * 4
    channel.basic_reject(got[3][0].delivery_tag, requeue=True)
    channel.basic_nack(got[1][0].delivery_tag, requeue=True)
    channel.basic_ack(got[0][0].delivery_tag)
    channel.basic_nack(got[2][0].delivery_tag, requeue=True)
    assert get_all(channel, queue) == [(b"m2", True), (b"m3", True), (b"m4", True),
                                       (b"m5", False), (b"m6", False)]


def test_nack_multiple_requeue(connection, channel, uid):
    """B-CON-7: nack(multiple, requeue) redelivers them all to the consumer, flagged."""
    queue = fresh_queue(channel, uid)
    publish_many(channel, queue, bodies(3))
    got = collect(connection, channel, queue, 3)
    channel.basic_nack(got[2][0].delivery_tag, multiple=True, requeue=True)
    wait_for(connection, lambda: len(got) == 6)
    assert [(b, m.redelivered) for m, _, b in got[3:]] == [(b"m1", True), (b"m2", True),
                                                           (b"m3", True)]
    assert [m.delivery_tag for m, _, _ in got] == [1, 2, 3, 4, 5, 6]


def test_channel_close_requeues_unacked(connection, uid):
    """B-CON-7: closing a channel requeues its unacked messages in their original order."""
    ch = connection.channel()
    queue = fresh_queue(ch, uid)
    publish_many(ch, queue, bodies(5))
    ch.basic_qos(prefetch_count=3)
    take(connection, ch, queue, 3)
    ch.close()
    assert get_all(connection.channel(), queue) == [(b"m1", True), (b"m2", True), (b"m3", True),
                                                    (b"m4", False), (b"m5", False)]


def test_connection_close_requeues_unacked(mq_url, connection, channel, uid):
    """B-CON-7: closing (or dropping) a connection requeues its unacked messages, flagged."""
    queue = fresh_queue(channel, uid)
    publish_many(channel, queue, bodies(3))
    other = pika.BlockingConnection(pika.URLParameters(mq_url))
    ch = other.channel()
    ch.basic_qos(prefetch_count=2)
    take(other, ch, queue, 2)
    other.close()
    assert get_all(channel, queue) == [(b"m1", True), (b"m2", True), (b"m3", False)]


def test_dropped_socket_requeues_unacked(mq_broker, channel, uid):
    """B-CON-7: a client that vanishes without closing gets its unacked messages requeued."""
    queue = fresh_queue(channel, uid)
    publish_many(channel, queue, bodies(2))
    raw = RawClient(mq_broker.port)
    raw.handshake()
    raw.open_channel(1)
    raw.send_method(1, spec.Basic.Get(queue=queue))
    raw.expect("Basic.GetOk")
    raw.close()
    deadline = time.monotonic() + 5
    while ready_count(channel, queue) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert get_all(channel, queue) == [(b"m1", True), (b"m2", False)]


# ---- B-CON-8: recover -----------------------------------------------------------------------

def test_recover_redelivers_unacked(connection, channel, uid):
    """B-CON-8: basic.recover(requeue=true) redelivers every unacked message of the channel,
    with redelivered=true and new delivery tags."""
    queue = fresh_queue(channel, uid)
    publish_many(channel, queue, bodies(3))
    got = collect(connection, channel, queue, 3)
    channel.basic_ack(got[1][0].delivery_tag)
    channel.basic_recover(requeue=True)
    wait_for(connection, lambda: len(got) == 5)
    assert [(b, m.redelivered, m.delivery_tag) for m, _, b in got[3:]] == \
        [(b"m1", True, 4), (b"m3", True, 5)]
    settle(connection)
    assert len(got) == 5


def test_recover_without_requeue_is_540(channel):
    """B-CON-8: basic.recover(requeue=false) is 540 NOT_IMPLEMENTED, as in RabbitMQ."""
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
        channel.basic_recover(requeue=False)
    assert_connection_closed(info, 540, "NOT_IMPLEMENTED - requeue=false")


# ---- B-CON-9: basic.get -----------------------------------------------------------------------

def test_get_message_count_and_empty(channel, uid):
    """B-CON-9: get-ok carries the count of messages left; an empty queue gives get-empty."""
    queue = fresh_queue(channel, uid)
    publish_many(channel, queue, bodies(3))
    counts = []
    for expected in bodies(3):
        method, _, body = channel.basic_get(queue, auto_ack=True)
        assert body == expected
        counts.append(method.message_count)
    assert counts == [2, 1, 0]
    assert channel.basic_get(queue) == (None, None, None)


def test_get_no_ack_honoured(connection, uid):
    """B-CON-9: a get with no_ack is settled at once; one without stays unacked and comes back
    when its channel closes."""
    ch = connection.channel()
    queue = fresh_queue(ch, uid)
    publish_many(ch, queue, bodies(2))
    ch.basic_get(queue, auto_ack=True)
    method, _, body = ch.basic_get(queue, auto_ack=False)
    assert body == b"m2" and ready_count(ch, queue) == 0
    ch.close()
    assert get_all(connection.channel(), queue) == [(b"m2", True)]


def test_pyamqp_get(mq_broker, uid):
    """B-CON-9: py-amqp's basic_get sees message_count, get-empty (None) and no_ack."""
    with amqp.Connection(f"127.0.0.1:{mq_broker.port}") as conn:
        ch = conn.channel()
        ch.queue_declare(uid, exclusive=True)
        for body in bodies(2):
            ch.basic_publish(amqp.Message(body), exchange="", routing_key=uid)
        msg = ch.basic_get(uid, no_ack=False)
        assert (msg.body, msg.delivery_info["message_count"]) == (b"m1", 1)
        ch.basic_reject(msg.delivery_tag, requeue=True)
        again = ch.basic_get(uid, no_ack=True)
        assert (again.body, again.delivery_info["redelivered"]) == (b"m1", True)
        assert ch.basic_get(uid, no_ack=True).body == b"m2"
        assert ch.basic_get(uid) is None


# ---- B-CON-10: cancel -----------------------------------------------------------------------

def test_cancel_keeps_unacked(connection, channel, uid):
    """B-CON-10: after basic.cancel no more deliveries come, and the messages already
    delivered stay unacked until acked (then they are gone, not requeued)."""
    queue = fresh_queue(channel, uid)
    publish_many(channel, queue, bodies(5))
    channel.basic_qos(prefetch_count=2)
    got = collect(connection, channel, queue, 2, tag="ctag-" + uid)
    channel.basic_cancel("ctag-" + uid)
    publish_many(channel, queue, [b"late"])
    settle(connection)
    assert len(got) == 2
    assert ready_count(channel, queue) == 4
    channel.basic_ack(got[1][0].delivery_tag, multiple=True)
    channel.close()
    assert [b for b, _ in get_all(connection.channel(), queue)] == [b"m3", b"m4", b"m5", b"late"]


def test_cancel_unacked_requeued_on_close(connection, uid):
    """B-CON-10: unacked messages of a cancelled consumer are still the channel's: closing the
    channel requeues them."""
    ch = connection.channel()
    queue = fresh_queue(ch, uid)
    publish_many(ch, queue, bodies(2))
    got = collect(connection, ch, queue, 2, tag="t")
    ch.basic_cancel("t")
    ch.close()
    assert get_all(connection.channel(), queue) == [(b"m1", True), (b"m2", True)]
    assert len(got) == 2


def test_many_consumers_requeue_no_loss_no_duplicate(connection, uid):
    """B-CON-5, B-CON-6, B-CON-7: 400 messages over three prefetch-limited consumers that
    requeue every 7th delivery: each message is finally acked exactly once, none is lost."""
    channels = [connection.channel() for _ in range(3)]
    queue = fresh_queue(channels[0], uid)
    acked: list[bytes] = []
    deliveries = 0

    def on_message(ch, method, props, body):
        nonlocal deliveries
        deliveries += 1
        if deliveries % 7 == 0:
            ch.basic_nack(method.delivery_tag, requeue=True)
        else:
            ch.basic_ack(method.delivery_tag)
            acked.append(body)

    for ch in channels:
        ch.basic_qos(prefetch_count=5)
        ch.basic_consume(queue, on_message)
    sent = [b"%d" % i for i in range(400)]
    publish_many(connection.channel(), queue, sent)
    wait_for(connection, lambda: len(acked) >= len(sent), timeout=20)
    settle(connection, 0.2)
    assert sorted(acked) == sorted(sent)
    assert ready_count(channels[0], queue) == 0
