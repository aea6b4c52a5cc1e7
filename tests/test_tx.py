"""Transactions (B-TX-1): publishes and acks take effect at commit, rollback discards them."""
from __future__ import annotations

import amqp
import pika
import pytest

from amqputil import (assert_channel_closed, collect, fresh_queue, publish_many, ready_count,
                      settle, wait_for)


def test_publish_visible_only_at_commit(connection, uid):
    """B-TX-1: publishes in a transaction reach the queue only at tx.commit, in order."""
    ch, observer = connection.channel(), connection.channel()
    queue = fresh_queue(ch, uid)
    ch.tx_select()
    publish_many(ch, queue, [b"1", b"2", b"3"])
    assert ready_count(observer, queue) == 0
    ch.tx_commit()
    assert [observer.basic_get(queue, auto_ack=True)[2] for _ in range(3)] == [b"1", b"2", b"3"]


def test_rollback_discards_publishes(connection, channel, uid):
    """B-TX-1: tx.rollback drops the uncommitted publishes; the channel stays transactional."""
    queue = fresh_queue(channel, uid)
    channel.tx_select()
    channel.basic_publish("", queue, b"dropped")
    channel.tx_rollback()
    channel.basic_publish("", queue, b"kept")
    assert ready_count(channel, queue) == 0
    channel.tx_commit()
    assert channel.basic_get(queue, auto_ack=True)[2] == b"kept"
    assert ready_count(channel, queue) == 0


def test_mandatory_return_at_commit(connection, channel, uid):
    """B-TX-1: an unroutable mandatory publish in a transaction is returned at commit."""
    returned = []
    channel.add_on_return_callback(lambda ch, m, p, b: returned.append(b))
    channel.tx_select()
    channel.basic_publish("", "nowhere-" + uid, b"lost", mandatory=True)
    settle(connection, 0.2)
    assert returned == []
    channel.tx_commit()
    settle(connection, 0.2)
    assert returned == [b"lost"]


def test_acks_take_effect_at_commit(connection, uid):
    """B-TX-1: acks in a transaction settle nothing until commit; rolled back acks leave the
    messages unacked (they come back when the channel closes)."""
    ch, observer = connection.channel(), connection.channel()
    queue = fresh_queue(ch, uid)
    publish_many(ch, queue, [b"1", b"2", b"3"])
    got = collect(connection, ch, queue, 3)
    ch.tx_select()
    ch.basic_ack(got[0][0].delivery_tag)
    ch.tx_rollback()
    ch.basic_ack(got[1][0].delivery_tag)
    ch.basic_reject(got[2][0].delivery_tag, requeue=False)
    ch.tx_commit()
    ch.close()
    assert observer.basic_get(queue, auto_ack=True)[2] == b"1"
    assert ready_count(observer, queue) == 0


def test_rolled_back_ack_can_be_repeated(connection, channel, uid):
    """B-TX-1: after a rollback the tag is unacked again: acking it in the next transaction
    is accepted and settles the message at commit."""
    queue = fresh_queue(channel, uid)
    publish_many(channel, queue, [b"1"])
    (method, _, _), = collect(connection, channel, queue, 1)
    channel.tx_select()
    channel.basic_ack(method.delivery_tag)
    channel.tx_rollback()
    channel.basic_ack(method.delivery_tag)
    channel.tx_commit()
    channel.close()
    assert ready_count(connection.channel(), queue) == 0


def test_uncommitted_acks_are_discarded_on_close(connection, uid):
    """B-TX-1: closing the channel with acks not committed requeues those messages."""
    ch, observer = connection.channel(), connection.channel()
    queue = fresh_queue(ch, uid)
    publish_many(ch, queue, [b"1", b"2"])
    got = collect(connection, ch, queue, 2)
    ch.tx_select()
    ch.basic_ack(got[1][0].delivery_tag, multiple=True)
    ch.close()
    assert [observer.basic_get(queue, auto_ack=True)[2] for _ in range(2)] == [b"1", b"2"]


def test_ack_twice_in_one_transaction_is_406(connection, channel, uid):
    """B-TX-1, B-CON-6: a tag acked earlier in the same transaction is unknown: 406."""
    queue = fresh_queue(channel, uid)
    publish_many(channel, queue, [b"1", b"2"])
    got = collect(connection, channel, queue, 2)
    channel.tx_select()
    channel.basic_ack(got[1][0].delivery_tag, multiple=True)
    channel.basic_ack(got[0][0].delivery_tag)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        channel.tx_commit()
    assert_channel_closed(info, 406, "PRECONDITION_FAILED - unknown delivery tag 1")


@pytest.mark.parametrize("method", ["tx_commit", "tx_rollback"])
def test_commit_or_rollback_without_select_is_406(channel, method):
    """B-TX-1: tx.commit / tx.rollback on a channel that is not transactional is 406."""
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        getattr(channel, method)()
    assert_channel_closed(info, 406, "PRECONDITION_FAILED - channel is not transactional")


def test_pyamqp_transaction(mq_broker, uid):
    """B-TX-1: py-amqp: publish + commit delivers, publish + rollback does not."""
    with amqp.Connection(f"127.0.0.1:{mq_broker.port}") as conn:
        ch = conn.channel()
        ch.queue_declare(uid, exclusive=True)
        ch.tx_select()
        ch.basic_publish(amqp.Message(b"a"), exchange="", routing_key=uid)
        ch.tx_rollback()
        ch.basic_publish(amqp.Message(b"b"), exchange="", routing_key=uid)
        ch.tx_commit()
        assert ch.basic_get(uid, no_ack=True).body == b"b"
        assert ch.basic_get(uid, no_ack=True) is None


def test_recover_in_transaction_keeps_prefetch_exact(connection, channel, uid):
    """B-TX-1, B-CON-8, B-CON-4: an ack pending in a transaction is not redelivered by
    basic.recover and, once committed, frees exactly one prefetch slot."""
    queue = fresh_queue(channel, uid)
    publish_many(channel, queue, [b"1", b"2", b"3", b"4"])
    channel.basic_qos(prefetch_count=2, global_qos=True)
    channel.tx_select()
    got = collect(connection, channel, queue, 2)
    channel.basic_ack(got[0][0].delivery_tag)
    channel.basic_recover(requeue=True)
    wait_for(connection, lambda: len(got) == 3)
    assert (got[2][2], got[2][0].redelivered) == (b"2", True)
    channel.tx_commit()  # "1" settled: one slot frees up for "3"
    wait_for(connection, lambda: len(got) == 4)
    settle(connection)
    assert [b for _, _, b in got] == [b"1", b"2", b"2", b"3"]
