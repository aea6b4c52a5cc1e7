"""aio-pika, the high-level asyncio client (Exchange/Queue/Message objects)."""
from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

import aio_pika
from aio_pika.exceptions import DeliveryError

from .common import (ClientDriver, ConsumerLog, Step, exchange_flags, main, message, native_headers,
                     queue_flags, sent, timestamp_of)


def received(m: aio_pika.abc.AbstractIncomingMessage) -> dict[str, Any]:
    props = {k: getattr(m, k) for k in ("content_type", "content_encoding", "priority", "correlation_id",
                                        "reply_to", "message_id", "type", "user_id", "app_id")}
    props["delivery_mode"] = int(m.delivery_mode) if m.delivery_mode else None
    props["timestamp"] = timestamp_of(m.timestamp)
    # aio-pika turns the expiration into float seconds; report it in the wire's milliseconds.
    props["expiration"] = None if m.expiration is None else str(round(m.expiration * 1000))
    return message(m.body, props, m.headers, redelivered=bool(m.redelivered),
                   exchange=m.exchange or "", routing_key=m.routing_key or "")


class AioPika(ClientDriver):
    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.close_reasons: dict[str, BaseException] = {}  # per channel name, from its close callback

    def _ch(self, step: Step) -> aio_pika.abc.AbstractChannel:
        name = step.get("ch", "ch")
        if name in self.close_reasons:
            raise self.close_reasons[name]  # the broker's close (e.g. 404), as the callback saw it
        return self.chans[name]

    async def op_connect(self, step: Step) -> None:
        url = self._url(step)
        await self._connect(step, lambda: aio_pika.connect(url, timeout=15),
                            (OSError, aio_pika.exceptions.AMQPConnectionError))

    async def op_close(self, step: Step) -> None:
        await self._conn(step).close()

    async def op_channel(self, step: Step) -> None:
        # The default channel confirms publishes; a mandatory publish that comes back raises.
        ch = await self._conn(step).channel(on_return_raises=True)
        # aio-pika has no public hook for the broker's basic.cancel; the aiormq channel has.
        (await ch.get_underlay_channel()).on_consumer_cancel_callbacks.add(
            lambda frame: self.consumer_cancelled(frame.consumer_tag))
        name = step.get("ch", "ch")

        def on_close(_ch: Any, exc: BaseException | None = None) -> None:
            if isinstance(exc, Exception):
                self.close_reasons[name] = exc

        ch.close_callbacks.add(on_close)
        self.chans[name] = ch

    async def op_exchange_declare(self, step: Step) -> None:
        await self._ch(step).declare_exchange(step["exchange"], step.get("type", "direct"),
                                              **exchange_flags(step))

    async def op_exchange_delete(self, step: Step) -> None:
        await self._ch(step).exchange_delete(step["exchange"])

    async def op_queue_declare(self, step: Step) -> dict[str, int]:
        q = await self._ch(step).declare_queue(step["queue"], **queue_flags(step))
        ok = q.declaration_result
        return {"messages": ok.message_count, "consumers": ok.consumer_count}

    async def _queue(self, step: Step) -> aio_pika.abc.AbstractQueue:
        return await self._ch(step).get_queue(step["queue"], ensure=False)

    async def op_queue_bind(self, step: Step) -> None:
        await (await self._queue(step)).bind(step["exchange"], step.get("routing_key", ""),
                                             arguments=step.get("args") or None)

    async def op_queue_delete(self, step: Step) -> None:
        await self._ch(step).queue_delete(step["queue"])

    async def op_qos(self, step: Step) -> None:
        await self._ch(step).set_qos(prefetch_count=step["prefetch"])

    async def op_confirm(self, step: Step) -> None:
        return None  # aio-pika channels confirm by default

    async def op_publish(self, step: Step) -> Any:
        props = dict(step.get("props", {}))
        headers, unsent = native_headers(props.pop("headers", None), byte_array=bytearray)
        if "expiration" in props:
            props["expiration"] = int(props["expiration"]) / 1000  # aio-pika takes seconds
        if "timestamp" in props:
            props["timestamp"] = float(props["timestamp"])
        ch = self._ch(step)
        exchange = (ch.default_exchange if step["exchange"] == ""
                    else await ch.get_exchange(step["exchange"], ensure=False))
        msg = aio_pika.Message(self.body(step), headers=headers, **props)
        try:
            await exchange.publish(msg, step["routing_key"], mandatory=step.get("mandatory", False))
        except DeliveryError as e:  # how aio-pika reports a basic.return
            self.record_return(e.frame.reply_code, e.frame.exchange, e.frame.routing_key, e.message.body)
        return sent(unsent)

    async def _fetch(self, step: Step, no_ack: bool) -> Callable[[], Awaitable[Any]]:
        queue = await self._queue(step)
        return lambda: queue.get(no_ack=no_ack, fail=False)

    async def _fetched(self, step: Step, got: aio_pika.abc.AbstractIncomingMessage,
                       ack: str) -> dict[str, Any]:
        if ack == "ack":
            await got.ack()
        elif ack in ("reject", "nack"):
            await getattr(got, ack)(requeue=False)
        return received(got)

    async def op_consume(self, step: Step) -> None:
        queue = await self._queue(step)
        log = self.consumers[step["tag"]] = ConsumerLog(queue)

        async def on_message(m: aio_pika.abc.AbstractIncomingMessage) -> None:
            log.add(m, m.body)

        await queue.consume(on_message, no_ack=step.get("no_ack", False), consumer_tag=step["tag"])

    async def op_ack(self, step: Step) -> None:
        await self.consumers[step["tag"]].take_unacked().ack()

    async def op_cancel(self, step: Step) -> None:
        await self.consumers[step["tag"]].channel.cancel(step["tag"])  # channel holds the queue

    async def op_sync(self, step: Step) -> None:
        try:
            await self._ch(step).declare_exchange("amq.direct", "direct", passive=True)
        except aio_pika.exceptions.ChannelInvalidStateError:
            await asyncio.sleep(0.1)  # close callbacks run as a task; let them report the reason
            self._ch(step)
            raise


if __name__ == "__main__":
    main(AioPika)
