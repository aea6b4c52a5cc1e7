"""pika's BlockingConnection adapter."""
from __future__ import annotations

from typing import Any, Callable

import pika

from .common import BlockingDriver, ConsumerLog, Step, main, message, native_headers, sent, settle

# pika's encoder has no case for float header values.
UNSUPPORTED = ("float",)


def parameters(step: Step, url: str) -> pika.URLParameters:
    """Connection parameters for a connect step (shared with the asyncio adapter's driver)."""
    params = pika.URLParameters(step.get("url", url))
    params.socket_timeout = 15
    if "heartbeat" in step:
        params.heartbeat = step["heartbeat"]
    return params


def properties(props: dict[str, Any]) -> tuple[pika.BasicProperties, list[str]]:
    props = dict(props)
    headers, unsent = native_headers(props.pop("headers", None), UNSUPPORTED)
    return pika.BasicProperties(headers=headers, **props), unsent


def received(method: Any, props: pika.BasicProperties, body: bytes) -> dict[str, Any]:
    return message(body, vars(props), props.headers, redelivered=method.redelivered,
                   exchange=method.exchange, routing_key=method.routing_key)


def on_channel_events(driver: Any, channel: Any) -> None:
    """Record the broker's basic.return and basic.cancel on a pika channel (either adapter)."""
    channel.add_on_return_callback(lambda _ch, method, _props, body: driver.record_return(
        method.reply_code, method.exchange, method.routing_key, body))
    channel.add_on_cancel_callback(lambda frame: driver.consumer_cancelled(frame.method.consumer_tag))


class PikaBlocking(BlockingDriver):
    def _ch(self, step: Step) -> Any:
        ch = super()._ch(step)
        reason = getattr(ch, "_closing_reason", None)
        if ch.is_closed and reason is not None:
            raise reason  # report the broker's close (e.g. 404), not just "wrong state"
        return ch

    def _pump(self, step: Step, seconds: float) -> None:
        self._conn(step).process_data_events(time_limit=seconds)

    async def _get_pause(self, step: Step) -> None:
        self._pump(step, 0.05)

    async def op_connect(self, step: Step) -> None:
        params = parameters(step, self.url)
        params.blocked_connection_timeout = 10
        await self._connect(step, lambda: pika.BlockingConnection(params),
                            (pika.exceptions.AMQPConnectionError,))

    def op_channel(self, step: Step) -> None:
        ch = self._conn(step).channel()
        on_channel_events(self, ch)
        self.chans[step.get("ch", "ch")] = ch

    def op_qos(self, step: Step) -> None:
        self._ch(step).basic_qos(prefetch_count=step["prefetch"])

    def op_confirm(self, step: Step) -> None:
        self._ch(step).confirm_delivery()

    def op_publish(self, step: Step) -> Any:
        # In confirm mode pika waits for the ack here (and raises on nack or return).
        props, unsent = properties(step.get("props", {}))
        self._ch(step).basic_publish(step["exchange"], step["routing_key"], self.body(step), props,
                                     mandatory=step.get("mandatory", False))
        return sent(unsent)

    async def _fetch(self, step: Step, no_ack: bool) -> Callable[[], Any]:
        ch = self._ch(step)

        async def fetch() -> Any:
            got = ch.basic_get(step["queue"], auto_ack=no_ack)
            return None if got[0] is None else got  # (None, None, None) when empty
        return fetch

    async def _fetched(self, step: Step, got: Any, ack: str) -> dict[str, Any]:
        method, props, body = got
        settle(self._ch(step), method.delivery_tag, ack)
        return received(method, props, body)

    def op_consume(self, step: Step) -> None:
        ch = self._ch(step)
        log = self.consumers[step["tag"]] = ConsumerLog(ch)
        ch.basic_consume(step["queue"], lambda _c, m, _p, body: log.add(m.delivery_tag, body),
                         auto_ack=step.get("no_ack", False), consumer_tag=step["tag"])

    def op_sleep(self, step: Step) -> None:
        self._conn(step).sleep(step["seconds"])  # keeps heartbeats flowing


if __name__ == "__main__":
    main(PikaBlocking)
