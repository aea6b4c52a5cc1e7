"""aiormq, the asyncio protocol layer under aio-pika."""
from __future__ import annotations

import asyncio
import uuid
from typing import Any, Awaitable, Callable

import aiormq
from pamqp import commands as spec

from .common import (ClientDriver, ConsumerLog, Step, declare_ok, exchange_flags, main, message,
                     native_headers, queue_flags, sent, settle, to_native)


def props_of(p: spec.Basic.Properties) -> dict[str, Any]:
    return {"content_type": p.content_type, "content_encoding": p.content_encoding,
            "delivery_mode": p.delivery_mode, "priority": p.priority, "correlation_id": p.correlation_id,
            "reply_to": p.reply_to, "expiration": p.expiration, "message_id": p.message_id,
            "timestamp": p.timestamp, "type": p.message_type, "user_id": p.user_id, "app_id": p.app_id}


def received(m: Any) -> dict[str, Any]:
    p = m.header.properties
    return message(m.body, props_of(p), p.headers, redelivered=bool(m.redelivered),
                   exchange=m.exchange or "", routing_key=m.routing_key or "")


class Aiormq(ClientDriver):
    def _ch(self, step: Step) -> Any:
        ch = super()._ch(step)
        reason = getattr(ch, "_close_exception", None)
        if ch.is_closed and reason is not None:
            raise reason  # the broker's channel.close (e.g. 404), not just "channel is closed"
        return ch

    async def op_connect(self, step: Step) -> None:
        url = self._url(step)

        async def attempt() -> aiormq.Connection:
            conn = aiormq.Connection(url)
            await asyncio.wait_for(conn.connect(), 15)
            return conn
        await self._connect(step, attempt, (OSError, aiormq.exceptions.AMQPConnectionError))

    async def op_close(self, step: Step) -> None:
        await self._conn(step).close()

    async def op_channel(self, step: Step) -> None:
        # aiormq's default channel has publisher confirms on; returns are matched to a publish
        # by message_id and reported only on such channels.
        ch = await self._conn(step).channel(on_return_raises=False)
        ch.on_return_callbacks.add(lambda m: self.record_return(
            m.delivery.reply_code, m.delivery.exchange, m.delivery.routing_key, m.body))
        ch.on_consumer_cancel_callbacks.add(lambda frame: self.consumer_cancelled(frame.consumer_tag))
        self.chans[step.get("ch", "ch")] = ch

    async def op_exchange_declare(self, step: Step) -> None:
        await self._ch(step).exchange_declare(step["exchange"], exchange_type=step.get("type", "direct"),
                                              **exchange_flags(step))

    async def op_exchange_delete(self, step: Step) -> None:
        await self._ch(step).exchange_delete(step["exchange"])

    async def op_queue_declare(self, step: Step) -> dict[str, int]:
        return declare_ok(await self._ch(step).queue_declare(step["queue"], **queue_flags(step)))

    async def op_queue_bind(self, step: Step) -> None:
        await self._ch(step).queue_bind(step["queue"], step["exchange"], step.get("routing_key", ""),
                                        arguments=step.get("args") or None)

    async def op_queue_delete(self, step: Step) -> None:
        await self._ch(step).queue_delete(step["queue"])

    async def op_qos(self, step: Step) -> None:
        await self._ch(step).basic_qos(prefetch_count=step["prefetch"])

    async def op_confirm(self, step: Step) -> None:
        return None  # channels are opened in confirm mode already

    async def op_publish(self, step: Step) -> Any:
        props = dict(step.get("props", {}))
        headers, unsent = native_headers(props.pop("headers", None), byte_array=bytearray)
        if "type" in props:
            props["message_type"] = props.pop("type")
        if "timestamp" in props:
            props["timestamp"] = to_native({"type": "timestamp", "value": props["timestamp"]})
        if step.get("mandatory"):
            props.setdefault("message_id", uuid.uuid4().hex)  # aiormq needs it to match the return
        # On a confirm channel this waits for the broker's ack.
        await self._ch(step).basic_publish(self.body(step), exchange=step["exchange"],
                                           routing_key=step["routing_key"],
                                           properties=spec.Basic.Properties(headers=headers, **props),
                                           mandatory=step.get("mandatory", False))
        return sent(unsent)

    async def _fetch(self, step: Step, no_ack: bool) -> Callable[[], Awaitable[Any]]:
        ch = self._ch(step)

        async def fetch() -> Any:
            m = await ch.basic_get(step["queue"], no_ack=no_ack)
            return m if isinstance(m.delivery, spec.Basic.GetOk) else None
        return fetch

    async def _fetched(self, step: Step, got: Any, ack: str) -> dict[str, Any]:
        if (pending := settle(self._ch(step), got.delivery_tag, ack)) is not None:
            await pending
        return received(got)

    async def op_consume(self, step: Step) -> None:
        ch = self._ch(step)
        log = self.consumers[step["tag"]] = ConsumerLog(ch)

        async def on_message(m: Any) -> None:
            log.add(m.delivery_tag, m.body)

        await ch.basic_consume(step["queue"], on_message, no_ack=step.get("no_ack", False),
                               consumer_tag=step["tag"])

    async def op_ack(self, step: Step) -> None:
        log = self.consumers[step["tag"]]
        await log.channel.basic_ack(log.take_unacked())

    async def op_cancel(self, step: Step) -> None:
        await self.consumers[step["tag"]].channel.basic_cancel(step["tag"])

    async def op_sync(self, step: Step) -> None:
        await self._ch(step).exchange_declare("amq.direct", exchange_type="direct", passive=True)


if __name__ == "__main__":
    main(Aiormq)
