"""Stream queues over AMQP 0-9-1 with aio-pika (B-STREAM-1..3, 6): a few of the behaviours of
test_streams.py through an asyncio client, whose channels confirm every publish (so each
message is a chunk of its own in RabbitMQ). Codes and texts are RabbitMQ 3.10's. Run against
RabbitMQ too: MQ_TEST_URL=amqp://guest:guest@127.0.0.1:5672/ (mq_only tests are skipped)."""
from __future__ import annotations

import asyncio
import datetime
import time
from typing import Any, AsyncIterator

import aio_pika
import aiormq
import pytest

from queuetest import mq_only

pytestmark = pytest.mark.anyio

STREAM = {"x-queue-type": "stream"}


def where(queue: str) -> str:
    return f"for queue '{queue}' in vhost '/'"


@pytest.fixture
async def conn(mq_url: str) -> AsyncIterator[aio_pika.abc.AbstractRobustConnection]:
    connection = await aio_pika.connect(mq_url)
    yield connection
    await connection.close()


@pytest.fixture
async def stream(mq_url: str, uid: str) -> AsyncIterator[str]:
    """A durable stream of the test's own, deleted afterwards."""
    connection = await aio_pika.connect(mq_url)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(f"{uid}-s", durable=True, arguments=STREAM)
        yield f"{uid}-s"
        channel = await connection.channel()
        await channel.queue_delete(f"{uid}-s")


async def publish(connection, queue: str, bodies: list[bytes]) -> None:
    channel = await connection.channel()  # publisher confirms: each publish awaits its ack
    for body in bodies:
        await channel.default_exchange.publish(aio_pika.Message(body), queue)
    await channel.close()


async def ignore(message) -> None:
    pass


def numbered(n: int, start: int = 0) -> list[bytes]:
    return [b"m%d" % i for i in range(start, start + n)]


class Consumer:
    def __init__(self) -> None:
        self.messages: list[aio_pika.abc.AbstractIncomingMessage] = []
        self.channel: Any = None
        self.queue: Any = None
        self.tag = ""

    @classmethod
    async def start(cls, connection, queue: str, offset: Any = None, prefetch: int = 100,
                    ack: bool = True, tag: str | None = None, **arguments: Any) -> "Consumer":
        self = cls()
        self.channel = await connection.channel()
        await self.channel.set_qos(prefetch_count=prefetch)
        q = await self.channel.get_queue(queue, ensure=False)
        if offset is not None:
            arguments["x-stream-offset"] = offset

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            self.messages.append(message)
            if ack:
                await message.ack()
        self.queue = q
        self.tag = await q.consume(on_message, arguments=arguments or None, consumer_tag=tag)
        return self

    @property
    def read(self) -> list[tuple[int, bytes]]:
        return [(m.headers["x-stream-offset"], m.body) for m in self.messages]

    async def wait(self, count: int, timeout: float = 10.0, settle: float = 0.2) -> "Consumer":
        deadline = time.monotonic() + timeout
        while len(self.messages) < count:
            assert time.monotonic() < deadline, f"{self.read}: expected {count}"
            await asyncio.sleep(0.02)
        await asyncio.sleep(settle)
        return self


async def test_aio_pika_first_offsets_and_headers(conn, stream) -> None:
    """B-STREAM-1, B-STREAM-2: a durable stream declared with aio-pika; ten confirmed publishes
    read from "first" come in order with `x-stream-offset` 0..9 (integers) and are
    redelivered=false."""
    await publish(conn, stream, numbered(10))
    consumer = await (await Consumer.start(conn, stream, "first")).wait(10)
    assert consumer.read == list(enumerate(numbered(10)))
    assert all(type(m.headers["x-stream-offset"]) is int for m in consumer.messages)
    assert not any(m.redelivered for m in consumer.messages)


async def test_aio_pika_last_numeric_timestamp(conn, stream) -> None:
    """B-STREAM-2: "last" (one message per chunk: the last message), a numeric offset, and a
    timestamp sent by aio-pika as a datetime (an AMQP timestamp) each start where they say."""
    await publish(conn, stream, numbered(3))
    at = int(time.time()) + 1
    while time.time() < at + 0.1:
        await asyncio.sleep(0.05)
    await publish(conn, stream, numbered(3, start=3))
    last = await (await Consumer.start(conn, stream, "last")).wait(1)
    assert last.read == [(5, b"m5")]
    numeric = await (await Consumer.start(conn, stream, 4)).wait(2)
    assert numeric.read == [(4, b"m4"), (5, b"m5")]
    since = datetime.datetime.fromtimestamp(at, tz=datetime.timezone.utc)
    timed = await (await Consumer.start(conn, stream, since)).wait(3)
    assert timed.read == [(3, b"m3"), (4, b"m4"), (5, b"m5")]


async def test_aio_pika_next_and_credit(conn, stream) -> None:
    """B-STREAM-2, B-STREAM-3: a consumer with no offset gets only new messages; with prefetch
    2 and no acks it holds two; each ack brings one more."""
    await publish(conn, stream, numbered(2))
    consumer = await Consumer.start(conn, stream, prefetch=2, ack=False)
    await asyncio.sleep(0.3)
    assert consumer.read == []
    await publish(conn, stream, numbered(4, start=2))
    await consumer.wait(2, settle=0.3)
    assert consumer.read == [(2, b"m2"), (3, b"m3")]
    await consumer.messages[0].ack()
    await consumer.wait(3, settle=0.3)
    assert [o for o, _ in consumer.read] == [2, 3, 4]


async def test_aio_pika_declare_refused(conn, uid) -> None:
    """B-STREAM-1: a non-durable stream is 406 (aio-pika: ChannelPreconditionFailed)."""
    channel = await conn.channel()
    with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed) as info:
        await channel.declare_queue(f"{uid}-s", arguments=STREAM)
    assert info.value.args[0] == \
        f"PRECONDITION_FAILED - invalid property 'non-durable' {where(uid + '-s')}"


async def test_aio_pika_consume_without_prefetch_refused(conn, stream) -> None:
    """B-STREAM-3: consuming a stream without basic.qos is 406."""
    channel = await conn.channel()
    queue = await channel.get_queue(stream, ensure=False)
    with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed) as info:
        await queue.consume(ignore)
    assert info.value.args[0] == \
        f"PRECONDITION_FAILED - consumer prefetch count is not set for 'queue '{stream}' " \
        "in vhost '/''"


async def test_aio_pika_no_ack_closes_connection(mq_url, stream) -> None:
    """B-STREAM-3: a no-ack consumer on a stream closes the connection with 540."""
    connection = await aio_pika.connect(mq_url)
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=10)
        queue = await channel.get_queue(stream, ensure=False)
        with pytest.raises(aiormq.exceptions.ConnectionNotImplemented) as info:
            await queue.consume(ignore, no_ack=True)
            await asyncio.sleep(3)
            await connection.channel()
        assert info.value.args[0] == "NOT_IMPLEMENTED - automatic acknowledgement not " \
            f"supported by stream queues queue '{stream}' in vhost '/'"
    finally:
        await connection.close()


@mq_only
async def test_aio_pika_tracking_resumes(conn, stream, uid) -> None:
    """B-STREAM-6: an aio-pika consumer with a consumer tag and
    `x-stream-automatic-offset-tracking: true` acks 0..2 of 6 and is cancelled; consuming
    again with the same tag resumes at offset 3."""
    await publish(conn, stream, numbered(6))
    tag = f"aio-{uid}"
    consumer = await (await Consumer.start(
        conn, stream, "first", ack=False, tag=tag,
        **{"x-stream-automatic-offset-tracking": True})).wait(6)
    for message in consumer.messages[:3]:
        await message.ack()
    await consumer.channel.set_qos(prefetch_count=100)  # a round trip after the acks
    await consumer.queue.cancel(tag)
    await consumer.channel.close()
    again = await (await Consumer.start(
        conn, stream, "first", ack=False, tag=tag,
        **{"x-stream-automatic-offset-tracking": True})).wait(3)
    assert again.read == [(3, b"m3"), (4, b"m4"), (5, b"m5")]
