"""aiormq, the asyncio protocol layer under aio-pika."""
from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import aiormq
from pamqp import commands as spec

from .common import ConsumerLog, Driver, deadline, main, message, native_headers, sent, to_native

Step = dict[str, Any]


def with_query(url: str, **query: Any) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query=urlencode(query)))


def props_of(p: spec.Basic.Properties) -> dict[str, Any]:
    return {"content_type": p.content_type, "content_encoding": p.content_encoding,
            "delivery_mode": p.delivery_mode, "priority": p.priority, "correlation_id": p.correlation_id,
            "reply_to": p.reply_to, "expiration": p.expiration, "message_id": p.message_id,
            "timestamp": p.timestamp, "type": p.message_type, "user_id": p.user_id, "app_id": p.app_id}


def received(m: Any) -> dict[str, Any]:
    p = m.header.properties
    return message(m.body, props_of(p), p.headers, redelivered=bool(m.redelivered),
                   exchange=m.exchange or "", routing_key=m.routing_key or "")


class Aiormq(Driver):
    def _ch(self, step: Step) -> Any:
        ch = self.chans[step.get("ch", "ch")]
        reason = getattr(ch, "_close_exception", None)
        if ch.is_closed and reason is not None:
            raise reason  # the broker's channel.close (e.g. 404), not just "channel is closed"
        return ch

    async def op_connect(self, step: Step) -> None:
        url = step.get("url", self.url)
        if "heartbeat" in step:
            url = with_query(url, heartbeat=step["heartbeat"])
        until = deadline(step.get("retry_for", 0))
        while True:
            conn = aiormq.Connection(url)
            try:
                await asyncio.wait_for(conn.connect(), 15)
                break
            except (OSError, aiormq.exceptions.AMQPConnectionError):
                if time.monotonic() > until:
                    raise
                await asyncio.sleep(0.5)
        self.conns[step.get("conn", "c")] = conn

    async def op_close(self, step: Step) -> None:
        await self.conns[step.get("conn", "c")].close()

    async def op_channel(self, step: Step) -> None:
        # aiormq's default channel has publisher confirms on; returns are matched to a publish
        # by message_id and reported only on such channels.
        ch = await self.conns[step.get("conn", "c")].channel(on_return_raises=False)

        def on_return(m: Any) -> None:
            self.returned.append({"reply_code": m.delivery.reply_code, "exchange": m.delivery.exchange,
                                  "routing_key": m.delivery.routing_key, "body": received(m)["body"]})

        def on_cancel(frame: Any) -> None:
            if frame.consumer_tag in self.consumers:
                self.consumers[frame.consumer_tag].cancelled = True

        ch.on_return_callbacks.add(on_return)
        ch.on_consumer_cancel_callbacks.add(on_cancel)
        self.chans[step.get("ch", "ch")] = ch

    async def op_exchange_declare(self, step: Step) -> None:
        await self._ch(step).exchange_declare(step["exchange"], exchange_type=step.get("type", "direct"),
                                              passive=step.get("passive", False),
                                              durable=step.get("durable", False),
                                              auto_delete=step.get("auto_delete", False))

    async def op_exchange_delete(self, step: Step) -> None:
        await self._ch(step).exchange_delete(step["exchange"])

    async def op_queue_declare(self, step: Step) -> dict[str, int]:
        ok = await self._ch(step).queue_declare(step["queue"], passive=step.get("passive", False),
                                                durable=step.get("durable", False),
                                                exclusive=step.get("exclusive", False),
                                                auto_delete=step.get("auto_delete", False),
                                                arguments=step.get("args"))
        return {"messages": ok.message_count, "consumers": ok.consumer_count}

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

    async def op_wait_confirms(self, step: Step) -> str:
        return "ok"

    async def op_returns(self, step: Step) -> list[dict[str, Any]]:
        until = deadline(step.get("timeout", 5))
        while len(self.returned) < step["count"] and time.monotonic() < until:
            await asyncio.sleep(0.05)
        await asyncio.sleep(step.get("settle", 0))
        return list(self.returned)

    async def op_get(self, step: Step) -> Any:
        ch = self._ch(step)
        ack = step.get("ack", "ack")
        until = deadline(step.get("wait", 0))
        while True:
            m = await ch.basic_get(step["queue"], no_ack=(ack == "noack"))
            if isinstance(m.delivery, spec.Basic.GetOk):
                break
            if time.monotonic() > until:
                return "empty"
            await asyncio.sleep(0.05)
        if ack == "ack":
            await ch.basic_ack(m.delivery_tag)
        elif ack == "reject":
            await ch.basic_reject(m.delivery_tag, requeue=False)
        elif ack == "nack":
            await ch.basic_nack(m.delivery_tag, requeue=False)
        return received(m)

    async def op_get_all(self, step: Step) -> list[Any]:
        out = []
        while (msg := await self.op_get({**step, "wait": 0})) != "empty":
            out.append(msg["body"])
        return out

    async def op_consume(self, step: Step) -> None:
        ch = self._ch(step)
        log = self.consumers[step["tag"]] = ConsumerLog(ch)

        async def on_message(m: Any) -> None:
            log.add(m.delivery_tag, m.body)

        await ch.basic_consume(step["queue"], on_message, no_ack=step.get("no_ack", False),
                               consumer_tag=step["tag"])

    async def op_deliveries(self, step: Step) -> list[Any]:
        log = self.consumers[step["tag"]]
        until = deadline(step.get("timeout", 5))
        while len(log.bodies) < step["count"] and time.monotonic() < until:
            await asyncio.sleep(0.05)
        await asyncio.sleep(step.get("settle", 0))
        return log.snapshot()

    async def op_ack(self, step: Step) -> None:
        log = self.consumers[step["tag"]]
        await log.channel.basic_ack(log.take_unacked())

    async def op_cancel(self, step: Step) -> None:
        await self.consumers[step["tag"]].channel.basic_cancel(step["tag"])

    async def op_cancelled(self, step: Step) -> bool:
        log = self.consumers[step["tag"]]
        until = deadline(step.get("timeout", 5))
        while not log.cancelled and time.monotonic() < until:
            await asyncio.sleep(0.05)
        return log.cancelled

    async def op_sleep(self, step: Step) -> None:
        await asyncio.sleep(step["seconds"])  # the library's reader answers heartbeats meanwhile

    async def op_sync(self, step: Step) -> None:
        await self._ch(step).exchange_declare("amq.direct", exchange_type="direct", passive=True)


if __name__ == "__main__":
    main(Aiormq)
