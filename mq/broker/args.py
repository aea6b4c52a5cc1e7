"""Declaration arguments: equivalence checks with RabbitMQ's wording, and hashable forms."""
from __future__ import annotations

from decimal import Decimal
from typing import Any

from mq.broker.errors import PreconditionFailed

# The arguments RabbitMQ compares on redeclare; any other argument is free to differ.
QUEUE_EQUIVALENCE_ARGS = (
    "x-expires", "x-message-ttl", "x-dead-letter-exchange", "x-dead-letter-routing-key",
    "x-max-length", "x-max-length-bytes", "x-max-priority", "x-overflow", "x-queue-mode",
    "x-single-active-consumer", "x-queue-type",
)
# A stream's retention must match too.
STREAM_EQUIVALENCE_ARGS = ("x-max-age", "x-stream-max-segment-size-bytes")
EXCHANGE_EQUIVALENCE_ARGS = ("alternate-exchange",)


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "signedint" if -(2**31) <= value < 2**31 else "long"
    if isinstance(value, float):
        return "double"
    if isinstance(value, Decimal):
        return "decimal"
    if isinstance(value, (bytes, str)):
        return "longstr"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    return "void" if value is None else type(value).__name__


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def describe_difference(received: Any, current: Any, missing: object) -> str:
    """RabbitMQ's 'received X but current is Y' wording for an argument."""
    def one(v: Any) -> str:
        return "none" if v is missing else f"the value '{_fmt(v)}' of type '{_type_name(v)}'"

    # Values of different types still print plainly ("received '5' but current is '5'"),
    # as RabbitMQ does; only a missing side brings the typed form.
    if received is not missing and current is not missing:
        return f"received '{_fmt(received)}' but current is '{_fmt(current)}'"
    return f"received {one(received)} but current is {one(current)}"


def check_equivalent(kind: str, name: str, vhost: str, fields: dict[str, tuple[Any, Any]],
                     args_received: dict, args_current: dict, compared: tuple[str, ...]) -> None:
    """Raise 406 naming the first field or argument that differs from the existing object."""
    where = f"for {kind} '{name}' in vhost '{vhost}'"
    for field, (received, current) in fields.items():
        if received != current:
            raise PreconditionFailed(
                f"inequivalent arg '{field}' {where}: "
                f"received '{_fmt(received)}' but current is '{_fmt(current)}'")
    missing = object()
    for key in compared:
        received = args_received.get(key, missing)
        current = args_current.get(key, missing)
        if received is missing and current is missing:
            continue
        if received is missing or current is missing or not same_value(received, current):
            raise PreconditionFailed(
                f"inequivalent arg '{key}' {where}: "
                + describe_difference(received, current, missing))


def same_value(a: Any, b: Any) -> bool:
    """AMQP value equality: equal value and the same kind (a bool is not an int)."""
    if isinstance(a, bool) != isinstance(b, bool):
        return False
    if isinstance(a, (bytes, str)) and isinstance(b, (bytes, str)):
        return (a.encode() if isinstance(a, str) else a) == (b.encode() if isinstance(b, str) else b)
    return a == b


def freeze(value: Any) -> Any:
    """A hashable form of a field value or table, to identify bindings by their arguments."""
    if isinstance(value, dict):
        return tuple(sorted((k, freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(freeze(v) for v in value)
    if isinstance(value, (bool, int)):
        return (type(value).__name__, value)
    return value
