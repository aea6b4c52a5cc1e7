"""What every Python driver shares: reading the script, the step loop, value conversions.

A driver is a class with one method per script operation (``op_connect`` ...), sync or
async. The loop saves each result under the step's ``save`` key; an exception becomes
``{"error": code}`` there (or, for a step without ``save``, ends the script as ``_abort``).
"""
from __future__ import annotations

import asyncio
import datetime
import decimal
import inspect
import json
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from interop.bodies import describe_body, make_body

PROPERTY_NAMES = ("content_type", "content_encoding", "delivery_mode", "priority", "correlation_id",
                  "reply_to", "expiration", "message_id", "timestamp", "type", "user_id", "app_id")


# --- header values: typed script values <-> native Python values --------------------------

def to_native(value: dict[str, Any], byte_array: type = bytes) -> Any:
    """The Python value the common libraries (pika, py-amqp, pamqp) encode as that field type.

    pamqp takes a byte array only as ``bytearray``, the others as ``bytes``.
    """
    kind, inner = value["type"], value["value"]
    if kind == "decimal":
        return decimal.Decimal(inner)
    if kind == "timestamp":
        return datetime.datetime.fromtimestamp(inner, tz=datetime.timezone.utc).replace(tzinfo=None)
    if kind == "table":
        return {k: to_native(v, byte_array) for k, v in inner.items()}
    if kind == "array":
        return [to_native(v, byte_array) for v in inner]
    if kind == "bytes":
        return byte_array(bytes.fromhex(inner))
    if kind == "void":
        return None
    return inner


def from_native(value: Any) -> dict[str, Any]:
    """A received header value as the typed JSON every driver reports."""
    if value is None:
        return {"type": "void", "value": None}
    if isinstance(value, bool):
        return {"type": "bool", "value": value}
    if isinstance(value, int):
        return {"type": "int", "value": value}
    if isinstance(value, float):
        return {"type": "float", "value": value}
    if isinstance(value, decimal.Decimal):
        return {"type": "decimal", "value": str(value)}
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        return {"type": "timestamp", "value": int(value.timestamp())}
    if isinstance(value, dict):
        return {"type": "table", "value": {str(k): from_native(v) for k, v in value.items()}}
    if isinstance(value, (list, tuple)):
        return {"type": "array", "value": [from_native(v) for v in value]}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"type": "bytes", "value": bytes(value).hex()}
    return {"type": "str", "value": str(value)}


def native_headers(headers: dict[str, Any] | None, unsupported: tuple[str, ...] = (),
                   byte_array: type = bytes) -> tuple[dict[str, Any] | None, list[str]]:
    """Native header values, leaving out (and naming) the field types the library cannot send."""
    if headers is None:
        return None, []
    unsent = sorted(k for k, v in headers.items() if v["type"] in unsupported)
    return {k: to_native(v, byte_array) for k, v in headers.items() if k not in unsent}, unsent


def sent(unsent: list[str]) -> Any:
    """A publish's result: 'ok', or which headers the library could not express."""
    return {"unsent": unsent} if unsent else "ok"


def timestamp_of(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        return int(value.timestamp())
    return int(value)


def message(body: bytes | str, props: dict[str, Any], headers: dict[str, Any] | None, *,
            redelivered: bool = False, exchange: str = "", routing_key: str = "") -> dict[str, Any]:
    """The common report of a received message."""
    props = {k: v for k, v in props.items() if v is not None and k in PROPERTY_NAMES}
    if "timestamp" in props:
        props["timestamp"] = timestamp_of(props["timestamp"])
    for k in ("delivery_mode", "priority"):
        if k in props:
            props[k] = int(props[k])
    if isinstance(body, str):  # some libraries decode text bodies themselves
        try:
            body = body.encode(props.get("content_encoding") or "utf-8")
        except LookupError:  # e.g. kombu's "binary"
            body = body.encode("utf-8")
    return {
        "body": describe_body(bytes(body)),
        "props": props,
        "headers": {k: from_native(v) for k, v in (headers or {}).items()},
        "redelivered": bool(redelivered),
        "exchange": exchange,
        "routing_key": routing_key,
    }


# --- errors -----------------------------------------------------------------------------

NAMED_CODES = (("NotFound", 404), ("Locked", 405), ("ChannelAccessRefused", 403),
               ("PreconditionFailed", 406))


def error_code(exc: BaseException) -> Any:
    """The AMQP reply code behind an exception, looking through causes; 'auth'/'closed'/'timeout' else."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        for attr in ("reply_code", "code"):
            code = getattr(current, attr, None)
            if isinstance(code, int) and 300 <= code < 600:
                return code
        for arg in getattr(current, "args", ()):
            if isinstance(arg, int) and 300 <= arg < 600:
                return arg
            if isinstance(arg, BaseException):
                pending.append(arg)
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    name = type(exc).__name__
    for part, code in NAMED_CODES:  # libraries that map the code to a class and drop it (aiormq)
        if part in name:
            return code
    if "Auth" in name:
        return "auth"
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return "timeout"
    return "closed" if "Closed" in name or "Connection" in name else name


# --- bookkeeping shared by drivers -------------------------------------------------------

@dataclass
class ConsumerLog:
    """Deliveries one consumer received; acks go oldest first."""

    channel: Any
    bodies: list[Any] = field(default_factory=list)
    tags: list[Any] = field(default_factory=list)
    next_ack: int = 0
    cancelled: bool = False

    def add(self, delivery_tag: Any, body: bytes | str) -> None:
        self.tags.append(delivery_tag)
        self.bodies.append(describe_body(body.encode() if isinstance(body, str) else bytes(body)))

    def snapshot(self) -> list[Any]:
        return list(self.bodies)

    def take_unacked(self) -> Any:
        tag = self.tags[self.next_ack]
        self.next_ack += 1
        return tag


class Driver:
    """Base for drivers: named connections/channels/consumers and the step defaults."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conns: dict[str, Any] = {}
        self.chans: dict[str, Any] = {}
        self.consumers: dict[str, ConsumerLog] = {}
        self.returned: list[dict[str, Any]] = []

    def unsupported(self, step: dict[str, Any]) -> None:
        raise Unsupported(step["op"])

    @staticmethod
    def body(step: dict[str, Any]) -> bytes:
        return make_body(step.get("body", ""))


class Unsupported(Exception):
    """The library cannot express this operation."""


# --- the step loop ----------------------------------------------------------------------

def _record(observed: dict[str, Any], step: dict[str, Any], index: int, result: Any,
            exc: BaseException | None) -> bool:
    """Store a step's outcome; False when the script must stop."""
    if exc is None:
        if "save" in step:
            observed[step["save"]] = result
        return True
    if isinstance(exc, Unsupported):
        observed["_unsupported"] = f"{step['op']} not supported by this client"
        return False
    err = {"error": error_code(exc), "detail": f"{type(exc).__name__}: {exc}"[:300]}
    if "save" in step:
        observed[step["save"]] = err
        return True
    observed["_abort"] = {"step": index, "op": step["op"], **err}
    return False


def _result(step: dict[str, Any], value: Any) -> Any:
    return "ok" if value is None else value


def announce(index: int, step: dict[str, Any]) -> None:
    """Tell the harness (on stderr) which step runs, so a timeout can name the step that hung."""
    sys.stderr.write(f"interop-step {index} {step['op']}\n")
    sys.stderr.flush()


def run_sync(driver: Driver, steps: list[dict[str, Any]]) -> dict[str, Any]:
    observed: dict[str, Any] = {}
    for i, step in enumerate(steps):
        announce(i, step)
        method = getattr(driver, "op_" + step["op"], driver.unsupported)
        try:
            result, exc = _result(step, method(step)), None
        except Exception as e:  # noqa: BLE001 - every failure is an observation
            result, exc = None, e
        if not _record(observed, step, i, result, exc):
            break
    return observed


async def run_async(driver: Driver, steps: list[dict[str, Any]]) -> dict[str, Any]:
    observed: dict[str, Any] = {}
    for i, step in enumerate(steps):
        announce(i, step)
        method = getattr(driver, "op_" + step["op"], driver.unsupported)
        try:
            value = method(step)
            if inspect.isawaitable(value):
                value = await value
            result, exc = _result(step, value), None
        except Exception as e:  # noqa: BLE001
            result, exc = None, e
        if not _record(observed, step, i, result, exc):
            break
    return observed


def main(make_driver: Any) -> None:
    """Entry point of a driver module: ``python -m ... SCENARIO URL`` with the script on stdin."""
    scenario, url = sys.argv[1], sys.argv[2]
    steps = json.load(sys.stdin)["steps"]
    driver = make_driver(url)
    try:
        if inspect.iscoroutinefunction(getattr(driver, "op_connect", None)):
            observed = asyncio.run(run_async(driver, steps))
        else:
            observed = run_sync(driver, steps)
    except Exception:  # noqa: BLE001 - a crash in the driver itself
        observed = {"_crash": traceback.format_exc()[-2000:]}
    sys.stdout.write(json.dumps({"scenario": scenario, "observed": observed}) + "\n")
    sys.stdout.flush()
    try:
        if hasattr(driver, "shutdown"):
            driver.shutdown()
    finally:
        # Library threads (heartbeat, IO) must not keep the process alive after the report.
        import os
        os._exit(0)


def deadline(seconds: float) -> float:
    return time.monotonic() + seconds
