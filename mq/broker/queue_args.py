"""Queue arguments: validation with RabbitMQ's wording (406), and the parsed settings."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mq.broker.args import _type_name
from mq.broker.errors import PreconditionFailed

OVERFLOW_MODES = ("drop-head", "reject-publish", "reject-publish-dlx")
QUEUE_MODES = ("default", "lazy")
QUEUE_TYPES = ("classic",)


@dataclass(frozen=True)
class QueueSettings:
    message_ttl: int | None = None       # ms
    expires: int | None = None           # ms
    max_length: int | None = None
    max_length_bytes: int | None = None
    overflow: str = "drop-head"
    dead_letter_exchange: str | None = None
    dead_letter_routing_key: str | None = None
    max_priority: int = 0
    single_active_consumer: bool = False


def _int(where: str, key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PreconditionFailed(f"invalid arg '{key}' for {where}: "
                                 f"\"expected integer, got {_type_name(value)}\"")
    if value < minimum:
        reason = "value_zero" if value == 0 else "value_negative"
        raise PreconditionFailed(f"invalid arg '{key}' for {where}: {{{reason},{value}}}")
    return value


def _str(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return value if isinstance(value, str) else None


def parse_queue_arguments(arguments: dict, queue: str, vhost: str) -> QueueSettings:
    """Check every argument RabbitMQ checks; unknown x- arguments are kept and ignored."""
    where = f"queue '{queue}' in vhost '{vhost}'"
    a = arguments
    out: dict[str, Any] = {}
    if "x-message-ttl" in a:
        out["message_ttl"] = _int(where, "x-message-ttl", a["x-message-ttl"], 0)
    if "x-expires" in a:
        out["expires"] = _int(where, "x-expires", a["x-expires"], 1)
    if "x-max-length" in a:
        out["max_length"] = _int(where, "x-max-length", a["x-max-length"], 0)
    if "x-max-length-bytes" in a:
        out["max_length_bytes"] = _int(where, "x-max-length-bytes", a["x-max-length-bytes"], 0)
    if "x-max-priority" in a:
        priority = _int(where, "x-max-priority", a["x-max-priority"], 0)
        if priority > 255:
            raise PreconditionFailed(f"invalid arg 'x-max-priority' for {where}: "
                                     f"{{max_value_exceeded,{priority}}}")
        out["max_priority"] = priority
    if "x-overflow" in a:
        mode = _str(a["x-overflow"])
        if mode not in OVERFLOW_MODES:
            raise PreconditionFailed(f"invalid arg 'x-overflow' for {where}: invalid_overflow")
        out["overflow"] = mode
    for key, field in (("x-dead-letter-exchange", "dead_letter_exchange"),
                       ("x-dead-letter-routing-key", "dead_letter_routing_key")):
        if key in a:
            value = _str(a[key])
            if value is None:
                raise PreconditionFailed(f"invalid type '{_type_name(a[key])}' for arg '{key}' "
                                         f"in {where}")
            out[field] = value
    if "dead_letter_routing_key" in out and "dead_letter_exchange" not in out:
        raise PreconditionFailed(f"invalid arg 'x-dead-letter-routing-key' for {where}: "
                                 "routing_key_but_no_dlx_defined")
    if "x-single-active-consumer" in a:
        value = a["x-single-active-consumer"]
        if not isinstance(value, bool):
            raise PreconditionFailed(f"invalid arg 'x-single-active-consumer' for {where}: "
                                     f"{{unacceptable_type,{_type_name(value)}}}")
        out["single_active_consumer"] = value
    for key, allowed, what in (("x-queue-mode", QUEUE_MODES, "queue mode"),
                               ("x-queue-type", QUEUE_TYPES, "queue type")):
        if key in a and _str(a[key]) not in allowed:
            raise PreconditionFailed(f"invalid arg '{key}' for {where}: "
                                     f"\"unsupported {what} '{_str(a[key]) or a[key]}'\"")
    return QueueSettings(**out)
