"""B-CONN-4 / issue 13 item 6: the frame size limit as RabbitMQ enforces it.

RabbitMQ's reader (deps/rabbit/src/rabbit_reader.erl, handle_input(frame_header, ...)) refuses a
frame when ``PayloadSize > FrameMax - ?EMPTY_FRAME_SIZE + ?FRAME_SIZE_FUDGE`` with both macros 8
(a deliberate allowance for clients that are off by up to 8 bytes): the payload may be up to
frame_max bytes, so the whole frame (7-byte header + payload + frame-end) up to frame_max + 8.
It looks only at the 7-byte header, for every frame type, and before tune-ok
the limit is its initial_frame_max, 4096. Clients built on pamqp send body frames whose payload
is frame_max, so these must work; one byte more is 501 FRAME_ERROR and the connection closes.

End to end against a real broker process, with raw sockets (exact bytes), aiormq and aio-pika.
"""
from __future__ import annotations

import asyncio
import struct

import aio_pika
import pytest
from pamqp import commands as spec
from pamqp import frame as pamqp_frame
from pamqp.header import ContentHeader

from rawamqp import PROTOCOL_HEADER, RawClient

FRAME_METHOD, FRAME_HEADER, FRAME_BODY = 1, 2, 3


def frame(ftype: int, channel: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", ftype, channel, len(payload)) + payload + b"\xce"


def pattern(n: int) -> bytes:
    """n bytes that are not all alike, so that a shifted or dropped chunk shows."""
    return (bytes(range(256)) * (n // 256 + 1))[:n]


def publish_bytes(channel: int, routing_key: str, body: bytes, chunk: int,
                  properties: spec.Basic.Properties | None = None) -> bytes:
    """basic.publish, its content header and body frames of `chunk` payload bytes, as one
    buffer (one sendall, so that the broker sees the whole message at once)."""
    out = pamqp_frame.marshal(spec.Basic.Publish(exchange="", routing_key=routing_key), channel)
    out += pamqp_frame.marshal(ContentHeader(0, len(body), properties or spec.Basic.Properties()),
                               channel)
    for i in range(0, len(body), chunk):
        out += frame(FRAME_BODY, channel, body[i:i + chunk])
    return out


def header_properties_of_payload(size: int, body_size: int) -> spec.Basic.Properties:
    """Properties whose content header frame payload is exactly `size` bytes."""
    def payload_len(pad: int) -> int:
        props = spec.Basic.Properties(headers={"pad": "x" * pad})
        return len(pamqp_frame.marshal(ContentHeader(0, body_size, props), 1)) - 8
    pad = size - payload_len(0)
    props = spec.Basic.Properties(headers={"pad": "x" * pad})
    assert payload_len(pad) == size
    return props


def open_client(port: int, frame_max: int) -> RawClient:
    client = RawClient(port, timeout=10.0)
    client.handshake(frame_max=frame_max)
    client.open_channel(1)
    return client


def declare(client: RawClient, name: str) -> None:
    client.send_method(1, spec.Queue.Declare(queue=name, exclusive=True))
    client.expect("Queue.DeclareOk")


def get_message(client: RawClient, queue: str, frame_max: int) -> tuple[ContentHeader, bytes]:
    """basic.get the next message; checks that every frame the broker sends fits frame_max
    (the broker itself keeps to the strict limit)."""
    client.send_method(1, spec.Basic.Get(queue=queue, no_ack=True))
    client.expect("Basic.GetOk", timeout=10.0)
    ftype, _, payload = client.recv_raw(timeout=10.0)
    assert ftype == FRAME_HEADER
    _, header = pamqp_frame.unmarshal(frame(ftype, 1, payload))[1:]
    body = b""
    while len(body) < header.body_size:
        ftype, channel, payload = client.recv_raw(timeout=10.0)
        assert (ftype, channel) == (FRAME_BODY, 1)
        assert len(payload) + 8 <= frame_max
        body += payload
    return header, body


def expect_frame_error(client: RawClient) -> str:
    close = client.expect("Connection.Close", timeout=10.0)
    assert (close.reply_code, close.class_id, close.method_id) == (501, 0, 0), close
    assert client.closed_by_peer(timeout=5.0)
    return close.reply_text


# ---- accepted: payload up to frame_max ---------------------------------------------------------

@pytest.mark.parametrize("frame_max", [4096, 131072])
@pytest.mark.parametrize("size", ["one frame", "several frames"])
def test_body_frames_with_payload_frame_max_are_accepted(mq_broker, uid, frame_max, size):
    """B-CONN-4 (issue 13 item 6): body frames whose payload is exactly frame_max (whole frame
    frame_max + 8, RabbitMQ's FRAME_SIZE_FUDGE) are accepted, as pamqp-based clients send
    them, and the message arrives intact: a body of exactly frame_max in one frame (the
    reader's assembled publish path) and one of several such frames plus a short last one."""
    client = open_client(mq_broker.port, frame_max)
    declare(client, uid)
    body = pattern(frame_max if size == "one frame" else 3 * frame_max + 17)
    client.send(publish_bytes(1, uid, body, chunk=frame_max,
                              properties=spec.Basic.Properties(message_id=uid)))
    header, got = get_message(client, uid, frame_max)
    assert header.properties.message_id == uid
    assert got == body
    client.close()


def test_content_header_frame_with_payload_frame_max_is_accepted(mq_broker, uid):
    """B-CONN-4 (issue 13 item 6): the limit is the same for every frame type: a content header
    frame of exactly frame_max payload bytes is accepted and its properties arrive whole."""
    frame_max = 4096
    client = open_client(mq_broker.port, frame_max)
    declare(client, uid)
    body = pattern(1000)
    props = header_properties_of_payload(frame_max, len(body))
    client.send(publish_bytes(1, uid, body, chunk=frame_max, properties=props))
    header, got = get_message(client, uid, frame_max)
    assert got == body
    assert header.properties.headers == props.headers
    client.close()


def test_frame_of_4096_payload_before_tune_is_accepted(mq_broker):
    """B-CONN-4 (issue 13 item 6): before tune-ok the limit is RabbitMQ's initial frame_max,
    4096, with the same allowance: a connection.start-ok of exactly 4096 payload bytes goes
    through to connection.tune."""
    def start_ok(pad: int) -> bytes:
        return pamqp_frame.marshal(spec.Connection.StartOk(
            client_properties={"pad": "x" * pad}, mechanism="PLAIN",
            response="\0guest\0guest"), 0)
    pad = 4096 - (len(start_ok(0)) - 8)
    data = start_ok(pad)
    assert len(data) - 8 == 4096
    client = RawClient(mq_broker.port)
    client.send(PROTOCOL_HEADER)
    client.expect("Connection.Start")
    client.send(data)
    client.expect("Connection.Tune")
    client.close()


# ---- refused: one byte more ----------------------------------------------------------------------

@pytest.mark.parametrize("frame_max", [4096, 131072])
@pytest.mark.parametrize("sent", ["whole frame", "header only"])
def test_body_frame_one_byte_past_limit_is_501(mq_broker, uid, frame_max, sent):
    """B-CONN-4 (issue 13 item 6): a body frame with frame_max + 1 payload bytes (whole frame
    frame_max + 9, one byte past RabbitMQ's limit) closes the connection with 501 FRAME_ERROR
    and a text naming both sizes; like RabbitMQ the 7-byte frame header is enough to refuse
    it. Nothing of the message is enqueued, and the broker goes on serving others."""
    client = open_client(mq_broker.port, frame_max)
    client.send_method(1, spec.Queue.Declare(queue=uid))  # not exclusive: outlives the client
    client.expect("Queue.DeclareOk")
    body = pattern(frame_max + 1)
    data = publish_bytes(1, uid, body, chunk=frame_max + 1)
    client.send(data if sent == "whole frame" else data[:len(data) - len(body) - 1])
    text = expect_frame_error(client)
    assert text == (f"FRAME_ERROR - frame payload of {frame_max + 1} bytes exceeds frame_max "
                    f"{frame_max} (frame type 3, channel 1)")
    other = open_client(mq_broker.port, 131072)
    other.send_method(1, spec.Queue.Declare(queue=uid, passive=True))
    assert other.expect("Queue.DeclareOk").message_count == 0
    other.send_method(1, spec.Queue.Delete(queue=uid))
    other.expect("Queue.DeleteOk")
    other.close()


def test_method_frame_one_byte_past_limit_is_501(mq_broker):
    """B-CONN-4 (issue 13 item 6): the limit is on the payload of any frame type: a method
    frame of frame_max + 1 payload bytes is 501 as well."""
    client = open_client(mq_broker.port, 4096)
    client.send(struct.pack(">BHI", FRAME_METHOD, 0, 4097))
    assert expect_frame_error(client) == ("FRAME_ERROR - frame payload of 4097 bytes exceeds "
                                          "frame_max 4096 (frame type 1, channel 0)")


def test_frame_of_4097_payload_before_tune_is_501(mq_broker):
    """B-CONN-4 (issue 13 item 6): before tune-ok one byte past 4096 payload bytes is 501."""
    client = RawClient(mq_broker.port)
    client.send(PROTOCOL_HEADER)
    client.expect("Connection.Start")
    client.send(struct.pack(">BHI", FRAME_METHOD, 0, 4097) + b"\0" * 4097 + b"\xce")
    assert expect_frame_error(client) == ("FRAME_ERROR - frame payload of 4097 bytes exceeds "
                                          "frame_max 4096 (frame type 1, channel 0)")


# ---- pamqp-based clients ------------------------------------------------------------------------

async def _roundtrip(url: str, queue_name: str, body: bytes, chunk: int | None) -> bytes:
    conn = await aio_pika.connect(url)
    async with conn:
        ch = await conn.channel()
        frame_max = conn.transport.connection.connection_tune.frame_max
        assert len(body) > 4 * frame_max
        if chunk is not None:
            # As the clients of issue 13 item 6 do: body frames of frame_max payload bytes.
            underlay = await ch.get_underlay_channel()
            underlay.max_content_size = chunk(frame_max)
        queue = await ch.declare_queue(queue_name, exclusive=True)
        await ch.default_exchange.publish(aio_pika.Message(body), routing_key=queue_name)
        message = await queue.get(timeout=10, no_ack=True)
        assert conn.connected.is_set()
        return message.body


@pytest.mark.anyio
async def test_aio_pika_publishes_a_message_of_several_frame_max(mq_url, uid):
    """B-PUB-4 / B-CONN-4 (issue 13 item 6): aio-pika (aiormq, pamqp) publishes a message of
    several times frame_max as it splits it, and it arrives intact."""
    body = pattern(5 * 131072 + 4321)
    assert await asyncio.wait_for(_roundtrip(mq_url, uid, body, None), 30) == body


@pytest.mark.anyio
async def test_aiormq_body_frames_of_frame_max_payload_arrive_intact(mq_url, uid):
    """B-CONN-4 (issue 13 item 6): aiormq sending body frames of frame_max payload bytes
    (frame_max + 8 on the wire, what RabbitMQ accepts) publishes a message of several times
    frame_max without the 501 "frame size 131080 exceeds frame_max 131072"; it arrives intact."""
    body = pattern(5 * 131072 + 4321)
    got = await asyncio.wait_for(_roundtrip(mq_url, uid, body, lambda fm: fm), 30)
    assert got == body
