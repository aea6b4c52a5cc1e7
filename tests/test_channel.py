"""Channel lifecycle (B-CHAN): open/close rules checked on exact frames with RawClient,
flow control through pika."""
from __future__ import annotations


import aio_pika
import pika
import pytest
from pamqp import commands as spec

from amqputil import collect, fresh_queue, publish_many, wait_for
from rawamqp import RawClient


def expect_connection_close(raw: RawClient, code: int, text: str,
                            class_method: tuple[int, int]) -> None:
    close = raw.expect("Connection.Close")
    assert close.reply_code == code
    assert close.reply_text.startswith(text), close.reply_text
    assert (close.class_id, close.method_id) == class_method
    raw.send_method(0, spec.Connection.CloseOk())
    assert raw.closed_by_peer()


def client_close(code: int = 200) -> spec.Channel.Close:
    return spec.Channel.Close(reply_code=code, reply_text="bye", class_id=0, method_id=0)


def provoke_channel_error(raw: RawClient, channel: int = 1) -> spec.Channel.Close:
    """Publish to a missing exchange: the server closes the channel with 404."""
    raw.send_method(channel, spec.Basic.Publish(exchange="no-such-exchange", routing_key="k"))
    raw.send_content(channel, b"x")
    close = raw.expect("Channel.Close")
    assert close.reply_code == 404
    return close


def test_open_twice_is_504(raw):
    """B-CHAN-1: channel.open on a channel that is open is 504 CHANNEL_ERROR (connection)."""
    raw.send_method(1, spec.Channel.Open())
    expect_connection_close(raw, 504, "CHANNEL_ERROR - second 'channel.open' seen", (20, 10))


def test_method_on_unopened_channel_is_504(raw):
    """B-CHAN-1: a method on a channel that was never opened is 504 CHANNEL_ERROR."""
    raw.send_method(2, spec.Basic.Qos(prefetch_count=1))
    expect_connection_close(raw, 504, "CHANNEL_ERROR - expected 'channel.open'", (60, 10))


def test_method_on_closed_channel_is_504(raw):
    """B-CHAN-1: after channel.close/close-ok, using the channel again is 504 CHANNEL_ERROR."""
    raw.send_method(1, client_close())
    raw.expect("Channel.CloseOk")
    raw.send_method(1, spec.Queue.Declare(queue="", exclusive=True))
    expect_connection_close(raw, 504, "CHANNEL_ERROR - expected 'channel.open'", (50, 10))


def test_closed_channel_can_be_reopened(raw):
    """B-CHAN-1: a closed channel number may be opened again and works."""
    raw.send_method(1, client_close())
    raw.expect("Channel.CloseOk")
    raw.open_channel(1)
    raw.send_method(1, spec.Queue.Declare(queue="", exclusive=True))
    assert raw.expect("Queue.DeclareOk").queue.startswith("amq.gen-")


def test_server_close_ignores_everything_but_close_ok(raw, uid):
    """B-CHAN-2: after the server's channel.close, methods and content on that channel are
    ignored (no reply, no connection error) until close-ok; then the number is free again."""
    close = provoke_channel_error(raw)
    assert close.reply_text == "NOT_FOUND - no exchange 'no-such-exchange' in vhost '/'"
    assert (close.class_id, close.method_id) == (60, 40)
    raw.send_method(1, spec.Queue.Declare(queue=uid))
    raw.send_method(1, spec.Basic.Qos(prefetch_count=1))
    raw.send_method(1, spec.Basic.Publish(exchange="", routing_key=uid))
    raw.send_content(1, b"ignored")
    # Other channels keep working meanwhile: their answer is the next frame we see.
    raw.open_channel(2)
    raw.send_method(2, spec.Queue.Declare(queue=uid, passive=True))
    _, frame = raw.recv_method()
    assert frame.name == "Channel.Close" and frame.reply_code == 404, frame  # never declared
    raw.send_method(2, spec.Channel.CloseOk())
    raw.send_method(1, spec.Channel.CloseOk())
    raw.open_channel(1)
    raw.send_method(1, spec.Queue.Declare(queue="", exclusive=True))
    assert raw.expect("Queue.DeclareOk").queue.startswith("amq.gen-")


def test_crossing_close_from_both_sides(raw):
    """B-CHAN-2: if the client's channel.close crosses the server's, the server answers it with
    close-ok and still accepts the client's close-ok afterwards (no connection error)."""
    provoke_channel_error(raw)
    raw.send_method(1, client_close())
    raw.expect("Channel.CloseOk")
    raw.send_method(1, spec.Channel.CloseOk())
    raw.open_channel(1)
    raw.send_method(1, spec.Queue.Declare(queue="", exclusive=True))
    raw.expect("Queue.DeclareOk")


def test_pika_channel_error_then_new_channel(connection):
    """B-CHAN-2: with pika, a channel closed by the server leaves the connection usable."""
    ch = connection.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):
        ch.exchange_declare("no-such-exchange", passive=True)
    assert connection.is_open
    ch2 = connection.channel()
    assert ch2.queue_declare("", exclusive=True).method.queue.startswith("amq.gen-")


@pytest.mark.anyio
async def test_aio_pika_channel_error_then_new_channel(mq_url, uid):
    """B-CHAN-2: aio-pika sees the 404 channel.close (ChannelNotFoundEntity) with its text; the
    connection and a new channel keep working."""
    conn = await aio_pika.connect(mq_url)
    async with conn:
        ch = await conn.channel()
        with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity) as info:
            await ch.declare_queue(uid, passive=True)
        assert info.value.args[0] == f"NOT_FOUND - no queue '{uid}' in vhost '/'"
        ch2 = await conn.channel()
        queue = await ch2.declare_queue(uid, exclusive=True)
        assert queue.name == uid


def test_flow_active_true_is_acknowledged(connection, channel, uid):
    """B-CHAN-3 (as RabbitMQ 3.10): channel.flow(active=true) gets flow-ok(true) and
    deliveries go on."""
    queue = fresh_queue(channel, uid)
    assert channel.flow(True) is True
    got = collect(connection, channel, queue, 0, auto_ack=True)
    publish_many(connection.channel(), queue, [b"1", b"2"])
    wait_for(connection, lambda: len(got) == 2)
    assert [body for _, _, body in got] == [b"1", b"2"]


def test_flow_active_false_is_540_as_rabbitmq(raw):
    """B-CHAN-3: where the contract says flow(active=false) is accepted, RabbitMQ 3.10 (which
    the contract says wins) closes the connection with 540 NOT_IMPLEMENTED - active=false,
    naming channel.flow; clients such as amqp091-go's test suite rely on that."""
    raw.send_method(1, spec.Channel.Flow(active=False))
    close = raw.expect("Connection.Close")
    assert (close.reply_code, close.reply_text) == (540, "NOT_IMPLEMENTED - active=false")
    assert (close.class_id, close.method_id) == (20, 20)


def test_channel_number_above_channel_max_opens(raw):
    """B-CONN-8 (as RabbitMQ 3.10, which wins over the contract here): channel_max bounds how
    many channels are open at once, not their numbers; channel 3000 opens under 2047."""
    raw.open_channel(3000)
    raw.send_method(3000, spec.Queue.Declare(queue="", exclusive=True))
    assert raw.expect("Queue.DeclareOk").queue.startswith("amq.gen-")
