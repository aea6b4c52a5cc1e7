"""What every Python driver shares: reading the script, the step loop, value conversions.

A driver is a class with one method per script operation (``op_connect`` ...), sync or
async; ``Driver`` holds the operations that only wait or poll, so each driver keeps just its
library's calls. The loop saves each result under the step's ``save`` key; an exception becomes
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
from typing import Any, Awaitable, Callable
from urllib.parse import urlencode, urlsplit, urlunsplit

from interop.bodies import describe_body, make_body

Step = dict[str, Any]

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


def described(body: bytes | str) -> Any:
    """A delivered or returned body as reported; a library that decoded it gets it re-encoded."""
    return describe_body(body.encode() if isinstance(body, str) else bytes(body))


# --- step arguments, in the keyword names most libraries share ----------------------------

def exchange_flags(step: Step) -> dict[str, bool]:
    return {"passive": step.get("passive", False), "durable": step.get("durable", False),
            "auto_delete": step.get("auto_delete", False)}


def queue_flags(step: Step) -> dict[str, Any]:
    return {"passive": step.get("passive", False), "durable": step.get("durable", False),
            "exclusive": step.get("exclusive", False), "auto_delete": step.get("auto_delete", False),
            "arguments": step.get("args")}


def declare_ok(ok: Any) -> dict[str, int]:
    """queue_declare's result; pika wraps the Declare-Ok method in a frame."""
    ok = getattr(ok, "method", ok)
    return {"messages": ok.message_count, "consumers": ok.consumer_count}


def with_query(url: str, **query: Any) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query=urlencode(query)))


def settle(channel: Any, tag: Any, ack: str) -> Any:
    """Ack, reject or nack (never requeued) what a get step fetched; 'noack'/'none' leave it.

    For channels with the AMQP method names (pika, py-amqp, aiormq); returns what the library
    returns, which aiormq's caller must await.
    """
    if ack == "ack":
        return channel.basic_ack(tag)
    if ack in ("reject", "nack"):
        return getattr(channel, f"basic_{ack}")(tag, requeue=False)
    return None


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
        self.bodies.append(described(body))

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

    def unsupported(self, step: Step) -> None:
        raise Unsupported(step["op"])

    @staticmethod
    def body(step: Step) -> bytes:
        return make_body(step.get("body", ""))


class ClientDriver(Driver):
    """A driver over a client library: the operations that only wait or poll, written once.

    Those whose library blocks (pika's BlockingConnection, py-amqp) run them too: nothing else
    shares their event loop, and they override ``_idle`` so that waiting lets the library read
    frames. (Drivers that are not libraries, like amqp-tools, keep the bare ``Driver``: an
    operation they lack must stay unsupported.)
    """

    def _conn(self, step: Step) -> Any:
        return self.conns[step.get("conn", "c")]

    def _ch(self, step: Step) -> Any:
        return self.chans[step.get("ch", "ch")]

    def _url(self, step: Step) -> str:
        """The step's URL, with the heartbeat as a query parameter (for libraries that read it there)."""
        url = step.get("url", self.url)
        return with_query(url, heartbeat=step["heartbeat"]) if "heartbeat" in step else url

    def record_return(self, reply_code: int, exchange: str, routing_key: str, body: bytes | str) -> None:
        self.returned.append({"reply_code": reply_code, "exchange": exchange,
                              "routing_key": routing_key, "body": described(body)})

    def consumer_cancelled(self, tag: str) -> None:
        """The broker's basic.cancel for one of our consumers arrived."""
        if tag in self.consumers:
            self.consumers[tag].cancelled = True

    def op_wait_confirms(self, step: Step) -> str:
        return "ok"  # unless a driver says otherwise, each publish already waited for its confirm

    async def _idle(self, step: Step, seconds: float) -> None:
        await asyncio.sleep(seconds)  # an asyncio library's reader runs meanwhile

    async def _get_pause(self, step: Step) -> None:
        await asyncio.sleep(0.05)  # between basic.gets while a get step waits for a message

    async def _connect(self, step: Step, attempt: Callable[[], Any], errors: tuple[type, ...]) -> None:
        """Open the step's connection, retrying refused connects for its ``retry_for`` seconds."""
        until = deadline(step.get("retry_for", 0))
        while True:
            try:
                conn = attempt()
                self.conns[step.get("conn", "c")] = await conn if inspect.isawaitable(conn) else conn
                return
            except errors:
                if time.monotonic() > until:
                    raise
                await asyncio.sleep(0.5)

    async def _wait(self, step: Step, done: Callable[[], bool], settling: bool = True) -> None:
        """Idle until done() or the step's timeout, then on for its ``settle`` seconds (to catch
        what arrives after the count); even 0 lets what was already read be dispatched."""
        until = deadline(step.get("timeout", 5))
        while not done() and time.monotonic() < until:
            await self._idle(step, 0.05)
        if settling:
            await self._idle(step, step.get("settle", 0))

    async def _fetch(self, step: Step, no_ack: bool) -> Callable[[], Awaitable[Any]]:
        """A function doing one basic.get on the step's queue: the library's message, or None."""
        raise NotImplementedError

    async def _fetched(self, step: Step, got: Any, ack: str) -> dict[str, Any]:
        """Settle a fetched message as the step asks (see ``settle``) and report it."""
        raise NotImplementedError

    async def op_get(self, step: Step) -> Any:
        ack = step.get("ack", "ack")
        fetch = await self._fetch(step, ack == "noack")
        until = deadline(step.get("wait", 0))
        while (got := await fetch()) is None:
            if time.monotonic() > until:
                return "empty"
            await self._get_pause(step)
        return await self._fetched(step, got, ack)

    async def op_get_all(self, step: Step) -> list[Any]:
        out = []
        while (msg := await self.op_get({**step, "wait": 0})) != "empty":
            out.append(msg["body"])
        return out

    async def op_returns(self, step: Step) -> list[dict[str, Any]]:
        await self._wait(step, lambda: len(self.returned) >= step["count"])
        return list(self.returned)

    async def op_deliveries(self, step: Step) -> list[Any]:
        log = self.consumers[step["tag"]]
        await self._wait(step, lambda: len(log.bodies) >= step["count"])
        return log.snapshot()

    async def op_cancelled(self, step: Step) -> bool:
        log = self.consumers[step["tag"]]
        await self._wait(step, lambda: log.cancelled, settling=False)
        return log.cancelled

    async def op_sleep(self, step: Step) -> None:
        await self._idle(step, step["seconds"])  # the library answers heartbeats meanwhile


class BlockingDriver(ClientDriver):
    """A blocking library whose channel has the AMQP methods by name (pika's BlockingChannel,
    py-amqp): waiting means letting it read frames, which ``_pump`` does."""

    def _pump(self, step: Step, seconds: float) -> None:
        raise NotImplementedError

    async def _idle(self, step: Step, seconds: float) -> None:
        self._pump(step, seconds)

    def op_close(self, step: Step) -> None:
        self._conn(step).close()

    def op_exchange_declare(self, step: Step) -> None:
        self._ch(step).exchange_declare(step["exchange"], step.get("type", "direct"), **exchange_flags(step))

    def op_exchange_delete(self, step: Step) -> None:
        self._ch(step).exchange_delete(step["exchange"])

    def op_queue_declare(self, step: Step) -> dict[str, int]:
        return declare_ok(self._ch(step).queue_declare(step["queue"], **queue_flags(step)))

    def op_queue_bind(self, step: Step) -> None:
        self._ch(step).queue_bind(step["queue"], step["exchange"], step.get("routing_key", ""),
                                  arguments=step.get("args") or None)

    def op_queue_delete(self, step: Step) -> None:
        self._ch(step).queue_delete(step["queue"])

    def op_ack(self, step: Step) -> None:
        log = self.consumers[step["tag"]]
        log.channel.basic_ack(log.take_unacked())

    def op_cancel(self, step: Step) -> None:
        self.consumers[step["tag"]].channel.basic_cancel(step["tag"])

    def op_sync(self, step: Step) -> None:
        self._ch(step).exchange_declare("amq.direct", "direct", passive=True)


class Unsupported(Exception):
    """The library cannot express this operation."""


# --- the step loop ----------------------------------------------------------------------

def _record(observed: dict[str, Any], step: Step, index: int, result: Any,
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


def _result(step: Step, value: Any) -> Any:
    return "ok" if value is None else value


def announce(index: int, step: Step) -> None:
    """Tell the harness (on stderr) which step runs, so a timeout can name the step that hung."""
    sys.stderr.write(f"interop-step {index} {step['op']}\n")
    sys.stderr.flush()


async def run_steps(driver: Driver, steps: list[Step]) -> dict[str, Any]:
    observed: dict[str, Any] = {}
    for i, step in enumerate(steps):
        announce(i, step)
        method = getattr(driver, "op_" + step["op"], driver.unsupported)
        try:
            value = method(step)
            if inspect.isawaitable(value):
                value = await value
            result, exc = _result(step, value), None
        except Exception as e:  # noqa: BLE001 - every failure is an observation
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
        observed = asyncio.run(run_steps(driver, steps))
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
