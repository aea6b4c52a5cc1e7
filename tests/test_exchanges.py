"""Exchanges (B-EX-1..8, 10): predeclared exchanges, declare/delete rules with RabbitMQ's
reply codes and texts, and direct/fanout/topic/headers routing, end to end through pika,
py-amqp and aio-pika. Exchange-to-exchange bindings (B-EX-9) are in test_exchange_bindings.py."""
from __future__ import annotations

from typing import Any, Callable

import amqp
import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from amqputil import assert_channel_closed, assert_connection_closed
from exqutil import amqp_host, bind_queues, drain, exchange_exists, routed_to

DEFAULT_EXCHANGE_403 = "ACCESS_REFUSED - operation not permitted on the default exchange"


# ---- B-EX-1: predeclared exchanges -------------------------------------------------------

@pytest.mark.parametrize("name,type_", [
    ("amq.direct", "direct"), ("amq.fanout", "fanout"), ("amq.topic", "topic"),
    ("amq.headers", "headers"), ("amq.match", "headers"),
])
def test_predeclared_exchange_exists_with_its_type(channel: BlockingChannel, name: str,
                                                   type_: str) -> None:
    """B-EX-1: amq.direct/fanout/topic/headers/match exist (passive declare works) and are
    durable exchanges of their type (redeclaring them as they are is accepted, as RabbitMQ)."""
    channel.exchange_declare(name, type_, passive=True)
    channel.exchange_declare(name, type_, durable=True)


def test_predeclared_exchange_has_its_type_not_another(channel: BlockingChannel) -> None:
    """B-EX-1, B-EX-3: amq.topic is a topic exchange; declaring it as fanout names the type."""
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        channel.exchange_declare("amq.topic", "fanout", durable=True)
    assert_channel_closed(info, 406, "PRECONDITION_FAILED - inequivalent arg 'type' for exchange "
                                     "'amq.topic' in vhost '/': received 'fanout' but current "
                                     "is 'topic'")


def test_default_exchange_routes_to_queue_by_name(channel: BlockingChannel, uid: str) -> None:
    """B-EX-1: the default exchange delivers to the queue named by the routing key, only there."""
    channel.queue_declare(f"{uid}-a", exclusive=True)
    channel.queue_declare(f"{uid}-b", exclusive=True)
    channel.basic_publish("", f"{uid}-a", b"for a")
    assert drain(channel, f"{uid}-a") == [b"for a"]
    assert drain(channel, f"{uid}-b") == []


@pytest.mark.parametrize("action", [
    "queue_bind", "queue_unbind", "exchange_bind_source", "exchange_bind_destination",
    "exchange_unbind_source", "exchange_delete", "exchange_declare", "exchange_declare_passive",
])
def test_default_exchange_is_untouchable(connection: pika.BlockingConnection, uid: str,
                                         action: str) -> None:
    """B-EX-1: the default exchange can't be bound, unbound, deleted or declared: 403."""
    channel = connection.channel()
    channel.queue_declare(uid, exclusive=True)
    channel.exchange_declare(f"{uid}-x", "direct", auto_delete=True)
    actions: dict[str, Callable[[], Any]] = {
        "queue_bind": lambda: channel.queue_bind(uid, "", uid),
        "queue_unbind": lambda: channel.queue_unbind(uid, "", uid),
        "exchange_bind_source": lambda: channel.exchange_bind(f"{uid}-x", "", "k"),
        "exchange_bind_destination": lambda: channel.exchange_bind("", f"{uid}-x", "k"),
        "exchange_unbind_source": lambda: channel.exchange_unbind(f"{uid}-x", "", "k"),
        "exchange_delete": lambda: channel.exchange_delete(""),
        "exchange_declare": lambda: channel.exchange_declare("", "direct"),
        "exchange_declare_passive": lambda: channel.exchange_declare("", "direct", passive=True),
    }
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        actions[action]()
    assert_channel_closed(info, 403, DEFAULT_EXCHANGE_403)
    # The queue is still reachable through the default exchange.
    channel = connection.channel()
    channel.basic_publish("", uid, b"still routed")
    assert drain(channel, uid) == [b"still routed"]
    channel.exchange_delete(f"{uid}-x")


def test_predeclared_exchanges_cannot_be_deleted(channel: BlockingChannel) -> None:
    """B-EX-1: deleting amq.direct is 403 with RabbitMQ's text."""
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        channel.exchange_delete("amq.direct")
    assert_channel_closed(info, 403, "ACCESS_REFUSED - deletion of system exchange 'amq.direct' "
                                     "in vhost '/' not allowed")


# ---- B-EX-2: the amq. prefix -------------------------------------------------------------

def test_declaring_new_amq_name_is_refused(channel: BlockingChannel, uid: str) -> None:
    """B-EX-2: a new exchange named amq.* is 403 ACCESS_REFUSED, and is not created."""
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        channel.exchange_declare(f"amq.{uid}", "direct")
    assert_channel_closed(info, 403, f"ACCESS_REFUSED - exchange name 'amq.{uid}' contains "
                                     "reserved prefix 'amq.*'")
    channel = channel.connection.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        channel.exchange_declare(f"amq.{uid}", "direct", passive=True)
    assert_channel_closed(info, 404, f"NOT_FOUND - no exchange 'amq.{uid}' in vhost '/'")


# ---- B-EX-3: redeclaration ---------------------------------------------------------------

@pytest.mark.parametrize("change,field,received,current", [
    ({"exchange_type": "fanout"}, "type", "'fanout'", "'direct'"),
    ({"durable": True}, "durable", "'true'", "'false'"),
    ({"auto_delete": True}, "auto_delete", "'true'", "'false'"),
    ({"internal": True}, "internal", "'true'", "'false'"),
    ({"arguments": {"alternate-exchange": "ae"}}, "alternate-exchange",
     "the value 'ae' of type 'longstr'", "none"),
])
def test_inequivalent_redeclare_names_the_field(connection: pika.BlockingConnection, uid: str,
                                                change: dict, field: str, received: str,
                                                current: str) -> None:
    """B-EX-3: redeclaring with another type/durable/auto_delete/internal/alternate-exchange is
    406 naming the field with RabbitMQ's wording; the exchange is left as it was."""
    channel = connection.channel()
    name = f"{uid}-x"
    channel.exchange_declare(name, "direct")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        channel.exchange_declare(name, **{"exchange_type": "direct", **change})
    assert_channel_closed(info, 406, f"PRECONDITION_FAILED - inequivalent arg '{field}' for "
                                     f"exchange '{name}' in vhost '/': received {received} but "
                                     f"current is {current}")
    channel = connection.channel()
    channel.exchange_declare(name, "direct")  # still what it was
    channel.exchange_delete(name)


def test_same_redeclare_is_a_noop_that_keeps_bindings(channel: BlockingChannel, uid: str) -> None:
    """B-EX-3: the same declaration again (and other, non-compared arguments) is a no-op: the
    exchange keeps its bindings."""
    name = f"{uid}-x"
    channel.exchange_declare(name, "direct", arguments={"alternate-exchange": "nowhere"})
    bind_queues(channel, name, {f"{uid}-q": ["k"]})
    channel.exchange_declare(name, "direct", arguments={"alternate-exchange": "nowhere"})
    channel.exchange_declare(name, "direct", arguments={"alternate-exchange": "nowhere",
                                                        "x-unrelated": 1})
    channel.basic_publish(name, "k", b"still bound")
    assert drain(channel, f"{uid}-q") == [b"still bound"]
    channel.exchange_delete(name)


# ---- B-EX-4: unknown type ----------------------------------------------------------------

def test_unknown_type_is_connection_error(mq_url: str, uid: str) -> None:
    """B-EX-4: an unknown exchange type is 503 COMMAND_INVALID and closes the connection
    (py-amqp)."""
    conn = amqp.Connection(amqp_host(mq_url), userid="guest", password="guest")
    conn.connect()
    try:
        channel = conn.channel()
        with pytest.raises(amqp.exceptions.InvalidCommand) as info:
            channel.exchange_declare(f"{uid}-x", "no-such-type")
        assert info.value.reply_code == 503
        assert info.value.reply_text == "COMMAND_INVALID - unknown exchange type 'no-such-type'"
        assert not conn.connected
    finally:
        conn.collect()


def test_unknown_type_on_existing_exchange_is_connection_error(connection: pika.BlockingConnection,
                                                               uid: str) -> None:
    """B-EX-4: the type is checked before equivalence, so an existing name with an unknown
    type is 503 too (as RabbitMQ)."""
    channel = connection.channel()
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
        channel.exchange_declare("amq.direct", "no-such-type", durable=True)
    assert_connection_closed(info, 503, "COMMAND_INVALID - unknown exchange type 'no-such-type'")


# ---- B-EX-5: passive ---------------------------------------------------------------------

def test_passive_declare(connection: pika.BlockingConnection, uid: str) -> None:
    """B-EX-5: passive=true on a missing exchange is 404; on an existing one it is ok whatever
    the other fields say."""
    channel = connection.channel()
    channel.exchange_declare(f"{uid}-x", "topic", auto_delete=True)
    channel.exchange_declare(f"{uid}-x", "fanout", passive=True)
    channel.exchange_delete(f"{uid}-x")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        channel.exchange_declare(f"{uid}-missing", "direct", passive=True)
    assert_channel_closed(info, 404, f"NOT_FOUND - no exchange '{uid}-missing' in vhost '/'")


# ---- B-EX-6: delete ----------------------------------------------------------------------

def test_delete_if_unused_with_bindings_is_refused(connection: pika.BlockingConnection,
                                                   uid: str) -> None:
    """B-EX-6: delete(if_unused) of an exchange with bindings is 406 and the exchange stays
    and routes; without bindings it is deleted."""
    channel = connection.channel()
    name = f"{uid}-x"
    channel.exchange_declare(name, "fanout")
    bind_queues(channel, name, {f"{uid}-q": [""]})
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        channel.exchange_delete(name, if_unused=True)
    assert_channel_closed(info, 406, f"PRECONDITION_FAILED - exchange '{name}' in vhost '/' "
                                     "in use")
    channel = connection.channel()
    channel.basic_publish(name, "", b"still there")
    assert drain(channel, f"{uid}-q") == [b"still there"]
    channel.queue_unbind(f"{uid}-q", name, "")
    channel.exchange_delete(name, if_unused=True)
    assert not exchange_exists(connection, name)


def test_delete_if_unused_ignores_incoming_exchange_bindings(connection: pika.BlockingConnection,
                                                             uid: str) -> None:
    """B-EX-6: only bindings *from* the exchange make it used; being a destination doesn't."""
    channel = connection.channel()
    channel.exchange_declare(f"{uid}-src", "fanout", auto_delete=True)
    channel.exchange_declare(f"{uid}-dst", "fanout")
    channel.exchange_bind(f"{uid}-dst", f"{uid}-src")
    channel.exchange_delete(f"{uid}-dst", if_unused=True)
    assert not exchange_exists(connection, f"{uid}-dst")


def test_delete_missing_exchange_is_ok(channel: BlockingChannel, uid: str) -> None:
    """B-EX-6: deleting an exchange that does not exist is ok (delete-ok)."""
    frame = channel.exchange_delete(f"{uid}-missing")
    assert isinstance(frame.method, pika.spec.Exchange.DeleteOk)
    frame = channel.exchange_delete(f"{uid}-missing", if_unused=True)
    assert isinstance(frame.method, pika.spec.Exchange.DeleteOk)


def test_deleted_exchange_drops_its_bindings(channel: BlockingChannel, uid: str) -> None:
    """B-EX-6: an exchange deleted and declared again starts without the old bindings."""
    name = f"{uid}-x"
    channel.exchange_declare(name, "fanout")
    bind_queues(channel, name, {f"{uid}-q": [""]})
    channel.exchange_delete(name)
    channel.exchange_declare(name, "fanout")
    channel.basic_publish(name, "", b"nobody")
    assert drain(channel, f"{uid}-q") == []
    channel.exchange_delete(name)


# ---- B-EX-7: direct, fanout, topic -------------------------------------------------------

def test_direct_routes_on_equal_keys(channel: BlockingChannel, uid: str) -> None:
    """B-EX-7: direct delivers to the queues bound with exactly the routing key, once each."""
    name = f"{uid}-x"
    channel.exchange_declare(name, "direct", auto_delete=True)
    queues = bind_queues(channel, name, {f"{uid}-a": ["red", "green"], f"{uid}-b": ["red"],
                                         f"{uid}-c": ["Red", "red.x"]})
    assert routed_to(channel, name, queues, "red") == {f"{uid}-a", f"{uid}-b"}
    assert routed_to(channel, name, queues, "green") == {f"{uid}-a"}
    assert routed_to(channel, name, queues, "blue") == set()


def test_fanout_routes_to_every_binding(channel: BlockingChannel, uid: str) -> None:
    """B-EX-7: fanout ignores the key and delivers one copy to each bound queue, even one
    bound twice with different keys."""
    name = f"{uid}-x"
    channel.exchange_declare(name, "fanout", auto_delete=True)
    queues = bind_queues(channel, name, {f"{uid}-a": ["one", "two"], f"{uid}-b": [""]})
    channel.basic_publish(name, "whatever", b"m")
    assert {q: drain(channel, q) for q in queues} == {f"{uid}-a": [b"m"], f"{uid}-b": [b"m"]}


TOPIC_CASES = [
    ("*.orange.*", "quick.orange.rabbit", True),
    ("*.orange.*", "orange", False),
    ("*.orange.*", "quick.orange.male.rabbit", False),
    ("*.*.rabbit", "quick.orange.rabbit", True),
    ("lazy.#", "lazy", True),
    ("lazy.#", "lazy.orange.male.rabbit", True),
    ("lazy.#", "lazyx.orange", False),
    ("#", "", True),
    ("#", "a.b.c", True),
    ("*", "a", True),
    ("*", "a.b", False),
    ("a.*.#", "a", False),
    ("a.*.#", "a.b", True),
    ("a.#.b", "a.b", True),
    ("a.#.b", "a.x.y.b", True),
    ("a.#.b", "a.x.y.c", False),
    ("#.b", "b", True),
    ("#.#", "a", True),
    ("a.*.b", "a..b", True),
    ("a.b", "a.b", True),
    ("a.b", "a.B", False),
]


@pytest.mark.parametrize("pattern,key,matches", TOPIC_CASES)
def test_topic_wildcards(channel: BlockingChannel, uid: str, pattern: str, key: str,
                         matches: bool) -> None:
    """B-EX-7: topic words split on '.', '*' is exactly one word, '#' zero or more."""
    channel.exchange_declare(f"{uid}-x", "topic", auto_delete=True)
    queues = bind_queues(channel, f"{uid}-x", {f"{uid}-q": [pattern]})
    expected = {f"{uid}-q"} if matches else set()
    assert routed_to(channel, f"{uid}-x", queues, key) == expected


def test_topic_queue_reached_twice_gets_one_copy(channel: BlockingChannel, uid: str) -> None:
    """B-EX-7: a queue whose several topic bindings all match gets the message once."""
    name = f"{uid}-x"
    channel.exchange_declare(name, "topic", auto_delete=True)
    queues = bind_queues(channel, name, {f"{uid}-a": ["a.*", "#", "a.b", "*.b"],
                                         f"{uid}-b": ["#.b"]})
    channel.basic_publish(name, "a.b", b"once")
    assert {q: drain(channel, q) for q in queues} == {f"{uid}-a": [b"once"],
                                                      f"{uid}-b": [b"once"]}


def test_topic_unbind_removes_only_that_pattern(channel: BlockingChannel, uid: str) -> None:
    """B-EX-7: after unbinding one of two matching patterns the queue still gets the message;
    after unbinding both it doesn't."""
    name = f"{uid}-x"
    channel.exchange_declare(name, "topic", auto_delete=True)
    queues = bind_queues(channel, name, {f"{uid}-a": ["a.*", "#"], f"{uid}-keep": ["zzz"]})
    channel.queue_unbind(f"{uid}-a", name, "#")
    assert routed_to(channel, name, queues, "a.b") == {f"{uid}-a"}
    channel.queue_unbind(f"{uid}-a", name, "a.*")
    assert routed_to(channel, name, queues, "a.b") == set()


# ---- B-EX-8: headers ---------------------------------------------------------------------

HEADERS_CASES = [
    # binding arguments, message headers, matches
    ({"a": 1, "b": "x"}, {"a": 1, "b": "x", "c": 0}, True),
    ({"a": 1, "b": "x"}, {"a": 1}, False),
    ({"x-match": "all", "a": 1, "b": "x"}, {"a": 1, "b": "y"}, False),
    ({"x-match": "any", "a": 1, "b": "x"}, {"b": "x"}, True),
    ({"x-match": "any", "a": 1, "b": "x"}, {"a": 2, "b": "y"}, False),
    ({"x-match": "any", "a": 1}, None, False),
    ({"x-match": "all"}, None, True),
    ({"x-match": "any"}, {"a": 1}, False),
    ({"a": 1}, {"a": "1"}, False),                       # types matter
    ({"a": None}, {"a": "anything"}, True),              # void: presence only
    ({"a": None}, {"b": 1}, False),
    ({"x-match": "any", "a": None, "b": 2}, {"a": 0}, True),
    ({"a": 1, "x-custom": "v"}, {"a": 1}, True),         # x- keys ignored...
    ({"x-match": "any", "x-custom": "v"}, {"x-custom": "v"}, False),
    ({"x-match": "all-with-x", "a": 1, "x-custom": "v"}, {"a": 1}, False),  # ...unless -with-x
    ({"x-match": "all-with-x", "a": 1, "x-custom": "v"}, {"a": 1, "x-custom": "v"}, True),
    ({"x-match": "any-with-x", "x-custom": "v"}, {"x-custom": "v"}, True),
    ({"x-match": "any-with-x", "x-custom": "v"}, {"x-custom": "w"}, False),
]


@pytest.mark.parametrize("arguments,headers,matches", HEADERS_CASES)
def test_headers_matching(channel: BlockingChannel, uid: str, arguments: dict,
                          headers: dict | None, matches: bool) -> None:
    """B-EX-8: x-match all (default) / any / all-with-x / any-with-x; x- keys only count in the
    -with-x forms; a void binding value matches on presence; values compare with their type."""
    name = f"{uid}-x"
    channel.exchange_declare(name, "headers", auto_delete=True)
    channel.queue_declare(f"{uid}-q")
    channel.queue_bind(f"{uid}-q", name, "ignored", arguments=arguments)
    channel.basic_publish(name, "any-key", b"h", pika.BasicProperties(headers=headers))
    assert drain(channel, f"{uid}-q") == ([b"h"] if matches else [])
    channel.queue_delete(f"{uid}-q")


def test_headers_via_amq_match_and_unbind(channel: BlockingChannel, uid: str) -> None:
    """B-EX-8, B-EX-1: amq.match is a headers exchange; unbinding with the same arguments
    removes exactly that binding."""
    channel.queue_declare(f"{uid}-q", exclusive=True)
    gold = {"x-match": "any", "tier": "gold"}
    channel.queue_bind(f"{uid}-q", "amq.match", "", arguments=gold)
    channel.queue_bind(f"{uid}-q", "amq.match", "", arguments={"tier": "silver"})
    channel.basic_publish("amq.match", "", b"g", pika.BasicProperties(headers={"tier": "gold"}))
    assert drain(channel, f"{uid}-q") == [b"g"]
    channel.queue_unbind(f"{uid}-q", "amq.match", "", arguments=gold)
    channel.basic_publish("amq.match", "", b"g2", pika.BasicProperties(headers={"tier": "gold"}))
    channel.basic_publish("amq.match", "", b"s", pika.BasicProperties(headers={"tier": "silver"}))
    assert drain(channel, f"{uid}-q") == [b"s"]


@pytest.mark.parametrize("x_match,text", [
    ("some", 'Invalid x-match field value <<"some">>; expected all, any, all-with-x, or '
             'any-with-x'),
    (5, "Invalid x-match field type signedint (value 5); expected longstr"),
])
def test_headers_invalid_x_match(channel: BlockingChannel, uid: str, x_match: Any,
                                 text: str) -> None:
    """B-EX-8: an x-match other than all/any/all-with-x/any-with-x is 406 (RabbitMQ's text)."""
    channel.queue_declare(f"{uid}-q", exclusive=True)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        channel.queue_bind(f"{uid}-q", "amq.headers", "", arguments={"x-match": x_match})
    assert_channel_closed(info, 406, f"PRECONDITION_FAILED - {text}")


# ---- B-EX-10: auto-delete and internal ---------------------------------------------------

def test_auto_delete_exchange_goes_with_last_queue_binding(connection: pika.BlockingConnection,
                                                           uid: str) -> None:
    """B-EX-10: an auto-delete exchange stays while it has a binding (and before its first),
    and goes when the last one is removed."""
    channel = connection.channel()
    name = f"{uid}-x"
    channel.exchange_declare(name, "direct", auto_delete=True)
    assert exchange_exists(connection, name)  # never bound: stays
    bind_queues(channel, name, {f"{uid}-a": ["k1", "k2"], f"{uid}-b": ["k1"]})
    channel.queue_unbind(f"{uid}-a", name, "k1")
    channel.queue_unbind(f"{uid}-a", name, "k2")
    assert exchange_exists(connection, name)
    channel.queue_unbind(f"{uid}-b", name, "k1")
    assert not exchange_exists(connection, name)


@pytest.mark.parametrize("how", ["queue_deleted", "owner_connection_closed"])
def test_auto_delete_exchange_goes_when_bound_queue_goes(connection: pika.BlockingConnection,
                                                         mq_url: str, uid: str, how: str) -> None:
    """B-EX-10: a binding removed because its queue went (deleted, or exclusive and its
    connection closed) also auto-deletes the exchange."""
    name = f"{uid}-x"
    other = pika.BlockingConnection(pika.URLParameters(mq_url))
    owner = other.channel()
    owner.exchange_declare(name, "fanout", auto_delete=True)
    owner.queue_declare(f"{uid}-q", exclusive=True)
    owner.queue_bind(f"{uid}-q", name)
    if how == "queue_deleted":
        owner.queue_delete(f"{uid}-q")
    other.close()
    assert not exchange_exists(connection, name)


def test_auto_delete_exchange_goes_when_destination_exchange_goes(
        connection: pika.BlockingConnection, uid: str) -> None:
    """B-EX-10: bindings to exchanges count too: the auto-delete source goes when its last
    destination exchange is deleted; an auto-delete exchange that is only a destination
    stays when that binding goes."""
    channel = connection.channel()
    channel.exchange_declare(f"{uid}-src", "fanout", auto_delete=True)
    channel.exchange_declare(f"{uid}-dst", "fanout", auto_delete=True)
    channel.exchange_bind(f"{uid}-dst", f"{uid}-src")
    channel.exchange_unbind(f"{uid}-dst", f"{uid}-src")
    assert not exchange_exists(connection, f"{uid}-src")
    assert exchange_exists(connection, f"{uid}-dst")
    channel.exchange_declare(f"{uid}-src", "fanout", auto_delete=True)
    channel.exchange_bind(f"{uid}-dst", f"{uid}-src")
    channel.exchange_delete(f"{uid}-dst")
    assert not exchange_exists(connection, f"{uid}-src")


def test_internal_exchange_refuses_publish(channel: BlockingChannel, mq_url: str,
                                          uid: str) -> None:
    """B-EX-10: publishing to an internal exchange is 403 ACCESS_REFUSED (published with
    py-amqp, whose exchange.declare can't set internal, so pika declares it)."""
    channel.exchange_declare(f"{uid}-int", "fanout", internal=True)
    conn = amqp.Connection(amqp_host(mq_url), userid="guest", password="guest")
    conn.connect()
    try:
        publisher = conn.channel()
        publisher.basic_publish(amqp.Message(b"no"), exchange=f"{uid}-int", routing_key="")
        with pytest.raises(amqp.exceptions.AccessRefused) as info:
            publisher.queue_declare("", exclusive=True)  # a round trip to see the close
        assert info.value.reply_code == 403
        assert info.value.reply_text == (f"ACCESS_REFUSED - cannot publish to internal exchange "
                                         f"'{uid}-int' in vhost '/'")
    finally:
        conn.close()
    channel.exchange_delete(f"{uid}-int")


def test_internal_exchange_routes_what_reaches_it_from_exchanges(channel: BlockingChannel,
                                                                 uid: str) -> None:
    """B-EX-10: an internal exchange still routes messages that come through an
    exchange-to-exchange binding."""
    channel.exchange_declare(f"{uid}-pub", "fanout", auto_delete=True)
    channel.exchange_declare(f"{uid}-int", "direct", auto_delete=True, internal=True)
    channel.exchange_bind(f"{uid}-int", f"{uid}-pub")
    bind_queues(channel, f"{uid}-int", {f"{uid}-q": ["k"]})
    channel.basic_publish(f"{uid}-pub", "k", b"via public")
    assert drain(channel, f"{uid}-q") == [b"via public"]
