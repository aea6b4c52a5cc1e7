"""Dead lettering: the message a queue forwards to its dead-letter exchange, with the
x-death history exactly as RabbitMQ writes it, and the cycle rule."""
from __future__ import annotations

import datetime
import time
from typing import Any

from mq._core import fieldtable as ft
from mq._core.message import Message
from mq.broker import rawprops
from mq.broker.errors import PreconditionFailed


def _text(value: Any) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


def _header_keys(msg: Message, name: str) -> list[str]:
    """The routing keys in a CC or BCC header: its longstr elements (RabbitMQ skips others)."""
    keys = (msg.headers or {}).get(name) if name.encode() in msg.props else None
    return [k for k in keys if isinstance(k, str)] if isinstance(keys, list) else []


def check_routing_headers(msg: Message) -> None:
    """CC and BCC, when present, must be arrays: otherwise 406, in RabbitMQ's words."""
    if b"CC" not in msg.props or not msg.headers:
        return
    for name in ("CC", "BCC"):
        if name in msg.headers and not isinstance(msg.headers[name], list):
            value = dict(ft.split_table(rawprops.split_properties(msg.props)["headers"]))
            raise PreconditionFailed("invalid message: {unacceptable_type_in_header,"
                                     f'"{name}",{ft.type_name(value[name])}}}')


def routing_keys(msg: Message) -> list[str]:
    """The keys a message is routed by: its routing key, then its CC and BCC keys (BCC from
    the header on publish, later from the message record, since the header is removed)."""
    keys = [msg.routing_key] + _header_keys(msg, "CC") + _header_keys(msg, "BCC")
    if msg.bcc:
        keys.extend(msg.bcc)
    return keys


def without_bcc(msg: Message) -> Message:
    """BCC keys route the message but are never shown to consumers; the copy remembers them
    for dead lettering, which RabbitMQ routes by the original keys, BCC included."""
    if b"BCC" not in msg.props or not msg.headers or "BCC" not in msg.headers:
        return msg
    fields = rawprops.split_properties(msg.props)
    fields["headers"] = ft.join_table(
        [e for e in ft.split_table(fields["headers"]) if e[0] != "BCC"])
    out = msg.with_route(msg.exchange, msg.routing_key, rawprops.join_properties(fields))
    out.bcc = tuple(_header_keys(msg, "BCC")) or None
    return out


def _sorted(entries: ft.Entries) -> ft.Entries:
    """RabbitMQ's sort_field_table: entries by name."""
    return sorted(entries, key=lambda e: e[0])


def _field(entries: ft.Entries, name: str) -> Any:
    """The value of one field of an x-death table (None when absent or undecodable: the
    history came from a client and is matched, never trusted)."""
    value = dict(entries).get(name)
    try:
        return None if value is None else ft.decode_value(value, errors="surrogateescape")
    except ft.FieldTableError:
        return None


def _longstr(text: str) -> bytes:
    return ft.encode_value(text)  # surrogateescape: a name gives back the client's bytes


def _queue_and_reason(entries: ft.Entries) -> tuple[str | None, str | None]:
    queue, reason = _field(entries, "queue"), _field(entries, "reason")
    return (queue if isinstance(queue, str) else None,
            reason if isinstance(reason, str) else None)


def dead_lettered(msg: Message, queue: str, reason: str, exchange: str,
                  routing_key: str | None) -> Message:
    """The copy of `msg` that queue `queue` sends to `exchange` for `reason`, with the
    x-death history as RabbitMQ 3.10 writes it: a first death's table in RabbitMQ's field
    order with x-first-death-*; later ones sorted, a repeat of queue and reason counted
    and moved to the front. Every other header keeps its exact encoding."""
    fields = rawprops.split_properties(msg.props)
    headers = ft.split_table(fields["headers"]) if "headers" in fields else []
    keys = [msg.routing_key] + _header_keys(msg, "CC")
    now = datetime.datetime.fromtimestamp(int(time.time()), datetime.timezone.utc)
    info: ft.Entries = [
        ("reason", _longstr(reason)),
        ("queue", _longstr(queue)),
        ("time", ft.encode_value(now)),  # whole seconds: a 'T' of seconds, as RabbitMQ's
        ("exchange", _longstr(msg.exchange)),
        ("routing-keys", ft.array([_longstr(k) for k in keys])),
    ]
    if "expiration" in fields:
        info.append(("original-expiration",
                     _longstr(rawprops.shortstr_text(fields.pop("expiration")))))
    history = dict(headers).get("x-death")
    if history is None or history[:1] != b"A":
        first = {"x-first-death-reason": reason, "x-first-death-queue": queue,
                 "x-first-death-exchange": msg.exchange}
        headers = [e for e in headers if e[0] not in first and e[0] != "x-death"]
        headers += [(k, _longstr(v)) for k, v in first.items()]
        deaths = [ft.table([("count", rawprops.long(1))] + info)]
    else:
        deaths = ft.split_array(history)  # older entries are kept byte for byte
        for i, death in enumerate(deaths):
            entries = ft.split_table(death[1:]) if death[:1] == b"F" else []
            if _queue_and_reason(entries) == (queue, reason):
                count = _field(entries, "count")
                count = count if type(count) is int else 0  # any integer type; not a bool
                entries = [e for e in entries if e[0] != "count"]
                entries.append(("count", rawprops.long(count + 1)))
                del deaths[i]
                break
        else:
            entries = [("count", rawprops.long(1))] + info
        deaths.insert(0, ft.table(_sorted(entries)))
        headers = [e for e in headers if e[0] != "x-death"]
    headers.append(("x-death", ft.array(deaths)))
    headers = _sorted(headers)
    if routing_key is not None:  # a dead-letter routing key replaces all original keys
        headers = [e for e in headers if e[0] != "CC"]
    fields["headers"] = ft.join_table(headers)
    out = Message(exchange, msg.routing_key if routing_key is None else routing_key,
                  rawprops.join_properties(fields), msg.body)
    if routing_key is None:
        out.bcc = msg.bcc
    return out


def is_cycle(msg: Message, target_queue: str, reason: str) -> bool:
    """A dead-lettered message back at a queue it died in, with no rejection since it died
    there, is dropped (RabbitMQ's rule: only the deaths back to that queue count)."""
    if reason == "rejected":
        return False
    deaths = [d if isinstance(d, dict) else {} for d in (msg.headers or {}).get("x-death") or []]
    for death in deaths:
        if _text(death.get("reason")) == "rejected":
            return False
        if _text(death.get("queue")) == target_queue:
            return True
    return False
