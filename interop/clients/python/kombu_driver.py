"""kombu, through its own entities (Exchange, Queue, Producer, Consumer) over pyamqp."""
from __future__ import annotations

from typing import Any, Callable

import kombu
from amqp.exceptions import ConsumerCancelled
from kombu import Consumer, Exchange, Producer, Queue

from .common import ConsumerLog, Step, declare_ok, main, message, native_headers, sent
from .py_amqp import UNSUPPORTED, PyAmqp


def kombu_message(m: Any) -> dict[str, Any]:
    props = dict(m.properties)
    props.pop("application_headers", None)
    info = m.delivery_info
    return message(m.body, props, m.headers, redelivered=info.get("redelivered", False),
                   exchange=info.get("exchange", ""), routing_key=info.get("routing_key", ""))


class Kombu(PyAmqp):
    """Reuses py-amqp's waiting and acking; every declaration and message goes through kombu."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.producers: dict[str, Producer] = {}  # per channel name: publishes and their returns

    @staticmethod
    def _heartbeat(conn: kombu.Connection) -> None:
        conn.heartbeat_check()

    async def op_connect(self, step: Step) -> None:
        conn = kombu.Connection(step.get("url", self.url), heartbeat=step.get("heartbeat", 0),
                                connect_timeout=15)

        def attempt() -> kombu.Connection:
            conn.connect()
            return conn
        await self._connect(step, attempt, (OSError, *conn.recoverable_connection_errors))

    def op_close(self, step: Step) -> None:
        self._conn(step).release()

    def op_channel(self, step: Step) -> None:
        ch = self._conn(step).channel()
        self.chans[step.get("ch", "ch")] = ch
        self.producers[step.get("ch", "ch")] = Producer(ch, on_return=self._on_return)

    def _queue(self, step: Step) -> Queue:
        return Queue(step["queue"], durable=step.get("durable", False),
                     exclusive=step.get("exclusive", False), auto_delete=step.get("auto_delete", False),
                     queue_arguments=step.get("args"), channel=self._ch(step))

    def op_exchange_declare(self, step: Step) -> None:
        Exchange(step["exchange"], step.get("type", "direct"), durable=step.get("durable", False),
                 auto_delete=step.get("auto_delete", False), passive=step.get("passive", False),
                 channel=self._ch(step)).declare()

    def op_exchange_delete(self, step: Step) -> None:
        Exchange(step["exchange"], channel=self._ch(step)).delete()

    def op_queue_declare(self, step: Step) -> dict[str, int]:
        return declare_ok(self._queue(step).queue_declare(passive=step.get("passive", False)))

    def op_queue_bind(self, step: Step) -> None:
        queue = Queue(step["queue"], channel=self._ch(step))
        queue.bind_to(step["exchange"], step.get("routing_key", ""), arguments=step.get("args") or None)

    def op_queue_delete(self, step: Step) -> None:
        try:
            Queue(step["queue"], channel=self._ch(step)).delete()
        except ConsumerCancelled as e:
            # kombu's Consumer registers no cancel callback, so the broker's basic.cancel for
            # our own consumer surfaces here as an exception; the delete itself went through.
            self._mark_cancelled(e)
            self._pump(step, 0.1)

    def op_publish(self, step: Step) -> Any:
        props = dict(step.get("props", {}))
        headers, unsent = native_headers(props.pop("headers", None), UNSUPPORTED)
        expiration = props.pop("expiration", None)
        producer = self.producers[step.get("ch", "ch")]
        producer.publish(
            self.body(step), routing_key=step["routing_key"], exchange=step["exchange"],
            mandatory=step.get("mandatory", False), headers=headers,
            delivery_mode=props.pop("delivery_mode", None), priority=props.pop("priority", 0),
            content_type=props.pop("content_type", None), content_encoding=props.pop("content_encoding", None),
            # kombu takes the expiration in seconds and writes milliseconds.
            expiration=None if expiration is None else int(expiration) / 1000, **props)
        return sent(unsent)

    async def _fetch(self, step: Step, no_ack: bool) -> Callable[[], Any]:
        queue = Queue(step["queue"], channel=self._ch(step))

        async def fetch() -> Any:
            return queue.get(no_ack=no_ack)
        return fetch

    async def _fetched(self, step: Step, got: Any, ack: str) -> dict[str, Any]:
        if ack == "ack":
            got.ack()
        elif ack in ("reject", "nack"):
            got.reject(requeue=False)
        return kombu_message(got)

    def op_consume(self, step: Step) -> None:
        ch = self._ch(step)
        log = self.consumers[step["tag"]] = ConsumerLog(ch)
        consumer = Consumer(ch, queues=[Queue(step["queue"], channel=ch)], no_ack=step.get("no_ack", False),
                            auto_declare=False, tag_prefix=step["tag"],
                            on_message=lambda m: log.add(m, m.body))
        consumer.consume()
        log.consumer = consumer  # type: ignore[attr-defined]

    def op_ack(self, step: Step) -> None:
        self.consumers[step["tag"]].take_unacked().ack()  # the kombu Message acks itself

    def op_cancel(self, step: Step) -> None:
        self.consumers[step["tag"]].consumer.cancel()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main(Kombu)
