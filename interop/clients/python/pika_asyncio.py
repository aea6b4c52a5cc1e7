"""pika's AsyncioConnection adapter: pika's callback API, turned into awaits here."""
from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable

import pika
from pika import spec
from pika.adapters.asyncio_connection import AsyncioConnection

from .common import (ClientDriver, ConsumerLog, Step, declare_ok, deadline, exchange_flags, main,
                     queue_flags, sent, settle)
from .pika_blocking import on_channel_events, parameters, properties, received


class Chan:
    """A pika channel plus the futures waiting on it, failed together when the broker closes it."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.pending: set[asyncio.Future] = set()
        self.closed: BaseException | None = None
        self.published = 0
        self.acked: set[int] = set()  # publish sequence numbers the broker confirmed
        self.nacked: set[int] = set()
        channel.add_on_close_callback(self._on_close)

    def _on_close(self, _channel: Any, reason: BaseException) -> None:
        self.closed = reason
        for fut in self.pending:
            if not fut.done():
                fut.set_exception(reason)

    async def call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a pika method that takes `callback=` and wait for that callback's last argument."""
        if self.closed is not None:
            raise self.closed
        fut = asyncio.get_running_loop().create_future()
        self.pending.add(fut)

        def done(*result: Any) -> None:
            if not fut.done():
                fut.set_result(result[-1] if result else None)

        try:
            method(*args, callback=done, **kwargs)
            return await asyncio.wait_for(fut, 30)
        finally:
            self.pending.discard(fut)


class PikaAsyncio(ClientDriver):
    async def op_connect(self, step: Step) -> None:
        params = parameters(step, self.url)
        loop = asyncio.get_running_loop()

        async def attempt() -> AsyncioConnection:
            opened, closed = loop.create_future(), loop.create_future()
            AsyncioConnection(
                params, custom_ioloop=loop,
                on_open_callback=lambda c: opened.done() or opened.set_result(c),
                on_open_error_callback=lambda c, e: opened.done() or opened.set_exception(
                    e if isinstance(e, BaseException) else pika.exceptions.AMQPConnectionError(e)),
                on_close_callback=lambda c, e: closed.done() or closed.set_result(e))
            conn = await asyncio.wait_for(opened, 20)
            conn.closed_future = closed
            return conn
        await self._connect(step, attempt, (pika.exceptions.AMQPConnectionError,))

    async def op_close(self, step: Step) -> None:
        conn = self._conn(step)
        conn.close()
        await asyncio.wait_for(conn.closed_future, 10)

    async def op_channel(self, step: Step) -> None:
        opened = asyncio.get_running_loop().create_future()
        self._conn(step).channel(on_open_callback=opened.set_result)
        ch = Chan(await asyncio.wait_for(opened, 15))
        on_channel_events(self, ch.channel)
        self.chans[step.get("ch", "ch")] = ch

    async def op_exchange_declare(self, step: Step) -> None:
        ch = self._ch(step)
        await ch.call(ch.channel.exchange_declare, step["exchange"], step.get("type", "direct"),
                      **exchange_flags(step))

    async def op_exchange_delete(self, step: Step) -> None:
        ch = self._ch(step)
        await ch.call(ch.channel.exchange_delete, step["exchange"])

    async def op_queue_declare(self, step: Step) -> dict[str, int]:
        ch = self._ch(step)
        return declare_ok(await ch.call(ch.channel.queue_declare, step["queue"], **queue_flags(step)))

    async def op_queue_bind(self, step: Step) -> None:
        ch = self._ch(step)
        await ch.call(ch.channel.queue_bind, step["queue"], step["exchange"], step.get("routing_key", ""),
                      arguments=step.get("args") or None)

    async def op_queue_delete(self, step: Step) -> None:
        ch = self._ch(step)
        await ch.call(ch.channel.queue_delete, step["queue"])

    async def op_qos(self, step: Step) -> None:
        ch = self._ch(step)
        await ch.call(ch.channel.basic_qos, prefetch_count=step["prefetch"])

    async def op_confirm(self, step: Step) -> None:
        ch = self._ch(step)

        def on_confirm(frame: Any) -> None:
            tag = frame.method.delivery_tag
            tags = set(range(1, tag + 1)) if frame.method.multiple else {tag}
            (ch.acked if isinstance(frame.method, spec.Basic.Ack) else ch.nacked).update(tags)

        await ch.call(ch.channel.confirm_delivery, on_confirm)

    async def op_publish(self, step: Step) -> Any:
        ch = self._ch(step)
        if ch.closed is not None:
            raise ch.closed
        props, unsent = properties(step.get("props", {}))
        ch.channel.basic_publish(step["exchange"], step["routing_key"], self.body(step), props,
                                 mandatory=step.get("mandatory", False))
        ch.published += 1
        return sent(unsent)

    async def op_wait_confirms(self, step: Step) -> str:
        ch = self._ch(step)
        until = deadline(step.get("timeout", 10))
        def missing() -> int:
            return ch.published - len((ch.acked | ch.nacked) & set(range(1, ch.published + 1)))

        while missing() and time.monotonic() < until and ch.closed is None:
            await asyncio.sleep(0.02)
        if missing():
            return f"{missing()} unconfirmed"
        return "ok" if not ch.nacked else f"{len(ch.nacked)} nacked"

    async def _fetch(self, step: Step, no_ack: bool) -> Callable[[], Awaitable[Any]]:
        ch = self._ch(step)
        return lambda: self._basic_get(ch, step["queue"], no_ack)

    async def _basic_get(self, ch: Chan, queue: str, auto_ack: bool) -> Any:
        """basic.get; pika calls back only on get-ok, so listen for get-empty as well."""
        fut = asyncio.get_running_loop().create_future()
        ch.pending.add(fut)
        ch.channel.add_callback(lambda frame: fut.done() or fut.set_result(None), [spec.Basic.GetEmpty],
                                one_shot=True)
        ch.channel.basic_get(queue, lambda _c, m, p, b: fut.done() or fut.set_result((m, p, b)),
                             auto_ack=auto_ack)
        try:
            return await asyncio.wait_for(fut, 15)
        finally:
            ch.pending.discard(fut)

    async def _fetched(self, step: Step, got: Any, ack: str) -> dict[str, Any]:
        method, props, body = got
        settle(self._ch(step).channel, method.delivery_tag, ack)
        return received(method, props, body)

    async def op_consume(self, step: Step) -> None:
        ch = self._ch(step)
        log = self.consumers[step["tag"]] = ConsumerLog(ch)
        await ch.call(ch.channel.basic_consume, step["queue"],
                      lambda _c, m, _p, body: log.add(m.delivery_tag, body),
                      auto_ack=step.get("no_ack", False), consumer_tag=step["tag"])

    async def op_ack(self, step: Step) -> None:
        log = self.consumers[step["tag"]]
        log.channel.channel.basic_ack(log.take_unacked())

    async def op_cancel(self, step: Step) -> None:
        ch = self.consumers[step["tag"]].channel
        await ch.call(ch.channel.basic_cancel, step["tag"])

    async def op_sync(self, step: Step) -> None:
        ch = self._ch(step)
        await ch.call(ch.channel.exchange_declare, "amq.direct", "direct", passive=True)


if __name__ == "__main__":
    main(PikaAsyncio)
