"""The scenario table: what every client does, and what it must observe.

Each scenario builds a *script* (a list of steps in the small language every driver
interprets, see clients/PROTOCOL.md) and the expected observation. Names are unique per run
and per client, so all clients can run at the same time against one broker.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

from .bodies import expected_body
from .expect import AnyOf, Error

Step = dict[str, Any]


@dataclass
class Ctx:
    """Per (scenario, client) parameters a plan is built from."""

    prefix: str
    url: str
    short: bool

    def name(self, suffix: str) -> str:
        return f"{self.prefix}.{suffix}"


@dataclass
class Plan:
    steps: list[Step]
    expected: dict[str, Any]
    # Steps run by a fresh driver process after the broker was restarted (B-DUR-2).
    after_restart: list[Step] | None = None
    # Steps the reference client (REFERENCE_CLIENT) runs before / after the client under test,
    # so one client reads what another wrote; their observations join the client's.
    reference_before: list[Step] | None = None
    reference_after: list[Step] | None = None
    timeout: float = 20.0  # a healthy broker needs a few seconds; this bounds a hung client


@dataclass
class Scenario:
    name: str
    title: str
    ids: tuple[str, ...]
    build: Callable[[Ctx], Plan]
    only: frozenset[str] | None = None  # clients the scenario is written for (None: all but `excluded_by_default`)
    needs_restart: bool = False
    idle: bool = False  # mostly waits (heartbeat): runs beside the worker pool, not in it

    def applies_to(self, client: str, exclusive_clients: frozenset[str]) -> bool:
        if self.only is not None:
            return client in self.only
        return client not in exclusive_clients


def op(name: str, **args: Any) -> Step:
    return {"op": name, **args}


def typed(kind: str, value: Any) -> dict[str, Any]:
    """A header value with its AMQP field type, as scripts send and drivers report them."""
    return {"type": kind, "value": value}


def bad_password_url(url: str) -> str:
    parts = urlsplit(url)
    user = parts.username or "guest"
    host = parts.hostname or "127.0.0.1"
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit((parts.scheme, f"{user}:wrong-{user}-password@{host}{port}", parts.path, "", ""))


# --- the scenarios ---------------------------------------------------------------------


def connect(ctx: Ctx) -> Plan:
    steps = [
        op("connect", save="open"),
        op("channel"),
        op("close", save="close"),
        op("connect", conn="bad", url=bad_password_url(ctx.url), save="bad_auth"),
    ]
    # A client that announces authentication_failure_close sees 403; others see the socket close.
    return Plan(steps, {"open": "ok", "close": "ok", "bad_auth": Error(403, "auth", "closed")})


def exchanges(ctx: Ctx) -> Plan:
    n = ctx.name
    steps: list[Step] = [op("connect"), op("channel")]
    for kind in ("direct", "fanout", "topic", "headers"):
        steps.append(op("exchange_declare", exchange=n(kind), type=kind, auto_delete=False))
    bindings = [
        ("direct", "d-red", "red", None),
        ("direct", "d-green", "green", None),
        ("fanout", "f-1", "", None),
        ("fanout", "f-2", "ignored", None),
        ("topic", "t-one", "a.*", None),
        ("topic", "t-many", "a.#", None),
        ("topic", "t-many", "*.b", None),  # same queue reached twice gets one copy
        ("topic", "t-tail", "#.z", None),
        ("headers", "h-all", "", {"x-match": "all", "color": "red", "shape": "round"}),
        ("headers", "h-any", "", {"x-match": "any", "color": "red", "shape": "round"}),
    ]
    queues = sorted({q for _, q, _, _ in bindings})
    for q in queues:
        steps.append(op("queue_declare", queue=n(q)))
    for kind, q, key, args in bindings:
        steps.append(op("queue_bind", queue=n(q), exchange=n(kind), routing_key=key, args=args or {}))
    publishes = [
        ("direct", "red", "red", None),
        ("direct", "green", "green", None),
        ("direct", "blue", "blue", None),
        ("fanout", "anything", "fan", None),
        ("topic", "a.b", "a.b", None),
        ("topic", "a", "a", None),
        ("topic", "a.b.c", "a.b.c", None),
        ("topic", "x.z", "x.z", None),
        ("topic", "z", "z", None),
        ("headers", "", "both", {"color": "red", "shape": "round"}),
        ("headers", "", "color-only", {"color": "red"}),
        ("headers", "", "neither", {"color": "blue"}),
        ("headers", "", "shape-only", {"shape": "round", "color": "blue"}),
    ]
    for kind, key, body, headers in publishes:
        props = {"headers": {k: typed("str", v) for k, v in headers.items()}} if headers else {}
        steps.append(op("publish", exchange=n(kind), routing_key=key, body=body, props=props))
    for q in queues:
        steps.append(op("get_all", queue=n(q), save=q))
    for q in queues:
        steps.append(op("queue_delete", queue=n(q)))
    for kind in ("direct", "fanout", "topic", "headers"):
        steps.append(op("exchange_delete", exchange=n(kind)))
    steps.append(op("close"))
    expected = {
        "d-red": ["red"],
        "d-green": ["green"],
        "f-1": ["fan"],
        "f-2": ["fan"],
        "t-one": ["a.b"],
        "t-many": ["a.b", "a", "a.b.c"],
        "t-tail": ["x.z", "z"],
        "h-all": ["both"],
        "h-any": ["both", "color-only", "shape-only"],
    }
    return Plan(steps, expected)


def work_queue(ctx: Ctx) -> Plan:
    q = ctx.name("work")
    steps = [
        op("connect"),
        op("channel"),
        op("queue_declare", queue=q),
        op("channel", ch="ca"),
        op("channel", ch="cb"),
        op("qos", ch="ca", prefetch=1),
        op("qos", ch="cb", prefetch=1),
        op("consume", ch="ca", queue=q, tag="a"),
        op("consume", ch="cb", queue=q, tag="b"),
    ]
    steps += [op("publish", exchange="", routing_key=q, body=f"m{i}") for i in range(1, 5)]
    steps += [
        # With prefetch 1 and nothing acked, each consumer holds exactly one message.
        op("deliveries", tag="a", count=1, settle=0.5, save="a1"),
        op("deliveries", tag="b", count=1, settle=0.0, save="b1"),
        op("ack", tag="a"),
        op("deliveries", tag="a", count=2, settle=0.3, save="a2"),
        op("ack", tag="b"),
        op("deliveries", tag="b", count=2, settle=0.3, save="b2"),
        op("ack", tag="a"),
        op("ack", tag="b"),
        op("cancel", tag="a"),
        op("cancel", tag="b"),
        op("queue_delete", queue=q),
        op("close"),
    ]
    one = AnyOf(["m1"], ["m2"])
    return Plan(steps, {"a1": one, "b1": one, "a2": AnyOf(["m1", "m3"], ["m2", "m3"]),
                        "b2": AnyOf(["m1", "m4"], ["m2", "m4"])})


def confirms(ctx: Ctx) -> Plan:
    q = ctx.name("confirms")
    steps = [op("connect"), op("channel"), op("queue_declare", queue=q), op("confirm")]
    steps += [op("publish", exchange="", routing_key=q, body=f"c{i}") for i in range(20)]
    steps += [
        # Unroutable publishes are acked too.
        op("publish", exchange="", routing_key=ctx.name("nobody-home"), body="lost"),
        op("wait_confirms", save="confirmed"),
        op("queue_declare", queue=q, passive=True, save="depth"),
        op("queue_delete", queue=q),
        op("close"),
    ]
    return Plan(steps, {"confirmed": "ok", "depth": {"messages": 20}})


def mandatory(ctx: Ctx) -> Plan:
    x, q = ctx.name("mand-x"), ctx.name("mand-q")
    steps = [
        op("connect"),
        op("channel"),
        op("exchange_declare", exchange=x, type="direct"),
        op("queue_declare", queue=q),
        op("queue_bind", queue=q, exchange=x, routing_key="here"),
        op("publish", exchange=x, routing_key="nowhere", body="bounced", mandatory=True),
        op("publish", exchange=x, routing_key="here", body="kept", mandatory=True),
        op("returns", count=1, settle=0.3, save="returned"),
        op("get", queue=q, wait=2, save="kept"),
        op("queue_delete", queue=q),
        op("exchange_delete", exchange=x),
        op("close"),
    ]
    expected = {
        "returned": [{"reply_code": 312, "exchange": x, "routing_key": "nowhere", "body": "bounced"}],
        "kept": {"body": "kept"},
    }
    return Plan(steps, expected)


LARGE = 10 * 1024 * 1024


def bodies(ctx: Ctx) -> Plan:
    q = ctx.name("bodies")
    steps = [
        op("connect"),
        op("channel"),
        op("queue_declare", queue=q),
        op("publish", exchange="", routing_key=q, body={"size": LARGE}),
        op("publish", exchange="", routing_key=q, body=""),
        op("get", queue=q, wait=5, save="large"),
        op("get", queue=q, wait=5, save="empty"),
        op("queue_delete", queue=q),
        op("close"),
    ]
    return Plan(steps, {"large": {"body": expected_body({"size": LARGE})}, "empty": {"body": ""}},
                timeout=60)


HEADER_VALUES = {
    "str": typed("str", "text \u00fc\u2713"),
    "int": typed("int", -42),
    "long": typed("long", 2**40),
    "bool": typed("bool", True),
    "float": typed("float", 1.5),
    "decimal": typed("decimal", "12.345"),
    "timestamp": typed("timestamp", 1700000000),
    "table": typed("table", {"inner": typed("str", "x"), "n": typed("int", 7)}),
    # The boolean is not last: bunny's amq-protocol 2.3.2 decoder drops a boolean that ends an
    # array (a client bug, see README), which would hide everything else this checks.
    "array": typed("array", [typed("int", 1), typed("bool", False), typed("str", "two")]),
    "void": typed("void", None),
    "bytes": typed("bytes", "00ff10"),  # hex of the raw bytes
}

PROPERTIES = {
    "content_type": "application/json",
    "content_encoding": "utf-8",
    "delivery_mode": 2,
    "priority": 3,
    "correlation_id": "corr-1",
    "reply_to": "reply-queue",
    "expiration": "600000",
    "message_id": "msg-1",
    "timestamp": 1700000000,
    "type": "kind",
    "user_id": "guest",  # must be the connection's user, as RabbitMQ checks
    "app_id": "interop",
}


def reported_header(value: dict[str, Any]) -> dict[str, Any]:
    """What a consumer reports for a sent header value: 'long' is reported as 'int'."""
    kind, inner = value["type"], value["value"]
    if kind == "long":
        kind = "int"
    elif kind == "table":
        inner = {k: reported_header(v) for k, v in inner.items()}
    elif kind == "array":
        inner = [reported_header(v) for v in inner]
    return {"type": kind, "value": inner}


def headers(ctx: Ctx) -> Plan:
    q = ctx.name("headers")
    user = urlsplit(ctx.url).username or "guest"
    props = dict(PROPERTIES, user_id=user, headers=HEADER_VALUES)
    steps = [
        op("connect"),
        op("channel"),
        op("queue_declare", queue=q),
        op("publish", exchange="", routing_key=q, body="typed", props=props, save="sent"),
        op("get", queue=q, wait=2, full=True, save="message"),
        op("queue_delete", queue=q),
        op("close"),
    ]
    want_props = dict(PROPERTIES, user_id=user)
    want_headers = {k: reported_header(v) for k, v in HEADER_VALUES.items()}
    # The harness drops header names a driver said it cannot send (its "sent.unsent").
    return Plan(steps, {"message": {"body": "typed", "props": want_props, "headers": want_headers}})


# aiormq (pamqp) can write and read every field type, so it is the other side of the
# cross-client header scenarios.
REFERENCE_CLIENT = "aiormq"


def headers_read(ctx: Ctx) -> Plan:
    """B-PUB-5: every field type written by the reference client, read by this one."""
    q = ctx.name("headers-in")
    user = urlsplit(ctx.url).username or "guest"
    props = dict(PROPERTIES, user_id=user, headers=HEADER_VALUES)
    before = [op("connect"), op("channel"), op("queue_declare", queue=q),
              op("publish", exchange="", routing_key=q, body="typed", props=props), op("close")]
    steps = [op("connect"), op("channel"), op("get", queue=q, wait=2, full=True, save="message"),
             op("queue_delete", queue=q), op("close")]
    want = {"body": "typed", "props": dict(PROPERTIES, user_id=user),
            "headers": {k: reported_header(v) for k, v in HEADER_VALUES.items()}}
    return Plan(steps, {"message": want}, reference_before=before)


def headers_write(ctx: Ctx) -> Plan:
    """B-PUB-5: every field type this client can write, read back by the reference client."""
    q = ctx.name("headers-out")
    user = urlsplit(ctx.url).username or "guest"
    props = dict(PROPERTIES, user_id=user, headers=HEADER_VALUES)
    # Confirmed before closing, so the publish is known to be in the queue for the reader.
    steps = [op("connect"), op("channel"), op("queue_declare", queue=q), op("confirm"),
             op("publish", exchange="", routing_key=q, body="typed", props=props, save="sent"),
             op("wait_confirms", save="confirmed"), op("close")]
    after = [op("connect"), op("channel"), op("get", queue=q, wait=2, full=True, save="message"),
             op("queue_delete", queue=q), op("close")]
    want = {"body": "typed", "props": dict(PROPERTIES, user_id=user),
            "headers": {k: reported_header(v) for k, v in HEADER_VALUES.items()}}
    return Plan(steps, {"message": want}, reference_after=after)


def priority(ctx: Ctx) -> Plan:
    q = ctx.name("prio")
    sent = [("p1", 1), ("p0", None), ("p5", 5), ("p3a", 3), ("p3b", 3), ("p9", 9)]
    steps = [op("connect"), op("channel"), op("queue_declare", queue=q, args={"x-max-priority": 5})]
    for body, prio in sent:
        props = {} if prio is None else {"priority": prio}
        steps.append(op("publish", exchange="", routing_key=q, body=body, props=props))
    steps += [op("get_all", queue=q, save="order"), op("queue_delete", queue=q), op("close")]
    # Above the maximum counts as the maximum; equal priorities keep publish order; none is 0.
    return Plan(steps, {"order": ["p5", "p9", "p3a", "p3b", "p1", "p0"]})


def death_record(queue: str, reason: str, rk: str, extra: dict[str, Any] | None = None) -> dict:
    fields = {
        "queue": typed("str", queue),
        "reason": typed("str", reason),
        "count": typed("int", 1),
        "exchange": typed("str", ""),
        "routing-keys": typed("array", [typed("str", rk)]),
    }
    fields.update(extra or {})
    return {"x-death": typed("array", [typed("table", fields)]),
            "x-first-death-queue": typed("str", queue),
            "x-first-death-reason": typed("str", reason),
            "x-first-death-exchange": typed("str", "")}


def ttl_dlx(ctx: Ctx) -> Plan:
    src, dead, dlx = ctx.name("ttl-src"), ctx.name("ttl-dead"), ctx.name("ttl-dlx")
    steps = [
        op("connect"),
        op("channel"),
        op("exchange_declare", exchange=dlx, type="fanout"),
        op("queue_declare", queue=dead),
        op("queue_bind", queue=dead, exchange=dlx, routing_key=""),
        # Queue TTL one minute, message TTL 100 ms: the lower one applies (B-TTL-1).
        op("queue_declare", queue=src, args={"x-message-ttl": 60000, "x-dead-letter-exchange": dlx}),
        op("publish", exchange="", routing_key=src, body="expired", props={"expiration": "100"}),
        op("get", queue=dead, wait=5, save="dead"),
        op("queue_declare", queue=src, passive=True, save="src"),
        op("queue_delete", queue=src),
        op("queue_delete", queue=dead),
        op("exchange_delete", exchange=dlx),
        op("close"),
    ]
    record = death_record(src, "expired", src, {"original-expiration": typed("str", "100")})
    return Plan(steps, {"dead": {"body": "expired", "headers": record}, "src": {"messages": 0}})


def reject_dlx(ctx: Ctx) -> Plan:
    src, dead = ctx.name("rej-src"), ctx.name("rej-dead")
    steps = [
        op("connect"),
        op("channel"),
        op("queue_declare", queue=dead),
        op("queue_declare", queue=src,
           args={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead}),
        op("publish", exchange="", routing_key=src, body="refused"),
        op("get", queue=src, wait=2, ack="reject", save="got"),
        op("get", queue=dead, wait=3, save="dead"),
        op("queue_delete", queue=src),
        op("queue_delete", queue=dead),
        op("close"),
    ]
    return Plan(steps, {"got": {"body": "refused", "redelivered": False},
                        "dead": {"body": "refused", "headers": death_record(src, "rejected", src)}})


def exclusive(ctx: Ctx) -> Plan:
    q = ctx.name("excl")
    steps = [
        op("connect", conn="owner"),
        op("channel", conn="owner", ch="own"),
        op("queue_declare", ch="own", queue=q, exclusive=True, save="declared"),
        op("connect", conn="other"),
        op("channel", conn="other", ch="o1"),
        op("queue_declare", ch="o1", queue=q, passive=True, save="from_other"),
        op("close", conn="owner"),
        op("sleep", conn="other", seconds=0.3),
        op("channel", conn="other", ch="o2"),
        op("queue_declare", ch="o2", queue=q, passive=True, save="after_owner_left"),
        op("close", conn="other"),
    ]
    return Plan(steps, {"declared": {"messages": 0}, "from_other": Error(405),
                        "after_owner_left": Error(404)})


def auto_delete(ctx: Ctx) -> Plan:
    q = ctx.name("autodel")
    steps = [
        op("connect"),
        op("channel"),
        op("queue_declare", queue=q, auto_delete=True),
        op("sleep", seconds=0.2),
        op("queue_declare", queue=q, passive=True, save="before_consumer"),
        op("consume", queue=q, tag="only"),
        op("cancel", tag="only"),
        op("sleep", seconds=0.3),
        op("channel", ch="probe"),
        op("queue_declare", ch="probe", queue=q, passive=True, save="after_cancel"),
        op("close"),
    ]
    return Plan(steps, {"before_consumer": {"consumers": 0}, "after_cancel": Error(404)})


def cancel_notify(ctx: Ctx) -> Plan:
    q = ctx.name("cancelled")
    steps = [
        op("connect"),
        op("channel"),
        op("queue_declare", queue=q),
        op("consume", queue=q, tag="watcher"),
        op("channel", ch="admin"),
        op("queue_delete", ch="admin", queue=q),
        op("cancelled", tag="watcher", timeout=5, save="notified"),
        op("close"),
    ]
    return Plan(steps, {"notified": True})


def heartbeat(ctx: Ctx) -> Plan:
    q = ctx.name("hb")
    beat, idle = (1, 4) if ctx.short else (10, 60)
    steps = [
        op("connect", heartbeat=beat),
        op("channel"),
        op("queue_declare", queue=q),
        op("sleep", seconds=idle),  # idle: only heartbeats keep the connection up
        op("publish", exchange="", routing_key=q, body="still here"),
        op("get", queue=q, wait=2, save="after_idle"),
        op("queue_delete", queue=q),
        op("close"),
    ]
    return Plan(steps, {"after_idle": {"body": "still here"}}, timeout=idle + 30)


def restart(ctx: Ctx) -> Plan:
    q = ctx.name("durable")
    before = [
        op("connect"),
        op("channel"),
        op("queue_declare", queue=q, durable=True),
        op("confirm"),
        op("publish", exchange="", routing_key=q, body="p1", props={"delivery_mode": 2}),
        op("publish", exchange="", routing_key=q, body="transient", props={"delivery_mode": 1}),
        op("publish", exchange="", routing_key=q, body="p2", props={"delivery_mode": 2, "priority": 1}),
        op("wait_confirms", save="confirmed"),
        op("close"),
    ]
    after = [
        op("connect", retry_for=60),
        op("channel"),
        op("get_all", queue=q, save="survivors"),
        op("queue_delete", queue=q),
        op("close"),
    ]
    return Plan(before, {"confirmed": "ok", "survivors": ["p1", "p2"]}, after_restart=after, timeout=75)


def channel_error(ctx: Ctx) -> Plan:
    q = ctx.name("after-error")
    steps = [
        op("connect"),
        op("channel"),
        # The 404 arrives as channel.close; a client waiting for a confirm sees it at once,
        # every client sees it on the next call on that channel.
        op("publish", exchange=ctx.name("missing-exchange"), routing_key="x", body="void",
           save="publish"),
        op("sync", save="channel_closed"),
        op("channel", ch="fresh"),
        op("queue_declare", ch="fresh", queue=q),
        op("publish", ch="fresh", exchange="", routing_key=q, body="fine"),
        op("get", ch="fresh", queue=q, wait=2, save="after"),
        op("queue_delete", ch="fresh", queue=q),
        op("close", save="conn_closed"),
    ]
    return Plan(steps, {"publish": AnyOf("ok", Error(404)), "channel_closed": Error(404), "after": {"body": "fine"}, "conn_closed": "ok"})


def celery_tasks(ctx: Ctx) -> Plan:
    # Interpreted only by the celery driver: a worker runs tasks, results come back over rpc://.
    steps = [op("celery", queue=ctx.name("tasks"), tasks=10, save="tasks")]
    expected = {"tasks": {"results": [i * 2 for i in range(10)], "failure": "ValueError"}}
    return Plan(steps, expected, timeout=90)


CELERY = frozenset({"celery"})

SCENARIOS: list[Scenario] = [
    Scenario("connect", "connect, close, wrong password", ("B-CONN-3",), connect),
    Scenario("exchanges", "direct/fanout/topic/headers routing", ("B-EX-7", "B-EX-8"), exchanges),
    Scenario("work-queue", "prefetch 1, manual ack, two consumers", ("B-CON-4", "B-CON-5"), work_queue),
    Scenario("confirms", "publisher confirms", ("B-PUB-6",), confirms),
    Scenario("mandatory", "mandatory publish returned", ("B-PUB-2",), mandatory),
    Scenario("bodies", "10 MiB and empty bodies", ("B-PUB-4",), bodies),
    Scenario("headers", "every property and header field type", ("B-PUB-5",), headers),
    Scenario("headers-read", "header types written by aiormq, read here", ("B-PUB-5",), headers_read),
    Scenario("headers-write", "header types written here, read by aiormq", ("B-PUB-5",), headers_write),
    Scenario("priority", "priority queue order", ("B-PRI-1",), priority),
    Scenario("ttl-dlx", "TTL expiry dead-lettered, x-death", ("B-TTL-1", "B-TTL-2", "B-DLX-3"), ttl_dlx),
    Scenario("reject-dlx", "reject to dead-letter queue", ("B-DLX-1", "B-DLX-3"), reject_dlx),
    Scenario("exclusive", "exclusive queue locked, gone with owner", ("B-Q-4",), exclusive),
    Scenario("auto-delete", "auto-delete after last consumer", ("B-Q-5",), auto_delete),
    Scenario("cancel-notify", "consumer cancelled on queue delete", ("B-Q-8",), cancel_notify),
    Scenario("heartbeat", "idle connection kept by heartbeats", ("B-CONN-6",), heartbeat, idle=True),
    Scenario("channel-error", "404 closes the channel, new channel works", ("B-CHAN-1", "B-PUB-1"),
             channel_error),
    Scenario("restart", "durable messages survive a restart", ("B-DUR-1", "B-DUR-2"), restart,
             needs_restart=True),
    Scenario("celery-tasks", "Celery worker, rpc:// results", ("B-CON-4",), celery_tasks,
             only=CELERY),
]

BY_NAME = {s.name: s for s in SCENARIOS}
