"""Queues (B-Q-1..8): naming, declare-ok counts, redeclare rules, exclusive and auto-delete
lifetimes, bind/unbind, purge and delete with consumer cancel notification, end to end through
pika, py-amqp, aio-pika and exact frames (RawClient), with RabbitMQ's reply codes and texts."""
from __future__ import annotations

import struct
from typing import Any, Awaitable, Callable, Iterator

import aio_pika
import anyio
import aiormq
import amqp
import pika
import pytest
from pamqp import commands as spec
from pika.adapters.blocking_connection import BlockingChannel

from amqputil import assert_channel_closed, collect, publish_many, wait_for
from exqutil import amqp_host, drain, eventually, queue_exists
from rawamqp import RawClient


@pytest.fixture
def other_connection(mq_url: str) -> Iterator[pika.BlockingConnection]:
    """A second connection, to use a queue from outside its owner."""
    conn = pika.BlockingConnection(pika.URLParameters(mq_url))
    yield conn
    if conn.is_open:
        conn.close()


def locked_text(queue: str) -> str:
    return (f"RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{queue}' in "
            "vhost '/'. It could be originally declared on another connection or the exclusive "
            "property value does not match that of the original declaration.")


# ---- B-Q-1: names ------------------------------------------------------------------------

def test_empty_name_gets_unique_server_name(channel: BlockingChannel) -> None:
    """B-Q-1: an empty name gets a server-made unique amq.gen-… name, usable at once."""
    first = channel.queue_declare("", exclusive=True).method.queue
    second = channel.queue_declare("", exclusive=True).method.queue
    assert first.startswith("amq.gen-") and second.startswith("amq.gen-")
    assert first != second
    channel.basic_publish("", first, b"to the generated name")
    assert drain(channel, first) == [b"to the generated name"]


@pytest.mark.anyio
async def test_server_named_queue_with_aio_pika(mq_url: str) -> None:
    """B-Q-1: aio-pika's nameless declare gets an amq.gen-… queue that receives messages."""
    connection = await aio_pika.connect(mq_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True)
        assert queue.name.startswith("amq.gen-")
        await channel.default_exchange.publish(aio_pika.Message(b"hi"), routing_key=queue.name)
        message = await queue.get(timeout=5)
        assert message.body == b"hi"
        await message.ack()


def test_amq_prefix_is_refused(channel: BlockingChannel, uid: str) -> None:
    """B-Q-1: a queue name starting with amq. is 403 with RabbitMQ's text."""
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        channel.queue_declare(f"amq.{uid}")
    assert_channel_closed(info, 403, f"ACCESS_REFUSED - queue name 'amq.{uid}' contains "
                                     "reserved prefix 'amq.*'")


def test_name_of_255_bytes_is_fine(channel: BlockingChannel, uid: str) -> None:
    """B-Q-1: 255 bytes, the most a short string holds, is a valid name (UTF-8 counted in
    bytes)."""
    name = (uid + "é" * 200).encode()[:255].decode("utf-8", "ignore")
    name += "x" * (255 - len(name.encode()))
    assert len(name.encode()) == 255
    assert channel.queue_declare(name, exclusive=True).method.queue == name


def test_names_may_be_any_utf8(channel: BlockingChannel, uid: str) -> None:
    """B-Q-1: queue and exchange names are any UTF-8 (spaces, punctuation, accents), echoed
    back unchanged in declare-ok and in the delivery's exchange and routing key."""
    name = f"wé!rd *name$ {uid}"
    channel.exchange_declare(name, "fanout", auto_delete=True)
    assert channel.queue_declare(f"{name}/q", exclusive=True).method.queue == f"{name}/q"
    channel.queue_bind(f"{name}/q", name)
    channel.basic_publish(name, "ké y", b"x")
    method, _, body = channel.basic_get(f"{name}/q", auto_ack=True)
    assert (method.exchange, method.routing_key, body) == (name, "ké y", b"x")


@pytest.mark.parametrize("name_field,what", [
    (bytes([255]) + b"a" * 10, "a name longer than the frame"),
    (bytes([3]) + b"\xff\xfe\xfd", "a name that is not UTF-8"),
])
def test_undecodable_name_is_frame_error(mq_url: str, name_field: bytes, what: str) -> None:
    """B-Q-1: a name a client can't send in a short string (length byte running past the
    frame, bad UTF-8) is a connection error 501 FRAME_ERROR naming queue.declare, as RabbitMQ
    answers it (it says 'cannot decode')."""
    raw = RawClient(pika.URLParameters(mq_url).port)
    try:
        raw.handshake()
        raw.open_channel(1)
        payload = struct.pack(">HHH", 50, 10, 0) + name_field + b"\x00" + struct.pack(">I", 0)
        raw.send(struct.pack(">BHI", 1, 1, len(payload)) + payload + b"\xce")
        close = raw.expect("Connection.Close")
        assert close.reply_code == 501, what
        assert close.reply_text.startswith("FRAME_ERROR - "), close.reply_text
    finally:
        raw.close()


# ---- B-Q-2: declare-ok counts and passive --------------------------------------------------

def test_declare_ok_counts_ready_messages_and_consumers(connection: pika.BlockingConnection,
                                                       uid: str) -> None:
    """B-Q-2: declare-ok carries the ready message count (unacked not included) and the
    consumer count, on a plain and on a passive declare."""
    channel = connection.channel()
    ok = channel.queue_declare(uid).method
    assert (ok.queue, ok.message_count, ok.consumer_count) == (uid, 0, 0)
    publish_many(channel, uid, [b"1", b"2", b"3"])
    channel.basic_qos(prefetch_count=1)
    got = collect(connection, channel, uid, 1)
    assert [body for _, _, body in got] == [b"1"]
    for passive in (True, False):
        ok = connection.channel().queue_declare(uid, passive=passive).method
        assert (ok.message_count, ok.consumer_count) == (2, 1)
    channel.queue_delete(uid)


def test_passive_declare_of_missing_queue_is_404(channel: BlockingChannel, uid: str) -> None:
    """B-Q-2: passive=true on a missing queue is 404 with RabbitMQ's text."""
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        channel.queue_declare(f"{uid}-missing", passive=True)
    assert_channel_closed(info, 404, f"NOT_FOUND - no queue '{uid}-missing' in vhost '/'")


# ---- B-Q-3: redeclaration ----------------------------------------------------------------

@pytest.mark.parametrize("change,text", [
    ({"durable": True}, "inequivalent arg 'durable' for queue '{q}' in vhost '/': received "
                        "'true' but current is 'false'"),
    ({"auto_delete": True}, "inequivalent arg 'auto_delete' for queue '{q}' in vhost '/': "
                            "received 'true' but current is 'false'"),
    ({"arguments": {"x-max-length": 6}}, "inequivalent arg 'x-max-length' for queue '{q}' in "
                                         "vhost '/': received '6' but current is '5'"),
    ({"arguments": {}}, "inequivalent arg 'x-max-length' for queue '{q}' in vhost '/': "
                        "received none but current is the value '5' of type 'signedint'"),
    ({"arguments": {"x-max-length": "5"}}, "inequivalent arg 'x-max-length' for queue '{q}' in "
                                           "vhost '/': received '5' but current is '5'"),
    ({"arguments": {"x-max-length": 5, "x-message-ttl": 1000}},
     "inequivalent arg 'x-message-ttl' for queue '{q}' in vhost '/': received the value "
     "'1000' of type 'signedint' but current is none"),
])
def test_inequivalent_redeclare_is_406(connection: pika.BlockingConnection, uid: str,
                                       change: dict, text: str) -> None:
    """B-Q-3: redeclaring with another durable / auto_delete / compared argument is 406 with
    RabbitMQ's wording; the queue keeps its messages."""
    channel = connection.channel()
    channel.queue_declare(uid, arguments={"x-max-length": 5})
    channel.basic_publish("", uid, b"kept")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        channel.queue_declare(uid, **{"arguments": {"x-max-length": 5}, **change})
    assert_channel_closed(info, 406, "PRECONDITION_FAILED - " + text.format(q=uid))
    channel = connection.channel()
    assert drain(channel, uid) == [b"kept"]
    channel.queue_delete(uid)


def test_same_redeclare_is_a_noop(channel: BlockingChannel, uid: str) -> None:
    """B-Q-3: the same declaration again (arguments RabbitMQ doesn't compare may differ) is
    ok and reports the current counts."""
    channel.confirm_delivery()  # the message is in the queue before we redeclare
    channel.queue_declare(uid, arguments={"x-max-length": 5})
    channel.basic_publish("", uid, b"m")
    ok = channel.queue_declare(uid, arguments={"x-max-length": 5, "x-custom": "anything"}).method
    assert (ok.queue, ok.message_count, ok.consumer_count) == (uid, 1, 0)
    channel.queue_delete(uid)


def test_exclusive_flag_mismatch_is_405(connection: pika.BlockingConnection, uid: str) -> None:
    """B-Q-3, B-Q-4: redeclaring with another exclusive flag is 405 RESOURCE_LOCKED (RabbitMQ
    answers 405 here, not 406), whichever way round, even on the owning connection."""
    channel = connection.channel()
    channel.queue_declare(f"{uid}-shared")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        channel.queue_declare(f"{uid}-shared", exclusive=True)
    assert_channel_closed(info, 405, locked_text(f"{uid}-shared"))
    channel = connection.channel()
    channel.queue_declare(f"{uid}-mine", exclusive=True)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        channel.queue_declare(f"{uid}-mine")
    assert_channel_closed(info, 405, locked_text(f"{uid}-mine"))
    connection.channel().queue_delete(f"{uid}-shared")


# ---- B-Q-4: exclusive queues -------------------------------------------------------------

@pytest.mark.parametrize("use", ["declare_passive", "declare", "bind", "purge", "delete", "get",
                                 "consume"])
def test_exclusive_queue_is_locked_for_other_connections(
        connection: pika.BlockingConnection, other_connection: pika.BlockingConnection,
        uid: str, use: str) -> None:
    """B-Q-4: any use of an exclusive queue from another connection is 405 RESOURCE_LOCKED;
    the owner keeps using it."""
    owner = connection.channel()
    owner.queue_declare(uid, exclusive=True)
    other = other_connection.channel()
    uses: dict[str, Callable[[], Any]] = {
        "declare_passive": lambda: other.queue_declare(uid, passive=True),
        "declare": lambda: other.queue_declare(uid, exclusive=True),
        "bind": lambda: other.queue_bind(uid, "amq.direct", "k"),
        "purge": lambda: other.queue_purge(uid),
        "delete": lambda: other.queue_delete(uid),
        "get": lambda: other.basic_get(uid),
        "consume": lambda: other.basic_consume(uid, lambda *args: None),
    }
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        uses[use]()
    assert_channel_closed(info, 405, locked_text(uid))
    owner.basic_publish("", uid, b"still mine")
    assert drain(owner, uid) == [b"still mine"]


def test_unbind_of_absent_binding_on_exclusive_queue_is_ok(
        connection: pika.BlockingConnection, other_connection: pika.BlockingConnection,
        uid: str) -> None:
    """B-Q-4, B-Q-6: unbind is idempotent in RabbitMQ: with no such binding another connection
    gets unbind-ok even for an exclusive queue; an existing binding is 405 for it."""
    owner = connection.channel()
    owner.queue_declare(uid, exclusive=True)
    owner.queue_bind(uid, "amq.direct", uid)
    other = other_connection.channel()
    other.queue_unbind(uid, "amq.direct", "not-bound")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        other.queue_unbind(uid, "amq.direct", uid)
    assert_channel_closed(info, 405, locked_text(uid))
    owner.basic_publish("amq.direct", uid, b"still bound")
    assert drain(owner, uid) == [b"still bound"]


def test_others_may_publish_into_exclusive_queue(connection: pika.BlockingConnection,
                                                 other_connection: pika.BlockingConnection,
                                                 uid: str) -> None:
    """B-Q-4: exclusivity is about using the queue, not routing to it: another connection's
    publish reaches it, as in RabbitMQ."""
    owner = connection.channel()
    owner.queue_declare(uid, exclusive=True)
    publisher = other_connection.channel()
    publisher.confirm_delivery()
    publisher.basic_publish("", uid, b"from outside", mandatory=True)
    assert drain(owner, uid) == [b"from outside"]


@pytest.mark.parametrize("how", ["close", "socket_drop"])
def test_exclusive_queue_goes_with_its_connection(connection: pika.BlockingConnection,
                                                  mq_url: str, uid: str, how: str) -> None:
    """B-Q-4: an exclusive queue is deleted when its connection closes, or its socket just
    drops; then anyone may declare the name again."""
    if how == "close":
        owner = pika.BlockingConnection(pika.URLParameters(mq_url))
        owner.channel().queue_declare(uid, exclusive=True)
        owner.close()
    else:
        raw = RawClient(pika.URLParameters(mq_url).port)
        raw.handshake()
        raw.open_channel(1)
        raw.send_method(1, spec.Queue.Declare(queue=uid, exclusive=True))
        raw.expect("Queue.DeclareOk")
        raw.close()  # no connection.close: the broker just sees EOF
    eventually(lambda: not queue_exists(connection, uid))
    connection.channel().queue_declare(uid, exclusive=True)


@pytest.mark.anyio
async def test_exclusive_queue_with_aio_pika(mq_url: str, uid: str) -> None:
    """B-Q-4: through aio-pika: another connection's passive declare is 405; after the owner
    closes, the queue is gone (404)."""
    owner = await aio_pika.connect(mq_url)
    other = await aio_pika.connect(mq_url)
    async with other:
        owner_channel = await owner.channel()
        await owner_channel.declare_queue(uid, exclusive=True)
        with pytest.raises(aiormq.exceptions.ChannelLockedResource) as info:
            await (await other.channel()).declare_queue(uid, passive=True)
        assert locked_text(uid) in str(info.value)
        await owner.close()

        async def gone() -> bool:
            try:
                await (await other.channel()).declare_queue(uid, passive=True)
            except aio_pika.exceptions.ChannelNotFoundEntity:
                return True
            return False

        assert await _eventually_async(gone)


# ---- B-Q-5: auto-delete queues -----------------------------------------------------------

def test_auto_delete_queue_lives_until_its_first_consumer(connection: pika.BlockingConnection,
                                                         uid: str) -> None:
    """B-Q-5: an auto-delete queue that never had a consumer stays, even through basic.get."""
    channel = connection.channel()
    channel.queue_declare(uid, auto_delete=True)
    channel.basic_publish("", uid, b"m")
    assert drain(channel, uid) == [b"m"]
    assert queue_exists(connection, uid)
    channel.queue_delete(uid)


def test_auto_delete_queue_goes_with_last_consumer(connection: pika.BlockingConnection,
                                                  uid: str) -> None:
    """B-Q-5: an auto-delete queue stays while one consumer is left and goes when the last
    is cancelled."""
    channel = connection.channel()
    channel.queue_declare(uid, auto_delete=True)
    first = channel.basic_consume(uid, lambda *args: None)
    second = channel.basic_consume(uid, lambda *args: None)
    channel.basic_cancel(first)
    assert queue_exists(connection, uid)
    channel.basic_cancel(second)
    eventually(lambda: not queue_exists(connection, uid))


def test_auto_delete_queue_goes_when_consumer_connection_closes(
        connection: pika.BlockingConnection, mq_url: str, uid: str) -> None:
    """B-Q-5: a consumer cancelled because its connection closed counts as the last consumer
    going (py-amqp consumer)."""
    connection.channel().queue_declare(uid, auto_delete=True)
    consumer = amqp.Connection(amqp_host(mq_url), userid="guest", password="guest")
    consumer.connect()
    consumer.channel().basic_consume(uid, callback=lambda message: None)
    assert queue_exists(connection, uid)
    consumer.close()
    eventually(lambda: not queue_exists(connection, uid))


# ---- B-Q-6: bind / unbind ----------------------------------------------------------------

@pytest.mark.parametrize("queue_exists_,exchange_exists_,missing", [
    (True, False, "exchange '{x}'"),
    (False, True, "queue '{q}'"),
    (False, False, "exchange '{x}'"),
])
def test_bind_to_missing_exchange_or_queue_is_404(channel: BlockingChannel, uid: str,
                                                  queue_exists_: bool, exchange_exists_: bool,
                                                  missing: str) -> None:
    """B-Q-6: queue.bind with a missing exchange or queue is 404 naming it (the exchange is
    looked up first, as in RabbitMQ)."""
    queue, exchange = f"{uid}-q", f"{uid}-x"
    if queue_exists_:
        channel.queue_declare(queue, exclusive=True)
    if exchange_exists_:
        channel.exchange_declare(exchange, "direct", auto_delete=True)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        channel.queue_bind(queue, exchange, "k")
    assert_channel_closed(info, 404, f"NOT_FOUND - no {missing.format(x=exchange, q=queue)} "
                                     "in vhost '/'")
    channel.connection.channel().exchange_delete(exchange)


def test_unbind_that_isnt_there_is_ok(channel: BlockingChannel, uid: str) -> None:
    """B-Q-6: unbinding a binding that doesn't exist is unbind-ok, even when the queue or the
    exchange is missing too (RabbitMQ's unbind is idempotent); existing bindings stay."""
    channel.queue_declare(uid, exclusive=True)
    channel.queue_bind(uid, "amq.direct", "k")
    for queue, exchange, key in [(uid, "amq.direct", "other"), (uid, f"{uid}-missing", "k"),
                                 (f"{uid}-missing", "amq.direct", "k")]:
        frame = channel.queue_unbind(queue, exchange, key)
        assert isinstance(frame.method, pika.spec.Queue.UnbindOk)
    channel.basic_publish("amq.direct", "k", b"bound")
    assert drain(channel, uid) == [b"bound"]


def test_binding_twice_is_one_binding(channel: BlockingChannel, uid: str) -> None:
    """B-Q-6: the same binding made twice is one: one copy, and one unbind removes it."""
    channel.queue_declare(uid, exclusive=True)
    channel.queue_bind(uid, "amq.direct", "k")
    channel.queue_bind(uid, "amq.direct", "k")
    channel.basic_publish("amq.direct", "k", b"once")
    assert drain(channel, uid) == [b"once"]
    channel.queue_unbind(uid, "amq.direct", "k")
    channel.basic_publish("amq.direct", "k", b"unbound")
    assert drain(channel, uid) == []


# ---- B-Q-7: purge ------------------------------------------------------------------------

def test_purge_counts_ready_messages_and_keeps_unacked(connection: pika.BlockingConnection,
                                                      uid: str) -> None:
    """B-Q-7: purge-ok carries the number of ready messages removed; messages delivered but
    not acked stay and come back (redelivered) when their channel closes."""
    channel = connection.channel()
    channel.queue_declare(uid)
    publish_many(channel, uid, [b"1", b"2", b"3", b"4", b"5"])
    holder = connection.channel()
    held = [holder.basic_get(uid)[2] for _ in range(2)]
    assert held == [b"1", b"2"]
    assert channel.queue_purge(uid).method.message_count == 3
    assert channel.queue_purge(uid).method.message_count == 0
    holder.close()
    back = [channel.basic_get(uid, auto_ack=True) for _ in range(3)]
    assert [(m.redelivered, body) for m, _, body in back[:2]] == [(True, b"1"), (True, b"2")]
    assert back[2][0] is None
    channel.queue_delete(uid)


def test_purge_with_py_amqp(mq_url: str, uid: str) -> None:
    """B-Q-7: py-amqp's queue_purge returns the count; a purge of a missing queue is 404."""
    conn = amqp.Connection(amqp_host(mq_url), userid="guest", password="guest")
    conn.connect()
    try:
        channel = conn.channel()
        channel.queue_declare(uid, auto_delete=False)
        for i in range(4):
            channel.basic_publish(amqp.Message(b"%d" % i), exchange="", routing_key=uid)
        assert channel.queue_purge(uid) == 4
        channel.queue_delete(uid)
        with pytest.raises(amqp.exceptions.NotFound) as info:
            channel.queue_purge(f"{uid}-missing")
        assert info.value.reply_text == f"NOT_FOUND - no queue '{uid}-missing' in vhost '/'"
    finally:
        conn.close()


# ---- B-Q-8: delete -----------------------------------------------------------------------

def test_delete_if_unused_with_consumer_is_406(connection: pika.BlockingConnection,
                                              uid: str) -> None:
    """B-Q-8: delete(if_unused) of a queue with a consumer is 406 and the queue stays."""
    channel = connection.channel()
    channel.queue_declare(uid, exclusive=True)
    channel.basic_consume(uid, lambda *args: None)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        connection.channel().queue_delete(uid, if_unused=True)
    assert_channel_closed(info, 406, f"PRECONDITION_FAILED - queue '{uid}' in vhost '/' in use")
    assert queue_exists(connection, uid)


def test_delete_if_empty_with_messages_is_406(connection: pika.BlockingConnection,
                                             uid: str) -> None:
    """B-Q-8: delete(if_empty) of a queue with ready messages is 406; the message stays."""
    channel = connection.channel()
    channel.queue_declare(uid, exclusive=True)
    channel.basic_publish("", uid, b"not empty")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        channel.queue_delete(uid, if_empty=True)
    assert_channel_closed(info, 406, f"PRECONDITION_FAILED - queue '{uid}' in vhost '/' not "
                                     "empty")
    assert drain(connection.channel(), uid) == [b"not empty"]


def test_delete_conditions_met_and_delete_ok_count(channel: BlockingChannel, uid: str) -> None:
    """B-Q-8: if_unused/if_empty that hold delete the queue; delete-ok carries the number of
    ready messages deleted; deleting a missing queue is ok with 0."""
    channel.queue_declare(f"{uid}-empty")
    assert channel.queue_delete(f"{uid}-empty", if_unused=True,
                                if_empty=True).method.message_count == 0
    channel.queue_declare(f"{uid}-full")
    publish_many(channel, f"{uid}-full", [b"a", b"b", b"c"])
    assert channel.queue_delete(f"{uid}-full", if_unused=True).method.message_count == 3
    assert channel.queue_delete(f"{uid}-full").method.message_count == 0
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        channel.queue_declare(f"{uid}-full", passive=True)
    assert info.value.reply_code == 404


def test_delete_count_leaves_out_unacked_which_may_still_be_acked(channel: BlockingChannel,
                                                                  uid: str) -> None:
    """B-Q-8: delete-ok counts the ready messages only; a message delivered before the
    delete can still be acked afterwards without error."""
    channel.queue_declare(uid)
    publish_many(channel, uid, [b"1", b"2", b"3"])
    method, _, body = channel.basic_get(uid)
    assert body == b"1"
    assert channel.queue_delete(uid).method.message_count == 2
    channel.basic_ack(method.delivery_tag)
    assert channel.queue_declare("", exclusive=True).method.queue  # channel still open


def test_consumers_of_deleted_queue_get_basic_cancel(connection: pika.BlockingConnection,
                                                    other_connection: pika.BlockingConnection,
                                                    uid: str) -> None:
    """B-Q-8: a consumer of a queue deleted by someone else gets basic.cancel (pika announces
    consumer_cancel_notify) and is gone from its channel."""
    channel = connection.channel()
    channel.queue_declare(uid)
    cancelled: list[str] = []
    channel.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
    tag = channel.basic_consume(uid, lambda *args: None)
    assert other_connection.channel().queue_delete(uid).method.message_count == 0
    wait_for(connection, lambda: cancelled == [tag])
    assert tag not in channel.consumer_tags
    channel.queue_declare(uid, passive=False)  # the channel is still open and usable
    channel.queue_delete(uid)


@pytest.mark.parametrize("notify", [True, False])
def test_basic_cancel_only_for_clients_that_announce_it(channel: BlockingChannel, mq_url: str,
                                                        uid: str, notify: bool) -> None:
    """B-Q-8: basic.cancel (exact frame) goes only to a client whose capabilities carry
    consumer_cancel_notify; others just lose the consumer, their channel stays open."""
    channel.queue_declare(uid)
    raw = RawClient(pika.URLParameters(mq_url).port)
    try:
        raw.handshake(capabilities={"consumer_cancel_notify": notify})
        raw.open_channel(1)
        raw.send_method(1, spec.Basic.Consume(queue=uid, consumer_tag="ctag-1"))
        raw.expect("Basic.ConsumeOk")
        channel.queue_delete(uid)
        if notify:
            cancel = raw.expect("Basic.Cancel")
            assert cancel.consumer_tag == "ctag-1"
        raw.send_method(1, spec.Basic.Qos(prefetch_count=1))  # the channel still answers
        raw.expect("Basic.QosOk")
    finally:
        raw.close()


def test_basic_cancel_with_py_amqp(mq_url: str, uid: str) -> None:
    """B-Q-8: py-amqp's on_cancel hears basic.cancel when the queue is deleted."""
    conn = amqp.Connection(amqp_host(mq_url), userid="guest", password="guest")
    conn.connect()
    try:
        channel = conn.channel()
        channel.queue_declare(uid, auto_delete=False)
        cancelled: list[str] = []
        tag = channel.basic_consume(uid, callback=lambda message: None,
                                    on_cancel=cancelled.append)
        conn.channel().queue_delete(uid)
        while not cancelled:  # it may already have come while waiting for delete-ok
            conn.drain_events(timeout=5)
        assert cancelled == [tag]
    finally:
        conn.close()


# ---- helpers -----------------------------------------------------------------------------

async def _eventually_async(cond: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> bool:
    """Poll an async condition until true (RabbitMQ deletes exclusive queues asynchronously)."""
    with anyio.move_on_after(timeout):
        while not await cond():
            await anyio.sleep(0.05)
        return True
    return False
