"""The data directory of format 1 in tests/fixtures/format1/, and what it holds.

It was written by the store as it was at commit 139323a (records `u32 length | u32 crc32 |
type | payload`, no magic; arguments pickled), through that store's own API, so that the
upgrade is tested on what an older mq really wrote. tests/test_store_migration.py checks
that expected() comes back. To write it again (only if it is lost):

    git archive 139323a | tar -x -C /tmp/old
    (cd /tmp/old && python setup.py build_ext --inplace)
    PYTHONPATH=/tmp/old python tests/format1_fixture.py tests/fixtures/format1
"""
from __future__ import annotations

import datetime
import os
import sys
from decimal import Decimal

SEGMENT_SIZE = 2048
UTC = datetime.timezone.utc

# Every AMQP field type, as pamqp decodes it from a declare.
TYPED_ARGS = {
    "bool": True, "false": False, "byte": -5, "ubyte": 200, "short": -30000, "ushort": 60000,
    "int": -2**31, "uint": 2**32 - 1, "long": -2**63, "ulong": 2**63 - 1, "float": 1.5,
    "double": 0.1, "decimal": Decimal(15) * (Decimal(10) ** -1),
    "decimal0": Decimal(0) * (Decimal(10) ** -2), "str": "héllo ✓", "rawstr": b"\xff\xfe",
    "bytes": bytearray(b"\x00\x01\x02"), "array": [1, "a", [True, None], {"k": 2.5}],
    "timestamp": datetime.datetime.fromtimestamp(1700000000, tz=UTC),
    "timestamp_ms": datetime.datetime.fromtimestamp(1700000000123 / 1000.0, tz=UTC),
    "table": {"nested": {"deep": [b"x"]}, "empty": {}}, "void": None, "x-max-priority": 4,
}
BINDING_ARGS = {"x-match": "all", "k": "v", "n": 7, "when": TYPED_ARGS["timestamp"],
                "d": Decimal(12345) * (Decimal(10) ** -3)}


def props(priority: int | None) -> bytes:
    """delivery_mode=2, with a priority if given (raw property bytes)."""
    return b"\x10\x00\x02" if priority is None else b"\x18\x00\x02" + bytes((priority,))


def plan() -> list[tuple]:
    """The operations, in order: what make() does and expected() replays."""
    ops: list[tuple] = [
        ("exchange", "/", "x.topic", "topic", False, False, {"alternate-exchange": "ae"}),
        ("exchange", "/", "ae", "fanout", True, True, {}),
        ("exchange", "other", "x.headers", "headers", False, False, {"typed": TYPED_ARGS}),
        ("queue", "/", "typed", False, TYPED_ARGS),
        ("queue", "/", "q1", False, {"x-max-priority": 5}),
        ("queue", "/", "q2", True, {}),
        ("queue", "/", "gone", False, {"x-message-ttl": 1000}),
        ("bind", "/", "x.topic", False, "q1", "a.#", {}),
        ("bind", "other", "x.headers", False, "typed", "", BINDING_ARGS),
        ("bind", "/", "x.topic", True, "ae", "k", {"x-match": "any"}),
        ("bind", "/", "x.topic", False, "q2", "gone.*", {}),
    ]
    for i in range(60):
        queues = ("q1", "q2") if i % 4 == 0 else ("q1",)
        ops.append(("publish", i, queues, i % 6 if i % 2 else None,
                    1_900_000_000.5 + i if i % 7 == 0 else 0.0))
    ops.append(("publish", 1000, ("gone",), None, 0.0))
    for i in range(0, 60, 3):
        ops.append(("ack", "q1", i))
    for i in range(0, 60, 5):
        ops.append(("deliver", "q1", i))
    ops.append(("deliver", "q2", 4))
    ops.append(("ack", "q2", 8))
    ops += [("delete_queue", "/", "gone"),
            ("unbind", "/", "x.topic", False, "q2", "gone.*", {})]
    return ops


def body(i: int) -> bytes:
    return b"body %d " % i + bytes(range(256)) * (i % 3)


def make(directory: str) -> None:
    """Write the directory with the store on sys.path (the one of commit 139323a)."""
    from mq._core.message import Message
    from mq.store import Store
    from mq.store.format import FORMAT
    assert FORMAT == 1, "run with the store of commit 139323a on PYTHONPATH"
    store = Store(directory, segment_size=SEGMENT_SIZE)
    store.open()
    qids, msgs = {}, {}
    for op in plan():
        kind = op[0]
        if kind == "exchange":
            store.declare_exchange(*op[1:])
        elif kind == "queue":
            qids[op[2]] = store.declare_queue(*op[1:])
        elif kind == "bind":
            store.bind(*op[1:])
        elif kind == "unbind":
            store.unbind(*op[1:])
        elif kind == "delete_queue":
            store.delete_queue(*op[1:])
        elif kind == "publish":
            _, i, queues, priority, expires = op
            msgs[i] = Message("ex", "rk.%d" % i, props(priority), body(i))
            for q in queues:
                store.enqueue(qids[q], msgs[i], expires)
        elif kind == "ack":
            store.ack(qids[op[1]], msgs[op[2]].store_id)
        elif kind == "deliver":
            store.delivered(qids[op[1]], msgs[op[2]].store_id)
    store.sync()
    store.close()
    os.unlink(os.path.join(directory, "lock"))


def expected() -> dict:
    """What a store opened on the directory must recover: exchanges ((vhost, name) -> (type,
    auto_delete, internal, arguments)), queues (name -> (auto_delete, arguments, [(body,
    priority, expires, redelivered)])) and bindings ((vhost, source, to_exchange,
    destination, key) -> arguments)."""
    exchanges, queues, bindings = {}, {}, {}
    for op in plan():
        kind = op[0]
        if kind == "exchange":
            exchanges[(op[1], op[2])] = op[3:]
        elif kind == "queue":
            queues[op[2]] = (op[3], op[4], {})
        elif kind == "bind":
            bindings[op[1:6]] = op[6]
        elif kind == "unbind":
            del bindings[op[1:6]]
        elif kind == "delete_queue":
            del queues[op[2]]
        elif kind == "publish":
            _, i, names, priority, expires = op
            for q in names:
                if q in queues:
                    queues[q][2][i] = [body(i), priority or 0, expires, False]
        elif kind == "ack":
            queues[op[1]][2].pop(op[2], None)
        elif kind == "deliver" and op[2] in queues[op[1]][2]:
            queues[op[1]][2][op[2]][3] = True
    return {"exchanges": exchanges,
            "queues": {name: (auto_delete, args, [tuple(v) for _, v in sorted(m.items())])
                       for name, (auto_delete, args, m) in queues.items()},
            "bindings": bindings}


if __name__ == "__main__":
    make(sys.argv[1])
