"""A request/reply (RPC) scenario over direct reply-to with aio-pika (B-CON-12): a worker
serves a request queue on its own connection; clients on other connections send requests
with reply_to=amq.rabbitmq.reply-to and a correlation id, and match each reply to its
request. Run against RabbitMQ too: MQ_TEST_URL=amqp://guest:guest@127.0.0.1:5672/ ."""
from __future__ import annotations

import asyncio
import uuid
from typing import AsyncIterator

import aio_pika
import pytest

REPLY_TO = "amq.rabbitmq.reply-to"
TIMEOUT = 20.0  # generous: a loaded 2-core machine


class RpcClient:
    """Requests with correlation ids; a future per request, resolved by its reply."""

    def __init__(self, connection: aio_pika.abc.AbstractRobustConnection) -> None:
        self.connection = connection
        self.pending: dict[str, asyncio.Future] = {}
        self.strays: list[aio_pika.abc.AbstractIncomingMessage] = []

    async def start(self) -> None:
        self.channel = await self.connection.channel()
        # The pseudo-queue answers a passive declare as RabbitMQ does; consume it no-ack.
        replies = await self.channel.declare_queue(REPLY_TO, passive=True)
        await replies.consume(self._on_reply, no_ack=True)

    async def _on_reply(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        future = self.pending.pop(message.correlation_id or "", None)
        if future is None:
            self.strays.append(message)
        else:
            future.set_result(message)

    async def call(self, queue: str, body: bytes) -> aio_pika.abc.AbstractIncomingMessage:
        correlation_id = uuid.uuid4().hex
        future = asyncio.get_running_loop().create_future()
        self.pending[correlation_id] = future
        await self.channel.default_exchange.publish(
            aio_pika.Message(body, correlation_id=correlation_id, reply_to=REPLY_TO),
            routing_key=queue)
        reply = await asyncio.wait_for(future, TIMEOUT)
        assert reply.correlation_id == correlation_id
        return reply


async def serve(connection: aio_pika.abc.AbstractRobustConnection, queue_name: str,
                seen_reply_to: set[str]) -> aio_pika.abc.AbstractQueue:
    """A worker: replies body.upper() to each request's reply_to, same correlation id."""
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=10)
    queue = await channel.declare_queue(queue_name, auto_delete=True)

    async def on_request(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        async with message.process():
            seen_reply_to.add(message.reply_to)
            await channel.default_exchange.publish(
                aio_pika.Message(message.body.upper(), correlation_id=message.correlation_id),
                routing_key=message.reply_to)

    await queue.consume(on_request)
    return queue


@pytest.fixture
async def connections(mq_url: str) -> AsyncIterator[list[aio_pika.abc.AbstractConnection]]:
    conns = [await aio_pika.connect(mq_url) for _ in range(3)]
    yield conns
    for conn in conns:
        await conn.close()


@pytest.mark.anyio
async def test_rpc_over_direct_reply_to(connections, uid) -> None:
    """B-CON-12: two clients on their own connections each send 50 concurrent requests to one
    worker; every call gets the reply to its own request (matched by correlation id), no
    reply goes astray, and the worker saw one generated reply address per client."""
    worker_conn, *client_conns = connections
    queue_name = f"rpc-{uid}"
    seen_reply_to: set[str] = set()
    await serve(worker_conn, queue_name, seen_reply_to)
    clients = [RpcClient(conn) for conn in client_conns]
    for client in clients:
        await client.start()

    async def calls(client: RpcClient, prefix: str) -> list[bytes]:
        replies = await asyncio.gather(*(client.call(queue_name, f"{prefix}-{i}".encode())
                                         for i in range(50)))
        return [reply.body for reply in replies]

    results = await asyncio.gather(calls(clients[0], "a"), calls(clients[1], "b"))
    assert results == [[f"A-{i}".encode() for i in range(50)],
                       [f"B-{i}".encode() for i in range(50)]]
    assert [client.strays for client in clients] == [[], []]
    assert [client.pending for client in clients] == [{}, {}]
    assert len(seen_reply_to) == 2
    assert all(address.startswith(REPLY_TO + ".") for address in seen_reply_to)


@pytest.mark.anyio
async def test_rpc_client_reconnects_with_new_address(connections, mq_url, uid) -> None:
    """B-CON-12: a client that closes and comes back gets a new reply address and works as
    before; a late reply to the old address is dropped, never delivered to the new one."""
    worker_conn, client_conn, _ = connections
    queue_name = f"rpc-{uid}"
    seen_reply_to: set[str] = set()
    await serve(worker_conn, queue_name, seen_reply_to)
    first = RpcClient(client_conn)
    await first.start()
    assert (await first.call(queue_name, b"one")).body == b"ONE"
    [old_address] = seen_reply_to
    await client_conn.close()

    again = await aio_pika.connect(mq_url)
    try:
        second = RpcClient(again)
        await second.start()
        worker_channel = await worker_conn.channel()
        await worker_channel.default_exchange.publish(
            aio_pika.Message(b"late", correlation_id="old"), routing_key=old_address)
        assert (await second.call(queue_name, b"two")).body == b"TWO"
        assert len(seen_reply_to - {old_address}) == 1
        await asyncio.sleep(0.2)
        assert second.strays == []
    finally:
        await again.close()
