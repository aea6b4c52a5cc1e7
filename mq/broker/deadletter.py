"""Dead lettering: the message a queue forwards to its dead-letter exchange, with the
x-death history exactly as RabbitMQ writes it, and the cycle rule."""
from __future__ import annotations

import datetime
from typing import Any

from mq._core.message import Message
from mq.broker.properties import decode, encode


def _text(value: Any) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


def routing_keys(msg: Message) -> list[str]:
    """The keys a message is routed by: its routing key, then its CC and BCC headers."""
    keys = [msg.routing_key]
    if b"CC" in msg.props and msg.headers:
        for name in ("CC", "BCC"):
            extra = msg.headers.get(name)
            if isinstance(extra, list):
                keys.extend(_text(k) for k in extra)
    return keys


def without_bcc(msg: Message) -> Message:
    """BCC keys route the message but are never shown to consumers."""
    if b"BCC" not in msg.props or not msg.headers or "BCC" not in msg.headers:
        return msg
    props = decode(msg.props)
    props.headers = {k: v for k, v in props.headers.items() if k != "BCC"}
    return msg.with_route(msg.exchange, msg.routing_key, encode(props))


def dead_lettered(msg: Message, queue: str, reason: str, exchange: str,
                  routing_key: str | None) -> Message:
    """The copy of `msg` that queue `queue` sends to `exchange` for `reason`."""
    props = decode(msg.props)
    headers = dict(props.headers or {})
    cc = headers.get("CC")
    keys = [msg.routing_key] + ([_text(k) for k in cc] if isinstance(cc, list) else [])
    if routing_key is not None:
        headers.pop("CC", None)  # a dead-letter routing key replaces all original keys
    death: dict[str, Any] = {
        "count": 1,
        "exchange": msg.exchange,
        "queue": queue,
        "reason": reason,
        "routing-keys": keys,
        "time": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0),
    }
    if props.expiration is not None:
        death["original-expiration"] = props.expiration
        props.expiration = None
    death = dict(sorted(death.items()))  # RabbitMQ keeps the table's fields sorted
    history = [d for d in headers.get("x-death") or [] if isinstance(d, dict)]
    for i, previous in enumerate(history):
        if _text(previous.get("queue")) == queue and _text(previous.get("reason")) == reason:
            death = dict(previous)
            death["count"] = int(previous.get("count") or 0) + 1
            del history[i]
            break
    headers["x-death"] = [death] + history
    headers.setdefault("x-first-death-exchange", msg.exchange)
    headers.setdefault("x-first-death-queue", queue)
    headers.setdefault("x-first-death-reason", reason)
    props.headers = headers
    return Message(exchange, msg.routing_key if routing_key is None else routing_key,
                   encode(props), msg.body)


def is_cycle(msg: Message, target_queue: str, reason: str) -> bool:
    """A dead-lettered message back at a queue it died in, with no rejection on the way,
    is dropped (RabbitMQ's rule)."""
    if reason == "rejected":
        return False
    deaths = (msg.headers or {}).get("x-death") or []
    if any(_text(d.get("reason")) == "rejected" for d in deaths):
        return False
    return any(_text(d.get("queue")) == target_queue for d in deaths)
