"""Direct reply-to (B-CON-12), end to end with pika: a requester consumes the pseudo-queue
`amq.rabbitmq.reply-to` in no-ack mode and publishes requests with reply_to set to it; a
server on another connection replies to the address it received. Texts are RabbitMQ 3.10's.
Run against RabbitMQ too: MQ_TEST_URL=amqp://guest:guest@127.0.0.1:5672/ ."""
from __future__ import annotations

from typing import Any, Iterator

import pika
import pytest

from amqputil import settle, wait_for
from queuetest import Scratch, scratch

__all__ = ["scratch"]

REPLY_TO = "amq.rabbitmq.reply-to"


class Requester:
    """A connection consuming its direct reply-to address; records the replies."""

    def __init__(self, url: str) -> None:
        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = self.connection.channel()
        self.replies: list[tuple[Any, pika.BasicProperties, bytes]] = []
        self.consumer_tag = self.channel.basic_consume(
            REPLY_TO, lambda ch, m, p, b: self.replies.append((m, p, b)), auto_ack=True)

    def request(self, queue: str, body: bytes, correlation_id: str) -> None:
        self.channel.basic_publish("", queue, body, pika.BasicProperties(
            reply_to=REPLY_TO, correlation_id=correlation_id))


class Server:
    """Another connection consuming the request queue; records (reply_to, correlation_id,
    body) of each request."""

    def __init__(self, url: str, queue: str) -> None:
        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = self.connection.channel()
        self.requests: list[tuple[str, str, bytes]] = []
        self.channel.basic_consume(
            queue, lambda ch, m, p, b: self.requests.append((p.reply_to, p.correlation_id, b)),
            auto_ack=True)

    def reply(self, reply_to: str, correlation_id: str, body: bytes, **publish: Any) -> None:
        self.channel.basic_publish("", reply_to, body,
                                   pika.BasicProperties(correlation_id=correlation_id),
                                   **publish)


@pytest.fixture
def rpc(mq_url: str, scratch: Scratch) -> Iterator[tuple[Requester, Server]]:
    requester = Requester(mq_url)
    server = Server(mq_url, scratch.queue("requests"))
    yield requester, server
    for conn in (requester.connection, server.connection):
        if conn.is_open:
            conn.close()


def test_request_reply_roundtrip(rpc, scratch) -> None:
    """B-CON-12: the server sees a generated reply address (amq.rabbitmq.reply-to.…), not the
    bare name; its reply, published to the default exchange under that address, reaches the
    requester's consumer with the same correlation id and body."""
    requester, server = rpc
    requester.request(f"{scratch.uid}-requests", b"ping", "corr-1")
    wait_for(server.connection, lambda: server.requests)
    [(reply_to, correlation_id, body)] = server.requests
    assert reply_to.startswith(REPLY_TO + ".") and len(reply_to) > len(REPLY_TO) + 1
    assert (correlation_id, body) == ("corr-1", b"ping")
    server.reply(reply_to, correlation_id, b"pong")
    wait_for(requester.connection, lambda: requester.replies)
    [(method, props, body)] = requester.replies
    assert (body, props.correlation_id) == (b"pong", "corr-1")
    assert (method.consumer_tag, method.exchange, method.routing_key, method.redelivered) == (
        requester.consumer_tag, "", reply_to, False)


def test_replies_matched_by_correlation_id(rpc, scratch) -> None:
    """B-CON-12: many requests in flight on one reply address; the server answers them in
    reverse order and each reply carries its request's correlation id."""
    requester, server = rpc
    for i in range(20):
        requester.request(f"{scratch.uid}-requests", f"q{i}".encode(), f"c{i}")
    wait_for(server.connection, lambda: len(server.requests) == 20)
    assert len({reply_to for reply_to, _, _ in server.requests}) == 1
    for reply_to, correlation_id, body in reversed(server.requests):
        server.reply(reply_to, correlation_id, body.replace(b"q", b"a"))
    wait_for(requester.connection, lambda: len(requester.replies) == 20)
    answers = {props.correlation_id: body for _, props, body in requester.replies}
    assert answers == {f"c{i}": f"a{i}".encode() for i in range(20)}
    assert [props.correlation_id for _, props, _ in requester.replies] == \
        [f"c{i}" for i in reversed(range(20))]


def test_consume_with_acks_is_406(connection) -> None:
    """B-CON-12: consuming the reply pseudo-queue with no_ack=false is 406."""
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        connection.channel().basic_consume(REPLY_TO, lambda *a: None, auto_ack=False)
    assert (info.value.reply_code, info.value.reply_text) == (
        406, "PRECONDITION_FAILED - reply consumer cannot acknowledge")


def test_second_reply_consumer_on_channel_is_406(connection) -> None:
    """B-CON-12: a channel has one reply consumer; a second one is 406."""
    channel = connection.channel()
    channel.basic_consume(REPLY_TO, lambda *a: None, auto_ack=True)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        channel.basic_consume(REPLY_TO, lambda *a: None, auto_ack=True)
    assert (info.value.reply_code, info.value.reply_text) == (
        406, "PRECONDITION_FAILED - reply consumer already set")


def publish_with_reply_to(channel: Any) -> None:
    channel.basic_publish("", "no-such-queue", b"request",
                          pika.BasicProperties(reply_to=REPLY_TO, correlation_id="c"))
    channel.basic_qos(prefetch_count=1)  # a round trip, so that a channel.close shows


@pytest.mark.parametrize("setup", ["never consumed", "cancelled", "other channel"])
def test_publish_without_reply_consumer_is_406(connection, setup: str) -> None:
    """B-CON-12: publishing with reply_to=amq.rabbitmq.reply-to on a channel with no reply
    consumer (never, no longer, or only on another channel of the connection) is 406."""
    channel = connection.channel()
    if setup == "cancelled":
        channel.basic_cancel(channel.basic_consume(REPLY_TO, lambda *a: None, auto_ack=True))
    elif setup == "other channel":
        connection.channel().basic_consume(REPLY_TO, lambda *a: None, auto_ack=True)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        publish_with_reply_to(channel)
    assert (info.value.reply_code, info.value.reply_text) == (
        406, "PRECONDITION_FAILED - fast reply consumer does not exist")


def test_transaction_without_reply_consumer_is_406(connection) -> None:
    """B-CON-12: in a transaction the reply address is checked at publish time too."""
    channel = connection.channel()
    channel.tx_select()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        publish_with_reply_to(channel)
    assert (info.value.reply_code, info.value.reply_text) == (
        406, "PRECONDITION_FAILED - fast reply consumer does not exist")


def test_request_in_transaction_gets_reply(rpc, scratch) -> None:
    """B-CON-12: a request published in a transaction carries the generated address once
    committed, and the reply arrives."""
    requester, server = rpc
    requester.channel.tx_select()
    requester.request(f"{scratch.uid}-requests", b"ping", "tx-1")
    requester.channel.tx_commit()
    wait_for(server.connection, lambda: server.requests)
    [(reply_to, correlation_id, _)] = server.requests
    assert reply_to.startswith(REPLY_TO + ".")
    server.reply(reply_to, correlation_id, b"pong")
    wait_for(requester.connection, lambda: requester.replies)
    assert requester.replies[0][1].correlation_id == "tx-1"


def test_reply_after_requester_left_is_unroutable(rpc, scratch) -> None:
    """B-CON-12: once the requester's connection is gone its address routes nowhere: a
    mandatory reply comes back 312 NO_ROUTE; so does a made-up address."""
    requester, server = rpc
    requester.request(f"{scratch.uid}-requests", b"ping", "late")
    wait_for(server.connection, lambda: server.requests)
    requester.connection.close()
    returned: list[tuple[int, str]] = []
    server.channel.add_on_return_callback(
        lambda ch, m, p, b: returned.append((m.reply_code, m.routing_key)))
    reply_to = server.requests[0][0]
    server.reply(reply_to, "late", b"too late", mandatory=True)
    server.reply(REPLY_TO + ".made-up", "x", b"nobody", mandatory=True)
    settle(server.connection)
    assert returned == [(312, reply_to), (312, REPLY_TO + ".made-up")]


def test_declaring_reply_names(rpc, scratch, connection) -> None:
    """B-CON-12: as in RabbitMQ, declaring (passive or not) `amq.rabbitmq.reply-to` answers
    declare-ok with one consumer and no messages, and so does a generated address while its
    consumer lasts; an address nobody holds is 404."""
    requester, server = rpc
    requester.request(f"{scratch.uid}-requests", b"ping", "d")
    wait_for(server.connection, lambda: server.requests)
    reply_to = server.requests[0][0]
    channel = connection.channel()
    for name, passive in ((REPLY_TO, False), (REPLY_TO, True), (reply_to, True)):
        ok = channel.queue_declare(name, passive=passive).method
        assert (ok.queue, ok.message_count, ok.consumer_count) == (name, 0, 1)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        channel.queue_declare(REPLY_TO + ".made-up", passive=True)
    assert (info.value.reply_code, info.value.reply_text) == (
        404, f"NOT_FOUND - no queue '{REPLY_TO}.made-up' in vhost '/'")
