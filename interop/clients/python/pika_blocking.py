"""pika's BlockingConnection adapter."""
from __future__ import annotations

import time
from typing import Any

import pika

from .common import ConsumerLog, Driver, deadline, main, message, native_headers, sent

Step = dict[str, Any]


# pika's encoder has no case for float header values.
UNSUPPORTED = ("float",)


def properties(props: dict[str, Any]) -> tuple[pika.BasicProperties, list[str]]:
    props = dict(props)
    headers, unsent = native_headers(props.pop("headers", None), UNSUPPORTED)
    return pika.BasicProperties(headers=headers, **props), unsent


class PikaBlocking(Driver):
    def _conn(self, step: Step) -> pika.BlockingConnection:
        return self.conns[step.get("conn", "c")]

    def _ch(self, step: Step) -> Any:
        ch = self.chans[step.get("ch", "ch")]
        reason = getattr(ch, "_closing_reason", None)
        if ch.is_closed and reason is not None:
            raise reason  # report the broker's close (e.g. 404), not just "wrong state"
        return ch

    def _pump(self, step: Step, seconds: float) -> None:
        self.conns[step.get("conn", "c")].process_data_events(time_limit=seconds)

    def op_connect(self, step: Step) -> None:
        params = pika.URLParameters(step.get("url", self.url))
        params.socket_timeout = 15
        params.blocked_connection_timeout = 10
        if "heartbeat" in step:
            params.heartbeat = step["heartbeat"]
        until = deadline(step.get("retry_for", 0))
        while True:
            try:
                self.conns[step.get("conn", "c")] = pika.BlockingConnection(params)
                return
            except pika.exceptions.AMQPConnectionError:
                if time.monotonic() > until:
                    raise
                time.sleep(0.5)

    def op_close(self, step: Step) -> None:
        self._conn(step).close()

    def op_channel(self, step: Step) -> None:
        ch = self._conn(step).channel()
        name = step.get("ch", "ch")

        def on_return(_ch: Any, method: Any, props: Any, body: bytes) -> None:
            self.returned.append({"reply_code": method.reply_code, "exchange": method.exchange,
                                  "routing_key": method.routing_key, "body": message(body, {}, None)["body"]})

        def on_cancel(frame: Any) -> None:
            log = self.consumers.get(frame.method.consumer_tag)
            if log:
                log.cancelled = True

        ch.add_on_return_callback(on_return)
        ch.add_on_cancel_callback(on_cancel)
        self.chans[name] = ch

    def op_exchange_declare(self, step: Step) -> None:
        self._ch(step).exchange_declare(step["exchange"], step.get("type", "direct"),
                                        passive=step.get("passive", False),
                                        durable=step.get("durable", False),
                                        auto_delete=step.get("auto_delete", False))

    def op_exchange_delete(self, step: Step) -> None:
        self._ch(step).exchange_delete(step["exchange"])

    def op_queue_declare(self, step: Step) -> dict[str, int]:
        ok = self._ch(step).queue_declare(step["queue"], passive=step.get("passive", False),
                                          durable=step.get("durable", False),
                                          exclusive=step.get("exclusive", False),
                                          auto_delete=step.get("auto_delete", False),
                                          arguments=step.get("args"))
        return {"messages": ok.method.message_count, "consumers": ok.method.consumer_count}

    def op_queue_bind(self, step: Step) -> None:
        self._ch(step).queue_bind(step["queue"], step["exchange"], step.get("routing_key", ""),
                                  arguments=step.get("args") or None)

    def op_queue_delete(self, step: Step) -> None:
        self._ch(step).queue_delete(step["queue"])

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

    def op_wait_confirms(self, step: Step) -> str:
        return "ok"  # every publish above already waited for its confirm

    def op_returns(self, step: Step) -> list[dict[str, Any]]:
        until = deadline(step.get("timeout", 5))
        while len(self.returned) < step["count"] and time.monotonic() < until:
            self._pump(step, 0.05)
        self._pump(step, step.get("settle", 0))
        return list(self.returned)

    def op_get(self, step: Step) -> Any:
        ch = self._ch(step)
        ack = step.get("ack", "ack")
        until = deadline(step.get("wait", 0))
        while True:
            method, props, body = ch.basic_get(step["queue"], auto_ack=(ack == "noack"))
            if method is not None:
                break
            if time.monotonic() > until:
                return "empty"
            self._pump(step, 0.05)
        if ack == "ack":
            ch.basic_ack(method.delivery_tag)
        elif ack == "reject":
            ch.basic_reject(method.delivery_tag, requeue=False)
        elif ack == "nack":
            ch.basic_nack(method.delivery_tag, requeue=False)
        return message(body, vars(props), props.headers, redelivered=method.redelivered,
                       exchange=method.exchange, routing_key=method.routing_key)

    def op_get_all(self, step: Step) -> list[Any]:
        out = []
        while (msg := self.op_get({**step, "wait": 0})) != "empty":
            out.append(msg["body"])
        return out

    def op_consume(self, step: Step) -> None:
        ch = self._ch(step)
        log = self.consumers[step["tag"]] = ConsumerLog(ch)
        ch.basic_consume(step["queue"], lambda _c, m, _p, body: log.add(m.delivery_tag, body),
                         auto_ack=step.get("no_ack", False), consumer_tag=step["tag"])

    def op_deliveries(self, step: Step) -> list[Any]:
        log = self.consumers[step["tag"]]
        until = deadline(step.get("timeout", 5))
        while len(log.bodies) < step["count"] and time.monotonic() < until:
            self._pump(step, 0.05)
        if step.get("settle"):
            self._pump(step, step["settle"])
        return log.snapshot()

    def op_ack(self, step: Step) -> None:
        log = self.consumers[step["tag"]]
        log.channel.basic_ack(log.take_unacked())

    def op_cancel(self, step: Step) -> None:
        self.consumers[step["tag"]].channel.basic_cancel(step["tag"])

    def op_cancelled(self, step: Step) -> bool:
        log = self.consumers[step["tag"]]
        until = deadline(step.get("timeout", 5))
        while not log.cancelled and time.monotonic() < until:
            self._pump(step, 0.05)
        return log.cancelled

    def op_sleep(self, step: Step) -> None:
        self._conn(step).sleep(step["seconds"])  # keeps heartbeats flowing

    def op_sync(self, step: Step) -> None:
        self._ch(step).exchange_declare("amq.direct", "direct", passive=True)


if __name__ == "__main__":
    main(PikaBlocking)
