"""pika's AsyncioConnection adapter: pika's callback API, turned into awaits here."""
from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

import pika
from pika import spec
from pika.adapters.asyncio_connection import AsyncioConnection

from .common import ConsumerLog, Driver, deadline, main, message, sent
from .pika_blocking import properties

Step = dict[str, Any]


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


class PikaAsyncio(Driver):
    def _ch(self, step: Step) -> Chan:
        return self.chans[step.get("ch", "ch")]

    async def op_connect(self, step: Step) -> None:
        params = pika.URLParameters(step.get("url", self.url))
        params.socket_timeout = 15
        if "heartbeat" in step:
            params.heartbeat = step["heartbeat"]
        until = deadline(step.get("retry_for", 0))
        while True:
            loop = asyncio.get_running_loop()
            opened = loop.create_future()
            closed = loop.create_future()
            AsyncioConnection(
                params, custom_ioloop=loop,
                on_open_callback=lambda c: opened.done() or opened.set_result(c),
                on_open_error_callback=lambda c, e: opened.done() or opened.set_exception(
                    e if isinstance(e, BaseException) else pika.exceptions.AMQPConnectionError(e)),
                on_close_callback=lambda c, e: closed.done() or closed.set_result(e))
            try:
                conn = await asyncio.wait_for(opened, 20)
                break
            except pika.exceptions.AMQPConnectionError:
                if time.monotonic() > until:
                    raise
                await asyncio.sleep(0.5)
        conn.closed_future = closed
        self.conns[step.get("conn", "c")] = conn

    async def op_close(self, step: Step) -> None:
        conn = self.conns[step.get("conn", "c")]
        conn.close()
        await asyncio.wait_for(conn.closed_future, 10)

    async def op_channel(self, step: Step) -> None:
        opened = asyncio.get_running_loop().create_future()
        self.conns[step.get("conn", "c")].channel(on_open_callback=opened.set_result)
        ch = Chan(await asyncio.wait_for(opened, 15))

        def on_return(_ch: Any, method: Any, _props: Any, body: bytes) -> None:
            self.returned.append({"reply_code": method.reply_code, "exchange": method.exchange,
                                  "routing_key": method.routing_key, "body": message(body, {}, None)["body"]})

        def on_cancel(frame: Any) -> None:
            if frame.method.consumer_tag in self.consumers:
                self.consumers[frame.method.consumer_tag].cancelled = True

        ch.channel.add_on_return_callback(on_return)
        ch.channel.add_on_cancel_callback(on_cancel)
        self.chans[step.get("ch", "ch")] = ch

    async def op_exchange_declare(self, step: Step) -> None:
        ch = self._ch(step)
        await ch.call(ch.channel.exchange_declare, step["exchange"], step.get("type", "direct"),
                      passive=step.get("passive", False), durable=step.get("durable", False),
                      auto_delete=step.get("auto_delete", False))

    async def op_exchange_delete(self, step: Step) -> None:
        ch = self._ch(step)
        await ch.call(ch.channel.exchange_delete, step["exchange"])

    async def op_queue_declare(self, step: Step) -> dict[str, int]:
        ch = self._ch(step)
        frame = await ch.call(ch.channel.queue_declare, step["queue"], passive=step.get("passive", False),
                              durable=step.get("durable", False), exclusive=step.get("exclusive", False),
                              auto_delete=step.get("auto_delete", False), arguments=step.get("args"))
        return {"messages": frame.method.message_count, "consumers": frame.method.consumer_count}

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

    async def op_returns(self, step: Step) -> list[dict[str, Any]]:
        until = deadline(step.get("timeout", 5))
        while len(self.returned) < step["count"] and time.monotonic() < until:
            await asyncio.sleep(0.05)
        await asyncio.sleep(step.get("settle", 0))
        return list(self.returned)

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

    async def op_get(self, step: Step) -> Any:
        ch = self._ch(step)
        ack = step.get("ack", "ack")
        until = deadline(step.get("wait", 0))
        while (got := await self._basic_get(ch, step["queue"], ack == "noack")) is None:
            if time.monotonic() > until:
                return "empty"
            await asyncio.sleep(0.05)
        method, props, body = got
        if ack == "ack":
            ch.channel.basic_ack(method.delivery_tag)
        elif ack == "reject":
            ch.channel.basic_reject(method.delivery_tag, requeue=False)
        elif ack == "nack":
            ch.channel.basic_nack(method.delivery_tag, requeue=False)
        return message(body, vars(props), props.headers, redelivered=method.redelivered,
                       exchange=method.exchange, routing_key=method.routing_key)

    async def op_get_all(self, step: Step) -> list[Any]:
        out = []
        while (msg := await self.op_get({**step, "wait": 0})) != "empty":
            out.append(msg["body"])
        return out

    async def op_consume(self, step: Step) -> None:
        ch = self._ch(step)
        log = self.consumers[step["tag"]] = ConsumerLog(ch)
        await ch.call(ch.channel.basic_consume, step["queue"],
                      lambda _c, m, _p, body: log.add(m.delivery_tag, body),
                      auto_ack=step.get("no_ack", False), consumer_tag=step["tag"])

    async def op_deliveries(self, step: Step) -> list[Any]:
        log = self.consumers[step["tag"]]
        until = deadline(step.get("timeout", 5))
        while len(log.bodies) < step["count"] and time.monotonic() < until:
            await asyncio.sleep(0.05)
        await asyncio.sleep(step.get("settle", 0))
        return log.snapshot()

    async def op_ack(self, step: Step) -> None:
        log = self.consumers[step["tag"]]
        log.channel.channel.basic_ack(log.take_unacked())

    async def op_cancel(self, step: Step) -> None:
        ch = self.consumers[step["tag"]].channel
        await ch.call(ch.channel.basic_cancel, step["tag"])

    async def op_cancelled(self, step: Step) -> bool:
        log = self.consumers[step["tag"]]
        until = deadline(step.get("timeout", 5))
        while not log.cancelled and time.monotonic() < until:
            await asyncio.sleep(0.05)
        return log.cancelled

    async def op_sleep(self, step: Step) -> None:
        await asyncio.sleep(step["seconds"])  # the adapter's IO loop answers heartbeats

    async def op_sync(self, step: Step) -> None:
        ch = self._ch(step)
        await ch.call(ch.channel.exchange_declare, "amq.direct", "direct", passive=True)


if __name__ == "__main__":
    main(PikaAsyncio)
