"""Queue arguments: validation with RabbitMQ's wording (406), and the parsed settings."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from mq.broker.args import _type_name
from mq.broker.errors import PreconditionFailed

OVERFLOW_MODES = ("drop-head", "reject-publish", "reject-publish-dlx")
QUEUE_MODES = ("default", "lazy")
QUEUE_TYPES = ("classic", "quorum", "stream")
# Arguments a quorum queue refuses (RabbitMQ 3.10), and the queue properties it can't have.
QUORUM_UNSUPPORTED = ("x-max-priority", "x-queue-mode")
# Arguments a stream refuses (RabbitMQ 3.10: "of queue type rabbit_stream_queue").
STREAM_UNSUPPORTED = ("x-max-length", "x-message-ttl", "x-dead-letter-exchange",
                      "x-dead-letter-routing-key", "x-max-priority", "x-overflow", "x-expires",
                      "x-single-active-consumer", "x-queue-mode", "x-max-in-memory-length",
                      "x-delivery-limit")
UNSUPPORTED = {"quorum": QUORUM_UNSUPPORTED, "stream": STREAM_UNSUPPORTED}
QUORUM_PROPERTIES = (("durable", False, "non-durable"), ("exclusive", True, "exclusive-owner"),
                     ("auto_delete", True, "auto-delete"))


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
    queue_type: str = "classic"
    delivery_limit: int | None = None  # quorum queues: returns before dead lettering
    max_age_ms: int | None = None        # streams: segments older than this are removed
    stream_segment_bytes: int = 500_000_000  # streams: bytes per segment file (RabbitMQ's)


# RabbitMQ caps x-message-ttl and x-expires at ten years (in ms).
MAX_EXPIRY = 315_360_000_000


def _int(where: str, key: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PreconditionFailed(f"invalid arg '{key}' for {where}: "
                                 f"\"expected integer, got {_type_name(value)}\"")
    if value < minimum:
        reason = "value_zero" if value == 0 else "value_negative"
        raise PreconditionFailed(f"invalid arg '{key}' for {where}: {{{reason},{value}}}")
    if maximum is not None and value > maximum:
        raise PreconditionFailed(f"invalid arg '{key}' for {where}: {{value_too_large,{value}}}")
    return value


def _str(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return value if isinstance(value, str) else None


def _string_arg(where: str, key: str, value: Any) -> str:
    """A string-typed argument; another type is RabbitMQ's {unacceptable_type,T}."""
    text = _str(value)
    if text is None:
        raise PreconditionFailed(f"invalid arg '{key}' for {where}: "
                                 f"{{unacceptable_type,{_type_name(value)}}}")
    return text


def _choice(where: str, key: str, value: Any, allowed: tuple[str, ...], what: str) -> str:
    text = _string_arg(where, key, value)
    if text not in allowed:
        raise PreconditionFailed(f"invalid arg '{key}' for {where}: "
                                 f"\"unsupported {what} '{text}'\"")
    return text


def check_queue_properties(settings: QueueSettings, properties: dict[str, bool], queue: str,
                           vhost: str) -> None:
    """A quorum queue or a stream must be durable, not exclusive, not auto-delete
    (RabbitMQ's 406)."""
    if settings.queue_type == "classic":
        return
    for name, refused, word in QUORUM_PROPERTIES:
        if properties[name] == refused:
            raise PreconditionFailed(f"invalid property '{word}' for queue '{queue}' in vhost "
                                     f"'{vhost}'")


def parse_queue_arguments(arguments: dict, queue: str, vhost: str) -> QueueSettings:
    """Check every argument RabbitMQ checks, in the order it checks them (so the first bad
    one is named as RabbitMQ names it); unknown x- arguments are kept and ignored."""
    where = f"queue '{queue}' in vhost '{vhost}'"
    a = arguments
    out: dict[str, Any] = {}
    # RabbitMQ checks the dead-letter exchange's type and the queue type before the rest.
    if "x-dead-letter-exchange" in a:
        value = _str(a["x-dead-letter-exchange"])
        if value is None:
            raise PreconditionFailed(f"invalid type '{_type_name(a['x-dead-letter-exchange'])}' "
                                     f"for arg 'x-dead-letter-exchange' in {where}")
        out["dead_letter_exchange"] = value
    if "x-queue-type" in a:
        _choice(where, "x-queue-type", a["x-queue-type"], QUEUE_TYPES, "queue type")
        out["queue_type"] = _str(a["x-queue-type"])
        refused = UNSUPPORTED.get(out["queue_type"], ())
        for key in refused:
            if key in a:
                raise PreconditionFailed(f"invalid arg '{key}' for {where} of queue type "
                                         f"rabbit_{out['queue_type']}_queue")
        if out["queue_type"] == "quorum":
            if "x-delivery-limit" in a:
                out["delivery_limit"] = _int(where, "x-delivery-limit", a["x-delivery-limit"], 0)
        elif out["queue_type"] == "stream":
            if "x-max-age" in a:
                out["max_age_ms"] = max_age_ms(where, a["x-max-age"])
            if "x-stream-max-segment-size-bytes" in a:
                out["stream_segment_bytes"] = _int(where, "x-stream-max-segment-size-bytes",
                                                   a["x-stream-max-segment-size-bytes"], 1)
    if "x-expires" in a:
        out["expires"] = _int(where, "x-expires", a["x-expires"], 1, MAX_EXPIRY)
    if "x-message-ttl" in a:
        out["message_ttl"] = _int(where, "x-message-ttl", a["x-message-ttl"], 0, MAX_EXPIRY)
    if "x-dead-letter-routing-key" in a:
        out["dead_letter_routing_key"] = _string_arg(where, "x-dead-letter-routing-key",
                                                     a["x-dead-letter-routing-key"])
        if "dead_letter_exchange" not in out:
            raise PreconditionFailed(f"invalid arg 'x-dead-letter-routing-key' for {where}: "
                                     "routing_key_but_no_dlx_defined")
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
        mode = _string_arg(where, "x-overflow", a["x-overflow"])
        if mode not in OVERFLOW_MODES:
            raise PreconditionFailed(f"invalid arg 'x-overflow' for {where}: invalid_overflow")
        out["overflow"] = mode
    if "x-queue-mode" in a:
        _choice(where, "x-queue-mode", a["x-queue-mode"], QUEUE_MODES, "queue mode")
    if "x-single-active-consumer" in a:
        value = a["x-single-active-consumer"]
        if not isinstance(value, bool):
            raise PreconditionFailed(f"invalid arg 'x-single-active-consumer' for {where}: "
                                     f"{{unacceptable_type,{_type_name(value)}}}")
        out["single_active_consumer"] = value
    return QueueSettings(**out)


_AGE = re.compile(r"([0-9]+)([YMDhms])")
_AGE_MS = {"Y": 365 * 86400_000, "M": 30 * 86400_000, "D": 86400_000, "h": 3600_000,
           "m": 60_000, "s": 1000}


def max_age_ms(where: str, value: Any) -> int:
    """A stream's x-max-age ("7D", "12h", "30m", "10s"; Y and M too) in ms; none of zero."""
    text = _string_arg(where, "x-max-age", value)
    ms = interval_ms(text)
    if ms is None:
        raise PreconditionFailed(f"invalid arg 'x-max-age' for {where}: invalid_max_age")
    return ms


def interval_ms(text: str) -> int | None:
    """An interval as streams take them (x-max-age, x-stream-offset) in ms; None if it is
    not one (or is zero)."""
    match = _AGE.fullmatch(text)
    if match is None or not int(match.group(1)):
        return None
    return int(match.group(1)) * _AGE_MS[match.group(2)]


# Erlang's string:to_integer, which RabbitMQ parses the expiration property with: an optional
# sign and digits, then whatever is left over.
_LEADING_INTEGER = re.compile(r"([+-]?[0-9]+)(.*)", re.S)


def check_expiration(value: str) -> int:
    """The `expiration` property in ms; 406 with RabbitMQ's reason when it is not a
    non-negative integer string within ten years."""
    match = _LEADING_INTEGER.fullmatch(value)
    if match is None:
        reason = "no_integer"
    elif match.group(2):
        leftover = match.group(2).replace("\\", "\\\\").replace('"', '\\"')
        reason = f'{{leftover_string,"{leftover}"}}'
    else:
        ms = int(match.group(1))
        if 0 <= ms <= MAX_EXPIRY:
            return ms
        reason = f"{{value_negative,{ms}}}" if ms < 0 else f"{{value_too_large,{ms}}}"
    raise PreconditionFailed(f"invalid expiration '{value}': {reason}")


def consumer_priority(arguments: dict, queue: str, vhost: str) -> int:
    """The `x-priority` consume argument (0 without it): any integer, else RabbitMQ's 406."""
    return _int(f"queue '{queue}' in vhost '{vhost}'", "x-priority",
                arguments.get("x-priority", 0), -2**63)  # the lowest AMQP long
