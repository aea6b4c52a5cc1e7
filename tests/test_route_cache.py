"""A channel caches the route of a publish by exchange and routing key (mq._core.publish):
every change of bindings, queues and exchanges between two publishes on the same channel must
show in where the second one goes (B-EX-7, B-EX-9, B-PUB-1, B-PUB-2), as if nothing were cached."""
from __future__ import annotations

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from amqputil import assert_channel_closed
from exqutil import bind_queues, drain, routed_to


def test_direct_route_follows_bind_and_unbind(channel: BlockingChannel, uid: str) -> None:
    """B-EX-7: the same key published again after a bind reaches the new queue too, and after
    an unbind no longer reaches the old one."""
    ex = f"{uid}-x"
    channel.exchange_declare(ex, "direct", auto_delete=True)
    first, second = bind_queues(channel, ex, {f"{uid}-1": ["k"], f"{uid}-2": []})
    for _ in range(3):
        assert routed_to(channel, ex, [first, second], "k") == {first}
    channel.queue_bind(second, ex, "k")
    assert routed_to(channel, ex, [first, second], "k") == {first, second}
    channel.queue_unbind(first, ex, "k")
    assert routed_to(channel, ex, [first, second], "k") == {second}


def test_fanout_route_follows_a_queue_deleted_and_declared(channel: BlockingChannel,
                                                          uid: str) -> None:
    """B-EX-7: a fanout's cached route loses a deleted queue; a queue declared again under
    the same name is a new queue, reached only once bound, and then reached."""
    ex = f"{uid}-fan"
    channel.exchange_declare(ex, "fanout", auto_delete=True)
    first, second = bind_queues(channel, ex, {f"{uid}-a": [""], f"{uid}-b": [""]})
    assert routed_to(channel, ex, [first, second], "") == {first, second}
    channel.queue_delete(second)
    assert routed_to(channel, ex, [first], "") == {first}
    channel.queue_declare(second, exclusive=True)
    assert routed_to(channel, ex, [first, second], "") == {first}
    channel.queue_bind(second, ex)
    assert routed_to(channel, ex, [first, second], "") == {first, second}


def test_default_exchange_after_the_queue_goes(connection: pika.BlockingConnection,
                                               channel: BlockingChannel, uid: str) -> None:
    """B-PUB-2: publishing to a queue by name through the default exchange, then deleting it:
    a mandatory publish comes back with 312 NO_ROUTE; declared again, it is reached again."""
    queue = f"{uid}-q"
    channel.queue_declare(queue)
    returned: list[int] = []
    channel.add_on_return_callback(lambda ch, method, props, body: returned.append(
        method.reply_code))
    channel.basic_publish("", queue, b"1", mandatory=True)
    assert drain(channel, queue) == [b"1"]
    channel.queue_delete(queue)
    channel.basic_publish("", queue, b"2", mandatory=True)
    channel.queue_declare(queue)
    connection.process_data_events(time_limit=0.2)
    assert returned == [312]
    channel.basic_publish("", queue, b"3", mandatory=True)
    assert drain(channel, queue) == [b"3"]
    channel.queue_delete(queue)


def test_exchange_to_exchange_binding_added_later(channel: BlockingChannel, uid: str) -> None:
    """B-EX-9: after an exchange.bind from a source whose route was cached, the same publish
    also reaches the queues behind the destination exchange."""
    src, dst = f"{uid}-src", f"{uid}-dst"
    channel.exchange_declare(src, "direct", auto_delete=True)
    channel.exchange_declare(dst, "fanout", auto_delete=True)
    direct, behind = bind_queues(channel, src, {f"{uid}-d": ["k"], f"{uid}-e": []})
    channel.queue_bind(behind, dst)
    assert routed_to(channel, src, [direct, behind], "k") == {direct}
    channel.exchange_bind(dst, src, "k")
    assert routed_to(channel, src, [direct, behind], "k") == {direct, behind}


def test_deleted_exchange_is_404_on_the_next_publish(connection: pika.BlockingConnection,
                                                     uid: str) -> None:
    """B-PUB-1: once the exchange is deleted (by another channel), the next publish
    to it on a channel that published there before closes that channel with 404."""
    ex = f"{uid}-gone"
    publisher, admin = connection.channel(), connection.channel()
    admin.exchange_declare(ex, "direct")
    (queue,) = bind_queues(admin, ex, {f"{uid}-q": ["k"]})
    publisher.basic_publish(ex, "k", b"1")
    assert drain(admin, queue) == [b"1"]
    admin.exchange_delete(ex)
    publisher.basic_publish(ex, "k", b"2")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        publisher.queue_declare(queue, passive=True)
    assert_channel_closed(info, 404, f"NOT_FOUND - no exchange '{ex}' in vhost '/'")
