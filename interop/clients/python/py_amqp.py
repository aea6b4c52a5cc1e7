"""py-amqp (the `amqp` package), the transport under kombu and Celery."""
from __future__ import annotations

import socket
import time
from typing import Any
from urllib.parse import unquote, urlsplit

import amqp
from amqp.exceptions import ConsumerCancelled

from .common import ConsumerLog, Driver, deadline, main, message, native_headers, sent

Step = dict[str, Any]

# py-amqp writes bytes as a long string ('S'): it has no way to send a byte array ('x').
UNSUPPORTED = ("bytes",)


def connection_args(url: str) -> dict[str, Any]:
    u = urlsplit(url)
    vhost = unquote(u.path[1:]) if len(u.path) > 1 else "/"
    return {"host": f"{u.hostname}:{u.port or 5672}", "userid": unquote(u.username or "guest"),
            "password": unquote(u.password or "guest"), "virtual_host": vhost}


def received(msg: amqp.Message) -> dict[str, Any]:
    props = dict(msg.properties)
    headers = props.pop("application_headers", None)
    body = msg.body if isinstance(msg.body, bytes) else msg.body.encode()
    info = msg.delivery_info or {}  # None on a returned message
    return message(body, props, headers, redelivered=info.get("redelivered", False),
                   exchange=info.get("exchange", ""), routing_key=info.get("routing_key", ""))


class PyAmqp(Driver):
    def _conn(self, step: Step) -> Any:
        return self.conns[step.get("conn", "c")]

    def _ch(self, step: Step) -> Any:
        return self.chans[step.get("ch", "ch")]

    def _pump(self, step: Step, seconds: float) -> None:
        """Process incoming frames for up to `seconds`, keeping heartbeats going."""
        conn = self._conn(step)
        until = time.monotonic() + seconds
        while True:
            conn.heartbeat_tick()
            left = until - time.monotonic()
            if left <= 0:
                return
            try:
                conn.drain_events(timeout=min(left, 0.2))
            except socket.timeout:
                pass
            except ConsumerCancelled as e:  # no on_cancel callback: the library raises
                self._mark_cancelled(e)

    def _mark_cancelled(self, exc: Exception) -> None:
        for tag, log in self.consumers.items():
            if tag in str(exc):
                log.cancelled = True

    def op_connect(self, step: Step) -> None:
        args = connection_args(step.get("url", self.url))
        until = deadline(step.get("retry_for", 0))
        while True:
            conn = amqp.Connection(heartbeat=step.get("heartbeat", 0), connect_timeout=15, **args)
            try:
                conn.connect()
                break
            except (OSError, amqp.exceptions.RecoverableConnectionError):
                if time.monotonic() > until:
                    raise
                time.sleep(0.5)
        self.conns[step.get("conn", "c")] = conn

    def op_close(self, step: Step) -> None:
        self._conn(step).close()

    def op_channel(self, step: Step) -> None:
        ch = self._conn(step).channel()

        def on_return(exc: Any, exchange: str, routing_key: str, msg: amqp.Message) -> None:
            self.returned.append({"reply_code": exc.reply_code, "exchange": exchange,
                                  "routing_key": routing_key, "body": received(msg)["body"]})

        ch.events["basic_return"].add(on_return)
        self.chans[step.get("ch", "ch")] = ch

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
        return {"messages": ok.message_count, "consumers": ok.consumer_count}

    def op_queue_bind(self, step: Step) -> None:
        self._ch(step).queue_bind(step["queue"], step["exchange"], step.get("routing_key", ""),
                                  arguments=step.get("args") or None)

    def op_queue_delete(self, step: Step) -> None:
        self._ch(step).queue_delete(step["queue"])

    def op_qos(self, step: Step) -> None:
        self._ch(step).basic_qos(0, step["prefetch"], False)

    def op_confirm(self, step: Step) -> None:
        # What amqp.Channel does for a Connection(confirm_publish=True), for this channel only:
        # basic_publish becomes basic_publish_confirm, which selects confirms on first use and
        # waits for each ack (a bare confirm_select() would leave publishes unwaited).
        ch = self._ch(step)
        ch.basic_publish = ch.basic_publish_confirm

    def op_publish(self, step: Step) -> Any:
        props = dict(step.get("props", {}))
        headers, unsent = native_headers(props.pop("headers", None), UNSUPPORTED)
        if headers is not None:
            props["application_headers"] = headers
        msg = amqp.Message(self.body(step), **props)
        self._ch(step).basic_publish(msg, step["exchange"], step["routing_key"],
                                     mandatory=step.get("mandatory", False))
        return sent(unsent)

    def op_wait_confirms(self, step: Step) -> str:
        return "ok"  # basic_publish_confirm already waited for each ack

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
        while (msg := ch.basic_get(step["queue"], no_ack=(ack == "noack"))) is None:
            if time.monotonic() > until:
                return "empty"
            time.sleep(0.05)
        tag = msg.delivery_info["delivery_tag"]
        if ack == "ack":
            ch.basic_ack(tag)
        elif ack == "reject":
            ch.basic_reject(tag, requeue=False)
        elif ack == "nack":
            ch.basic_nack(tag, requeue=False)
        return received(msg)

    def op_get_all(self, step: Step) -> list[Any]:
        out = []
        while (msg := self.op_get({**step, "wait": 0})) != "empty":
            out.append(msg["body"])
        return out

    def op_consume(self, step: Step) -> None:
        ch = self._ch(step)
        log = self.consumers[step["tag"]] = ConsumerLog(ch)

        def on_cancel(_tag: str) -> None:
            log.cancelled = True

        ch.basic_consume(step["queue"], consumer_tag=step["tag"], no_ack=step.get("no_ack", False),
                         callback=lambda m: log.add(m.delivery_info["delivery_tag"], m.body),
                         on_cancel=on_cancel)

    def op_deliveries(self, step: Step) -> list[Any]:
        log = self.consumers[step["tag"]]
        until = deadline(step.get("timeout", 5))
        while len(log.bodies) < step["count"] and time.monotonic() < until:
            self._pump(step, 0.05)
        self._pump(step, step.get("settle", 0))
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
        self._pump(step, step["seconds"])

    def op_sync(self, step: Step) -> None:
        self._ch(step).exchange_declare("amq.direct", "direct", passive=True)


if __name__ == "__main__":
    main(PyAmqp)
