"""Exchange-to-exchange bindings (B-EX-9): exchange.bind / exchange.unbind route from exchange
to exchange, loops and diamonds included, and every queue gets one copy. Through pika and
aio-pika."""
from __future__ import annotations

import aio_pika
import aiormq
import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from amqputil import assert_channel_closed
from exqutil import bind_queues, drain, exchange_exists, routed_to


def declare(channel: BlockingChannel, uid: str, **types: str) -> dict[str, str]:
    """Declare auto-delete exchanges `{uid}-{name}` of the given types; returns their names."""
    names = {}
    for name, type_ in types.items():
        names[name] = f"{uid}-{name}"
        channel.exchange_declare(names[name], type_, auto_delete=True)
    return names


def test_exchange_bind_routes_by_the_binding_key(channel: BlockingChannel, uid: str) -> None:
    """B-EX-9: a direct source forwards to the destination exchange only on its binding key;
    the destination then routes by its own bindings."""
    x = declare(channel, uid, dst="topic")
    channel.exchange_declare(f"{uid}-src", "direct")  # not auto-delete: it outlives the unbind
    channel.exchange_bind(x["dst"], f"{uid}-src", "orders.eu")
    queues = bind_queues(channel, x["dst"], {f"{uid}-eu": ["*.eu"], f"{uid}-all": ["#"]})
    assert routed_to(channel, f"{uid}-src", queues, "orders.eu") == set(queues)
    assert routed_to(channel, f"{uid}-src", queues, "orders.us") == set()
    channel.exchange_unbind(x["dst"], f"{uid}-src", "orders.eu")
    assert routed_to(channel, f"{uid}-src", queues, "orders.eu") == set()
    channel.exchange_delete(f"{uid}-src")


def test_loop_between_exchanges_delivers_once(channel: BlockingChannel, uid: str) -> None:
    """B-EX-9: a -> b -> a (and a -> a) loops don't loop the message: each queue bound to
    either gets one copy, whichever exchange it was published to."""
    x = declare(channel, uid, a="fanout", b="fanout")
    channel.exchange_bind(x["b"], x["a"])
    channel.exchange_bind(x["a"], x["b"])
    channel.exchange_bind(x["a"], x["a"])
    queues = bind_queues(channel, x["a"], {f"{uid}-qa": [""], f"{uid}-both": [""]})
    bind_queues(channel, x["b"], {f"{uid}-qb": [""], f"{uid}-both": [""]})
    queues.append(f"{uid}-qb")
    for start in (x["a"], x["b"]):
        channel.basic_publish(start, "k", start.encode())
        assert {q: drain(channel, q) for q in queues} == {q: [start.encode()] for q in queues}
    for name in x.values():  # the loop's bindings would keep them alive
        channel.exchange_delete(name)


def test_diamond_delivers_once(channel: BlockingChannel, uid: str) -> None:
    """B-EX-9: top -> left -> q and top -> right -> q: q gets one copy; a queue reached
    only through one side gets its copy too."""
    x = declare(channel, uid, top="fanout", left="direct", right="topic")
    channel.exchange_bind(x["left"], x["top"])
    channel.exchange_bind(x["right"], x["top"])
    queues = bind_queues(channel, x["left"], {f"{uid}-q": ["k"]})
    queues += bind_queues(channel, x["right"], {f"{uid}-q": ["#"], f"{uid}-right": ["k"]})
    assert routed_to(channel, x["top"], set(queues), "k") == {f"{uid}-q", f"{uid}-right"}


def test_headers_exchange_as_destination(channel: BlockingChannel, uid: str) -> None:
    """B-EX-9: headers survive the hop: a headers exchange bound under a topic exchange
    matches on the message's headers."""
    x = declare(channel, uid, src="topic", dst="headers")
    channel.exchange_bind(x["dst"], x["src"], "#")
    channel.queue_declare(f"{uid}-q", exclusive=True)
    channel.queue_bind(f"{uid}-q", x["dst"], "", arguments={"x-match": "any", "kind": "a"})
    channel.basic_publish(x["src"], "x.y", b"a", pika.BasicProperties(headers={"kind": "a"}))
    channel.basic_publish(x["src"], "x.y", b"b", pika.BasicProperties(headers={"kind": "b"}))
    assert drain(channel, f"{uid}-q") == [b"a"]


def test_bind_twice_and_unbind_missing(channel: BlockingChannel, uid: str) -> None:
    """B-EX-9: the same exchange binding made twice is one (one copy); unbinding one that
    isn't there, or between missing exchanges, is unbind-ok."""
    x = declare(channel, uid, src="fanout", dst="fanout")
    channel.exchange_bind(x["dst"], x["src"], "k")
    channel.exchange_bind(x["dst"], x["src"], "k")
    queues = bind_queues(channel, x["dst"], {f"{uid}-q": [""]})
    channel.basic_publish(x["src"], "", b"once")
    assert drain(channel, queues[0]) == [b"once"]
    for destination, source in [(x["dst"], x["src"]), (f"{uid}-nope", f"{uid}-none")]:
        frame = channel.exchange_unbind(destination, source, "not-bound")
        assert isinstance(frame.method, pika.spec.Exchange.UnbindOk)


@pytest.mark.parametrize("missing", ["source", "destination"])
def test_bind_with_missing_exchange_is_404(channel: BlockingChannel, uid: str,
                                           missing: str) -> None:
    """B-EX-9: exchange.bind with a missing source or destination is 404 naming it."""
    x = declare(channel, uid, present="fanout")
    absent = f"{uid}-absent"
    destination, source = (x["present"], absent) if missing == "source" else (absent, x["present"])
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        channel.exchange_bind(destination, source)
    assert_channel_closed(info, 404, f"NOT_FOUND - no exchange '{absent}' in vhost '/'")
    channel.connection.channel().exchange_delete(x["present"])


def test_deleting_either_end_removes_the_binding(connection: pika.BlockingConnection,
                                                 uid: str) -> None:
    """B-EX-9: deleting the destination exchange removes the binding (a new exchange of that
    name is not bound); deleting the source leaves the destination in place."""
    channel = connection.channel()
    channel.exchange_declare(f"{uid}-src", "fanout")
    channel.exchange_declare(f"{uid}-dst", "fanout")
    channel.exchange_bind(f"{uid}-dst", f"{uid}-src")
    queues = bind_queues(channel, f"{uid}-dst", {f"{uid}-q": [""]})
    channel.exchange_delete(f"{uid}-dst")
    channel.exchange_declare(f"{uid}-dst", "fanout")
    channel.queue_bind(queues[0], f"{uid}-dst", "")
    assert routed_to(channel, f"{uid}-src", queues, "") == set()
    channel.exchange_bind(f"{uid}-dst", f"{uid}-src")
    channel.exchange_delete(f"{uid}-src")
    assert exchange_exists(connection, f"{uid}-dst")
    assert routed_to(channel, f"{uid}-dst", queues, "") == set(queues)
    channel.exchange_delete(f"{uid}-dst")


@pytest.mark.anyio
async def test_exchange_bindings_with_aio_pika(mq_url: str, uid: str) -> None:
    """B-EX-9: aio-pika's Exchange.bind/unbind: a loop plus a diamond into one queue still
    yields exactly one message; after unbind nothing arrives; binding to a missing source is
    404."""
    connection = await aio_pika.connect(mq_url)
    async with connection:
        channel = await connection.channel()
        entry = await channel.declare_exchange(f"{uid}-entry", "fanout")
        left = await channel.declare_exchange(f"{uid}-left", "topic", auto_delete=True)
        right = await channel.declare_exchange(f"{uid}-right", "direct", auto_delete=True)
        await left.bind(entry)
        await right.bind(entry, routing_key="")
        await entry.bind(left, routing_key="#")  # loop back to the entry
        queue = await channel.declare_queue(f"{uid}-q", exclusive=True)
        await queue.bind(left, routing_key="#")
        await queue.bind(right, routing_key="k")
        await entry.publish(aio_pika.Message(b"one"), routing_key="k")
        message = await queue.get(timeout=5)
        assert message.body == b"one"
        await message.ack()
        assert await queue.get(fail=False) is None

        await left.unbind(entry)
        await right.unbind(entry, routing_key="")
        await entry.publish(aio_pika.Message(b"none"), routing_key="k")
        assert await queue.get(fail=False) is None
        await entry.delete()

        with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity) as info:
            await left.bind(f"{uid}-absent")
        assert f"NOT_FOUND - no exchange '{uid}-absent' in vhost '/'" in str(info.value)
