"""py-amqp (the `amqp` package), the transport under kombu and Celery."""
from __future__ import annotations

import socket
import time
from typing import Any, Callable
from urllib.parse import unquote, urlsplit

import amqp
from amqp.exceptions import ConsumerCancelled

from .common import BlockingDriver, ConsumerLog, Step, main, message, native_headers, sent, settle

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


class PyAmqp(BlockingDriver):
    def _pump(self, step: Step, seconds: float) -> None:
        """Process incoming frames for up to `seconds`, keeping heartbeats going."""
        conn = self._conn(step)
        until = time.monotonic() + seconds
        while True:
            self._heartbeat(conn)
            left = until - time.monotonic()
            if left <= 0:
                return
            try:
                conn.drain_events(timeout=min(left, 0.2))
            except socket.timeout:
                pass
            except ConsumerCancelled as e:  # no on_cancel callback (kombu): the library raises
                self._mark_cancelled(e)

    @staticmethod
    def _heartbeat(conn: amqp.Connection) -> None:
        conn.heartbeat_tick()

    def _mark_cancelled(self, exc: Exception) -> None:
        for tag, log in self.consumers.items():
            if tag in str(exc):
                log.cancelled = True

    async def op_connect(self, step: Step) -> None:
        args = connection_args(step.get("url", self.url))

        def attempt() -> amqp.Connection:
            conn = amqp.Connection(heartbeat=step.get("heartbeat", 0), connect_timeout=15, **args)
            conn.connect()
            return conn
        await self._connect(step, attempt, (OSError, amqp.exceptions.RecoverableConnectionError))

    def op_channel(self, step: Step) -> None:
        ch = self._conn(step).channel()
        ch.events["basic_return"].add(self._on_return)
        self.chans[step.get("ch", "ch")] = ch

    def _on_return(self, exc: Any, exchange: str, routing_key: str, msg: amqp.Message) -> None:
        self.record_return(exc.reply_code, exchange, routing_key, msg.body)

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

    async def _fetch(self, step: Step, no_ack: bool) -> Callable[[], Any]:
        ch = self._ch(step)

        async def fetch() -> Any:
            return ch.basic_get(step["queue"], no_ack=no_ack)
        return fetch

    async def _fetched(self, step: Step, got: amqp.Message, ack: str) -> dict[str, Any]:
        settle(self._ch(step), got.delivery_info["delivery_tag"], ack)
        return received(got)

    def op_consume(self, step: Step) -> None:
        ch = self._ch(step)
        log = self.consumers[step["tag"]] = ConsumerLog(ch)

        def on_cancel(_tag: str) -> None:
            log.cancelled = True

        ch.basic_consume(step["queue"], consumer_tag=step["tag"], no_ack=step.get("no_ack", False),
                         callback=lambda m: log.add(m.delivery_info["delivery_tag"], m.body),
                         on_cancel=on_cancel)


if __name__ == "__main__":
    main(PyAmqp)
