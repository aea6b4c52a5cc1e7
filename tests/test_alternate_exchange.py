"""Alternate exchanges (B-EX-11), end to end with pika: what an exchange can't route goes to
its `alternate-exchange`, and a mandatory publish that the alternate routes is not returned.
Run against RabbitMQ too: MQ_TEST_URL=amqp://guest:guest@127.0.0.1:5672/ ."""
from __future__ import annotations

from typing import Any, Iterator

import pika
import pytest

from amqputil import settle
from queuetest import Scratch, bodies, drain, scratch

__all__ = ["scratch"]


class Returns:
    """basic.return frames a channel received: (reply_code, reply_text, exchange, key, body)."""

    def __init__(self, channel: Any) -> None:
        self.seen: list[tuple[int, str, str, str, bytes]] = []
        channel.add_on_return_callback(
            lambda ch, m, p, b: self.seen.append((m.reply_code, m.reply_text, m.exchange,
                                                  m.routing_key, b)))


@pytest.fixture
def returns(scratch: Scratch) -> Iterator[Returns]:
    yield Returns(scratch.channel)


def exchange_with_alternate(scratch: Scratch, suffix: str, type_: str, alternate: str) -> str:
    return scratch.exchange(suffix, type_, **{"alternate-exchange": alternate})


@pytest.fixture
def topology(scratch: Scratch) -> tuple[str, str, str]:
    """A direct exchange with one binding (key "k" -> `main`) whose alternate, a fanout,
    feeds `caught`. Returns (exchange, main queue, caught queue)."""
    alternate = scratch.exchange("ae", "fanout")
    caught = scratch.queue("caught")
    scratch.channel.queue_bind(caught, alternate)
    exchange = exchange_with_alternate(scratch, "x", "direct", alternate)
    main = scratch.queue("main")
    scratch.channel.queue_bind(main, exchange, "k")
    return exchange, main, caught


def test_unroutable_goes_to_alternate(scratch, topology) -> None:
    """B-EX-11: a message the exchange routes goes only where it routes; one it can't route
    goes to the alternate exchange, keeping its original exchange and routing key."""
    exchange, main, caught = topology
    ch = scratch.channel
    ch.basic_publish(exchange, "k", b"routed")
    ch.basic_publish(exchange, "other", b"unroutable")
    assert bodies(drain(ch, main)) == [b"routed"]
    [(method, _, body)] = drain(ch, caught)
    assert (body, method.exchange, method.routing_key) == (b"unroutable", exchange, "other")


def test_mandatory_counts_as_routed(scratch, topology, returns) -> None:
    """B-EX-11: mandatory and routed by the alternate exchange: no basic.return."""
    exchange, main, caught = topology
    ch = scratch.channel
    ch.basic_publish(exchange, "other", b"caught", mandatory=True)
    settle(scratch.connection)
    assert returns.seen == []
    assert bodies(drain(ch, caught)) == [b"caught"]


def test_mandatory_with_confirms_is_acked_without_return(scratch, topology) -> None:
    """B-EX-11: under publisher confirms the same publish is simply acked (pika raises
    UnroutableError if it was returned)."""
    exchange, _, caught = topology
    ch = scratch.connection.channel()
    ch.confirm_delivery()
    ch.basic_publish(exchange, "other", b"confirmed", mandatory=True)
    assert bodies(drain(scratch.channel, caught)) == [b"confirmed"]


def test_missing_alternate_returns(scratch, returns) -> None:
    """B-EX-11: an alternate exchange that does not exist routes nothing: a mandatory
    publish comes back 312 NO_ROUTE from the exchange it was sent to."""
    exchange = exchange_with_alternate(scratch, "x", "direct", f"{scratch.uid}-missing")
    scratch.channel.basic_publish(exchange, "k", b"lost", mandatory=True)
    settle(scratch.connection)
    assert returns.seen == [(312, "NO_ROUTE", exchange, "k", b"lost")]


def test_alternate_that_routes_nothing_returns(scratch, returns) -> None:
    """B-EX-11: an alternate exchange that can't route the message either: basic.return."""
    alternate = scratch.exchange("ae", "direct")
    exchange = exchange_with_alternate(scratch, "x", "direct", alternate)
    scratch.channel.basic_publish(exchange, "k", b"lost", mandatory=True)
    settle(scratch.connection)
    assert returns.seen == [(312, "NO_ROUTE", exchange, "k", b"lost")]


def test_alternates_chain(scratch, returns) -> None:
    """B-EX-11: an alternate exchange with its own alternate: the message goes down the chain
    to the first exchange that routes it, once."""
    last = scratch.exchange("last", "fanout")
    caught = scratch.queue("caught")
    scratch.channel.queue_bind(caught, last)
    middle = exchange_with_alternate(scratch, "middle", "topic", last)
    first = exchange_with_alternate(scratch, "first", "direct", middle)
    scratch.channel.basic_publish(first, "a.b", b"chained", mandatory=True)
    assert bodies(drain(scratch.channel, caught)) == [b"chained"]
    assert returns.seen == []


def test_alternate_loop_terminates(scratch, returns) -> None:
    """B-EX-11: two exchanges that are each other's alternate and route nothing: the publish
    is returned once, no loop."""
    a, b = f"{scratch.uid}-a", f"{scratch.uid}-b"
    exchange_with_alternate(scratch, "a", "direct", b)
    exchange_with_alternate(scratch, "b", "direct", a)
    scratch.channel.basic_publish(a, "k", b"loop", mandatory=True)
    settle(scratch.connection)
    assert returns.seen == [(312, "NO_ROUTE", a, "k", b"loop")]


def test_alternate_not_used_when_bound_exchange_routes_nothing(scratch, returns) -> None:
    """B-EX-11: an exchange bound to another exchange has routed the message (as RabbitMQ
    sees it) even when that exchange has no queues: its alternate is not used."""
    alternate = scratch.exchange("ae", "fanout")
    caught = scratch.queue("caught")
    scratch.channel.queue_bind(caught, alternate)
    downstream = scratch.exchange("down", "fanout")
    exchange = exchange_with_alternate(scratch, "x", "fanout", alternate)
    scratch.channel.exchange_bind(downstream, exchange)
    scratch.channel.basic_publish(exchange, "k", b"nowhere", mandatory=True)
    settle(scratch.connection)
    assert returns.seen == [(312, "NO_ROUTE", exchange, "k", b"nowhere")]
    assert drain(scratch.channel, caught) == []


def test_alternate_of_exchange_reached_through_binding(scratch, topology, returns) -> None:
    """B-EX-11: an exchange reached through an exchange-to-exchange binding uses its own
    alternate for what it can't route; CC keys count as routing keys."""
    exchange, main, caught = topology
    ch = scratch.channel
    upstream = scratch.exchange("up", "fanout")
    ch.exchange_bind(exchange, upstream)
    ch.basic_publish(upstream, "other", b"via upstream", mandatory=True)
    ch.basic_publish(exchange, "other", b"cc hit", pika.BasicProperties(headers={"CC": ["k"]}))
    ch.basic_publish(exchange, "other", b"cc miss", pika.BasicProperties(headers={"CC": ["z"]}))
    assert bodies(drain(ch, caught)) == [b"via upstream", b"cc miss"]
    assert bodies(drain(ch, main)) == [b"cc hit"]
    assert returns.seen == []


def test_internal_exchange_can_be_alternate(scratch) -> None:
    """B-EX-11: an internal exchange refuses publishes but works as an alternate."""
    ch = scratch.channel
    internal = scratch.exchange("internal", "fanout", internal=True)
    caught = scratch.queue("caught")
    ch.queue_bind(caught, internal)
    exchange = exchange_with_alternate(scratch, "x", "direct", internal)
    ch.basic_publish(exchange, "k", b"via internal")
    assert bodies(drain(ch, caught)) == [b"via internal"]


def test_alternate_of_wrong_type_is_406(scratch) -> None:
    """B-EX-11: alternate-exchange must be a string: 406 with RabbitMQ's text."""
    name = f"{scratch.uid}-x"
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        scratch.connection.channel().exchange_declare(
            name, "direct", arguments={"alternate-exchange": 5})
    assert (info.value.reply_code, info.value.reply_text) == (
        406, f"PRECONDITION_FAILED - invalid type 'signedint' for arg 'alternate-exchange' in "
             f"exchange '{name}' in vhost '/'")


@pytest.mark.parametrize("arguments,difference", [
    ({"alternate-exchange": "other"}, "received 'other' but current is '{ae}'"),
    ({}, "received none but current is the value '{ae}' of type 'longstr'"),
])
def test_redeclare_with_other_alternate_is_406(scratch, topology, arguments: dict,
                                               difference: str) -> None:
    """B-EX-11 (with B-EX-3): the alternate exchange is part of the exchange's identity; a
    redeclaration naming another one, or none, is 406 inequivalent arg."""
    exchange = topology[0]
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        scratch.connection.channel().exchange_declare(exchange, "direct", arguments=arguments)
    assert (info.value.reply_code, info.value.reply_text) == (
        406, f"PRECONDITION_FAILED - inequivalent arg 'alternate-exchange' for exchange "
             f"'{exchange}' in vhost '/': " + difference.format(ae=f"{scratch.uid}-ae"))
