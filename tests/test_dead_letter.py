"""Dead lettering (B-DLX-1..5), end to end with pika; the x-death header is compared with what
RabbitMQ 3.10 writes, field order and wire types included. Run against RabbitMQ too:
MQ_TEST_URL=amqp://guest:guest@127.0.0.1:5672/ ."""
from __future__ import annotations

import datetime
import struct
import time
import urllib.parse
from decimal import Decimal

import pika
import pytest
from pamqp import commands as spec

from amqputil import assert_channel_closed, settle
from rawamqp import RawClient
from queuetest import (Delivery, Scratch, bodies, drain, is_long, mq_only, publish, scratch,
                       wait_count, wait_get, x_death)

__all__ = ["scratch"]

# RabbitMQ's field order in the table of a message's first death; later tables are sorted.
FIRST_DEATH_FIELDS = ["count", "reason", "queue", "time", "exchange", "routing-keys"]
SORTED_FIELDS = ["count", "exchange", "queue", "reason", "routing-keys", "time"]


def reject_from(scratch: Scratch, queue: str, requeue: bool = False) -> None:
    """Take the next message of `queue` and reject it."""
    method, _, _ = wait_get(scratch.channel, queue, auto_ack=False)
    scratch.channel.basic_reject(method.delivery_tag, requeue=requeue)


def republish(scratch: Scratch, queue: str, delivery: Delivery) -> None:
    """Send a dead-lettered message on to another queue as it is, headers and all."""
    _, props, body = delivery
    scratch.channel.basic_publish("", queue, body, props)


# ---- B-DLX-1: triggers ------------------------------------------------------------------

@pytest.mark.parametrize("how", ["reject", "nack", "nack-multiple"])
def test_rejected_without_requeue_is_dead_lettered(scratch: Scratch, how: str) -> None:
    """B-DLX-1: basic.reject / basic.nack (also multiple) with requeue=false dead-letters the
    message with reason `rejected`; requeue=true does not."""
    ch = scratch.channel
    dlx, dead = scratch.dead_letter_target()
    q = scratch.queue("q", **{"x-dead-letter-exchange": dlx})
    publish(ch, q, b"one")
    publish(ch, q, b"two")
    first, _, _ = wait_get(ch, q, auto_ack=False)
    second, _, _ = wait_get(ch, q, auto_ack=False)
    if how == "reject":
        ch.basic_reject(first.delivery_tag, requeue=False)
        ch.basic_reject(second.delivery_tag, requeue=True)
        expected = [b"one"]
    elif how == "nack":
        ch.basic_nack(first.delivery_tag, requeue=False)
        ch.basic_nack(second.delivery_tag, requeue=True)
        expected = [b"one"]
    else:
        ch.basic_nack(second.delivery_tag, multiple=True, requeue=False)
        expected = [b"one", b"two"]
    wait_count(ch, dead, len(expected))
    got = drain(ch, dead)
    assert bodies(got) == expected
    assert all(x_death(p)[0]["reason"] == "rejected" for _, p, _ in got)
    assert bodies(drain(ch, q)) == [b"one", b"two"][len(expected):]


def test_maxlen_and_expired_reasons(scratch: Scratch) -> None:
    """B-DLX-1: a message pushed out by x-max-length is dead-lettered as `maxlen`, one whose
    TTL passed as `expired`."""
    ch = scratch.channel
    dlx, dead = scratch.dead_letter_target()
    full = scratch.queue("full", **{"x-dead-letter-exchange": dlx, "x-max-length": 1})
    timed = scratch.queue("timed", **{"x-dead-letter-exchange": dlx, "x-message-ttl": 200})
    publish(ch, full, b"oldest")
    publish(ch, full, b"newest")
    _, props, body = wait_get(ch, dead)
    assert (body, x_death(props)[0]["reason"], x_death(props)[0]["queue"]) == \
        (b"oldest", "maxlen", full)
    publish(ch, timed, b"slow")
    _, props, body = wait_get(ch, dead)
    assert (body, x_death(props)[0]["reason"], x_death(props)[0]["queue"]) == \
        (b"slow", "expired", timed)


# ---- B-DLX-2: where it goes, and what changes --------------------------------------------

def test_dead_letter_routing_key_replaces_original_keys(scratch: Scratch) -> None:
    """B-DLX-2: with x-dead-letter-routing-key the message is routed by that key only (CC
    keys dropped from the headers), while x-death still records the original keys."""
    ch = scratch.channel
    dlx = scratch.exchange("dlx", "direct")
    by_dlrk = scratch.queue("by-dlrk")
    by_cc = scratch.queue("by-cc")
    ch.queue_bind(by_dlrk, dlx, "parking")
    ch.queue_bind(by_cc, dlx, "cc-key")
    q = scratch.queue("q", **{"x-dead-letter-exchange": dlx,
                              "x-dead-letter-routing-key": "parking"})
    publish(ch, q, b"m", headers={"CC": ["cc-key"]})
    reject_from(scratch, q)
    method, props, _ = wait_get(ch, by_dlrk)
    assert method.routing_key == "parking" and method.exchange == dlx
    assert "CC" not in props.headers
    assert x_death(props)[0]["routing-keys"] == [q, "cc-key"]
    settle(scratch.connection)
    assert drain(ch, by_cc) == []


def test_original_keys_route_dead_letters_cc_and_bcc(scratch: Scratch) -> None:
    """B-DLX-2: without a dead-letter routing key the original routing key, CC and BCC keys
    route the dead letter (each queue once); BCC never shows in headers or in x-death."""
    ch = scratch.channel
    source = scratch.exchange("in", "direct")
    dlx = scratch.exchange("dlx", "direct")
    by_key = {key: scratch.queue(f"by-{key}") for key in ("main", "cc", "bcc")}
    for key, queue in by_key.items():
        ch.queue_bind(queue, dlx, key)
    q = scratch.queue("q", **{"x-dead-letter-exchange": dlx})
    ch.queue_bind(q, source, "main")
    ch.basic_publish(source, "main", b"m", pika.BasicProperties(
        headers={"CC": ["cc"], "BCC": ["bcc"], "keep": "me"}))
    method, props, _ = wait_get(ch, q, auto_ack=False)
    assert props.headers == {"CC": ["cc"], "keep": "me"}
    ch.basic_reject(method.delivery_tag, requeue=False)
    for key, queue in by_key.items():
        method, props, body = wait_get(ch, queue)
        assert (body, method.routing_key) == (b"m", "main")
        assert "BCC" not in props.headers and props.headers["CC"] == ["cc"]
        [death] = x_death(props)
        assert death["routing-keys"] == ["main", "cc"] and death["exchange"] == source
    settle(scratch.connection)
    assert all(drain(ch, queue) == [] for queue in by_key.values())


@pytest.mark.parametrize("headers,text", [
    ({"CC": "k"}, 'invalid message: {unacceptable_type_in_header,"CC",longstr}'),
    ({"BCC": 5}, 'invalid message: {unacceptable_type_in_header,"BCC",signedint}'),
])
def test_cc_and_bcc_must_be_arrays(connection: pika.BlockingConnection, uid: str,
                                   headers: dict, text: str) -> None:
    """B-DLX-2: CC/BCC headers route (and dead-letter) a message only as arrays of strings;
    another type is 406 with RabbitMQ's text."""
    ch = connection.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.basic_publish("amq.direct", uid, b"x", pika.BasicProperties(headers=headers))
        ch.exchange_declare("amq.direct", passive=True)  # a round trip to see the close
    assert_channel_closed(info, 406, f"PRECONDITION_FAILED - {text}")


def test_cc_elements_that_are_not_strings_are_ignored(scratch: Scratch) -> None:
    """B-DLX-2: only longstr elements of CC are routing keys (as in RabbitMQ): a byte-array
    element naming a queue does not reach it; the header stays as published."""
    ch = scratch.channel
    q = scratch.queue("q")
    by_bytes = scratch.queue("by-bytes")
    by_text = scratch.queue("by-text")
    cc = [7, by_bytes.encode(), by_text]
    publish(ch, q, b"m", headers={"CC": cc})
    _, props, _ = wait_get(ch, q)
    assert props.headers["CC"] == cc
    assert bodies([wait_get(ch, by_text)]) == [b"m"]
    settle(scratch.connection, 0.2)
    assert drain(ch, by_bytes) == []


def test_expiration_removed_and_other_properties_kept(scratch: Scratch) -> None:
    """B-DLX-2: the dead letter loses `expiration` (kept as original-expiration) and keeps
    every other property and header as published (types too)."""
    ch = scratch.channel
    dlx, dead = scratch.dead_letter_target()
    q = scratch.queue("q", **{"x-dead-letter-exchange": dlx})
    stamp = datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.timezone.utc)
    headers = {"big": 2 ** 40, "small": 7, "neg": -3, "dec": Decimal("1.5"),
               "flag": True, "nested": {"list": [1, "two"]}, "bin": b"\x00\xff"}
    publish(ch, q, b"m", expiration="60000", content_type="text/plain", delivery_mode=2,
            priority=3, correlation_id="c-1", reply_to="r", message_id="m-1",
            timestamp=int(stamp.timestamp()), type="t", app_id="app", headers=headers)
    reject_from(scratch, q)
    _, props, body = wait_get(ch, dead)
    assert props.expiration is None
    assert x_death(props)[0]["original-expiration"] == "60000"
    assert (props.content_type, props.delivery_mode, props.priority, props.correlation_id,
            props.reply_to, props.message_id, props.timestamp, props.type, props.app_id) == \
        ("text/plain", 2, 3, "c-1", "r", "m-1", int(stamp.timestamp()), "t", "app")
    assert {k: v for k, v in props.headers.items() if not k.startswith("x-")} == headers
    assert is_long(props.headers["big"]) and not is_long(props.headers["small"])


def test_headers_keep_their_wire_encoding(mq_url: str, uid: str) -> None:
    """B-DLX-2, B-PUB-5: dead lettering rewrites only what RabbitMQ rewrites: every other
    header entry (narrow and wide integers, floats, doubles, decimals, byte arrays, void,
    nested tables) reaches the dead-letter consumer as the exact bytes published, and the
    other properties too (expiration aside). Raw frames, since clients hide wire types."""
    def field(name: bytes, value: bytes) -> bytes:
        return bytes([len(name)]) + name + value

    def sized(kind: bytes, data: bytes) -> bytes:
        return kind + struct.pack(">I", len(data)) + data

    def shortstr(text: bytes) -> bytes:
        return bytes([len(text)]) + text

    # Entries in name order, so that after RabbitMQ's sort they are still in front.
    nested = field(b"n", b"l" + struct.pack(">q", 1))
    entries = b"".join([
        field(b"a-short", b"s" + struct.pack(">h", 7)),
        field(b"b-byte", b"b" + struct.pack(">b", 3)),
        field(b"c-int", b"I" + struct.pack(">i", 5)),
        field(b"d-long", b"l" + struct.pack(">q", 9)),
        field(b"e-float", b"f" + struct.pack(">f", 1.5)),
        field(b"f-double", b"d" + struct.pack(">d", -2.25)),
        field(b"g-decimal", b"D" + struct.pack(">Bi", 2, 31415)),
        field(b"h-bytes", sized(b"x", b"\x00\xff")),
        field(b"i-void", b"V"),
        field(b"j-table", sized(b"F", nested)),
        field(b"k-array", sized(b"A", b"u" + struct.pack(">H", 1) + b"T" + struct.pack(">Q", 2))),
    ])
    head = shortstr(b"text/plain")
    tail = b"\x02" + shortstr(b"corr-1")
    props = struct.pack(">H", 0x8000 | 0x2000 | 0x1000 | 0x0400 | 0x0100) + head + \
        struct.pack(">I", len(entries)) + entries + tail + shortstr(b"60000")
    port = urllib.parse.urlparse(mq_url).port
    raw = RawClient(port)
    try:
        raw.handshake()
        raw.open_channel(1)
        source, dead = f"{uid}-src", f"{uid}-dead"
        for name, arguments in ((dead, {}), (source, {"x-dead-letter-exchange": "",
                                                      "x-dead-letter-routing-key": dead})):
            raw.send_method(1, spec.Queue.Declare(queue=name, exclusive=True,
                                                  arguments=arguments))
            raw.expect("Queue.DeclareOk")
        raw.send_method(1, spec.Basic.Publish(exchange="", routing_key=source))
        raw.send_frame(2, 1, struct.pack(">HHQ", 60, 0, 1) + props)
        raw.send_frame(3, 1, b"m")
        raw.send_method(1, spec.Basic.Get(queue=source))
        tag = raw.expect("Basic.GetOk").delivery_tag
        raw.recv_raw(), raw.recv_raw()
        raw.send_method(1, spec.Basic.Reject(delivery_tag=tag, requeue=False))
        deadline = time.monotonic() + 5
        while True:
            raw.send_method(1, spec.Basic.Get(queue=dead, no_ack=True))
            _, reply = raw.recv_method()
            if reply.name == "Basic.GetOk":
                break
            assert time.monotonic() < deadline, "no dead letter"
            time.sleep(0.05)
        _, _, header = raw.recv_raw()
        raw.recv_raw()
    finally:
        raw.close()
    got = header[12:]
    assert struct.unpack(">H", got[:2])[0] == 0x8000 | 0x2000 | 0x1000 | 0x0400  # no expiration
    assert got[2:2 + len(head)] == head
    table_at = 2 + len(head)
    table_len = struct.unpack(">I", got[table_at:table_at + 4])[0]
    assert got[table_at + 4:table_at + 4 + len(entries)] == entries
    assert got[table_at + 4 + table_len:] == tail


# ---- B-DLX-3: the x-death header ---------------------------------------------------------

def test_first_death_record(scratch: Scratch) -> None:
    """B-DLX-3: a message's first death: one x-death table with RabbitMQ's fields in its
    order (count as a 64-bit long), and x-first-death-queue/-reason/-exchange."""
    ch = scratch.channel
    source = scratch.exchange("in", "topic")
    dlx, dead = scratch.dead_letter_target()
    q = scratch.queue("q", **{"x-dead-letter-exchange": dlx})
    ch.queue_bind(q, source, "a.#")
    before = int(time.time())
    ch.basic_publish(source, "a.b", b"m", pika.BasicProperties(expiration="60000"))
    reject_from(scratch, q)
    _, props, _ = wait_get(ch, dead)
    [death] = props.headers["x-death"]
    assert list(death) == FIRST_DEATH_FIELDS + ["original-expiration"]
    assert death["count"] == 1 and is_long(death["count"])
    assert (death["reason"], death["queue"], death["exchange"], death["routing-keys"]) == \
        ("rejected", q, source, ["a.b"])
    assert before - 1 <= death["time"].timestamp() <= time.time() + 1
    assert (props.headers["x-first-death-queue"], props.headers["x-first-death-reason"],
            props.headers["x-first-death-exchange"]) == (q, "rejected", source)


def test_history_newest_first_and_repeat_counted(scratch: Scratch) -> None:
    """B-DLX-3: deaths in two queues give two tables, newest first; dying again in the same
    queue for the same reason raises that table's count and moves it to the front (sorted
    fields, as RabbitMQ rewrites it); x-first-death-* never change."""
    ch = scratch.channel
    dlx, dead = scratch.dead_letter_target()
    a = scratch.queue("a", **{"x-dead-letter-exchange": dlx})
    b = scratch.queue("b", **{"x-dead-letter-exchange": dlx})
    publish(ch, a, b"m", headers={"zz": 1, "aa": 2})
    reject_from(scratch, a)
    republish(scratch, b, wait_get(ch, dead))
    reject_from(scratch, b)
    delivery = wait_get(ch, dead)
    deaths = x_death(delivery[1])
    assert [(d["queue"], d["count"]) for d in deaths] == [(b, 1), (a, 1)]
    assert list(deaths[0]) == SORTED_FIELDS and list(deaths[1]) == FIRST_DEATH_FIELDS
    republish(scratch, a, delivery)
    reject_from(scratch, a)
    _, props, _ = wait_get(ch, dead)
    deaths = x_death(props)
    assert [(d["queue"], d["reason"], d["count"]) for d in deaths] == \
        [(a, "rejected", 2), (b, "rejected", 1)]
    assert is_long(deaths[0]["count"]) and list(deaths[0]) == SORTED_FIELDS
    assert (props.headers["x-first-death-queue"], props.headers["x-first-death-reason"]) == \
        (a, "rejected")
    assert list(props.headers) == sorted(props.headers)  # RabbitMQ sorts the headers table


def test_other_reason_in_same_queue_is_its_own_entry(scratch: Scratch) -> None:
    """B-DLX-3: the same queue with another reason is a separate x-death table."""
    ch = scratch.channel
    dlx, dead = scratch.dead_letter_target()
    q = scratch.queue("q", **{"x-dead-letter-exchange": dlx, "x-message-ttl": 200})
    publish(ch, q, b"m")
    republish(scratch, q, wait_get(ch, dead))  # expired once; now reject it
    reject_from(scratch, q)
    _, props, _ = wait_get(ch, dead)
    assert [(d["queue"], d["reason"], d["count"]) for d in x_death(props)] == \
        [(q, "rejected", 1), (q, "expired", 1)]
    assert props.headers["x-first-death-reason"] == "expired"


# ---- B-DLX-4: cycles ---------------------------------------------------------------------

def test_expiry_cycle_to_itself_is_dropped(scratch: Scratch) -> None:
    """B-DLX-4: a queue dead-lettering expired messages back to itself (default exchange,
    its own name as routing key) drops them after one death instead of looping."""
    ch = scratch.channel
    q = f"{scratch.uid}-self"
    scratch.queue("self", **{"x-dead-letter-exchange": "", "x-dead-letter-routing-key": q,
                             "x-message-ttl": 200})
    publish(ch, q, b"loop")
    time.sleep(0.6)
    wait_count(ch, q, 0)
    settle(scratch.connection, 0.5)
    assert drain(ch, q) == []


@pytest.mark.parametrize("rejected_before", [False, pytest.param(True, marks=mq_only)])
def test_two_queue_expiry_cycle_is_dropped(scratch: Scratch, rejected_before: bool) -> None:
    """B-DLX-3, B-DLX-4: A expires into B, B expires back into A: dropped when it would
    re-enter A, after one death in each; x-death lists them newest first. A rejection in an
    earlier queue, before the cycle, does not keep it looping: only the deaths since A
    count. (RabbitMQ 3.10 reverses the older x-death entries of a history of two or more,
    its group_by_queue_and_reason, so it sees the rejection inside the cycle and loops
    forever here; mq keeps newest-first order, as RabbitMQ documents, and drops it.)"""
    ch = scratch.channel
    a = f"{scratch.uid}-a"
    b = f"{scratch.uid}-b"
    watch_x, watch = scratch.dead_letter_target("watch")
    scratch.queue("a", **{"x-dead-letter-exchange": "", "x-dead-letter-routing-key": b,
                          "x-message-ttl": 200})
    scratch.queue("b", **{"x-dead-letter-exchange": watch_x, "x-message-ttl": 200})
    # b's dead letters go to a fanout that also feeds a: the cycle a -> b -> a.
    ch.queue_bind(a, watch_x)
    if rejected_before:
        entry = scratch.queue("entry", **{"x-dead-letter-exchange": "",
                                          "x-dead-letter-routing-key": a})
        publish(ch, entry, b"loop")
        reject_from(scratch, entry)
    else:
        publish(ch, a, b"loop")
    _, props, _ = wait_get(ch, watch)  # its death in b, seen once
    assert [d["queue"] for d in x_death(props)] == [b, a] + ([entry] if rejected_before else [])
    settle(scratch.connection, 0.8)
    assert drain(ch, a) == [] and drain(ch, b) == [] and drain(ch, watch) == []


def test_rejection_cycle_is_not_dropped(scratch: Scratch) -> None:
    """B-DLX-4: a cycle with a rejection on the way is not a loop: a rejected message comes
    back to its own queue each time, its count growing."""
    ch = scratch.channel
    q = f"{scratch.uid}-self"
    scratch.queue("self", **{"x-dead-letter-exchange": "", "x-dead-letter-routing-key": q})
    publish(ch, q, b"again")
    for count in (1, 2, 3):
        reject_from(scratch, q)
        method, props, _ = wait_get(ch, q, auto_ack=False)
        assert [(d["reason"], d["count"]) for d in x_death(props)] == [("rejected", count)]
        ch.basic_nack(method.delivery_tag, requeue=True)


# ---- B-DLX-5: missing dead-letter exchange -----------------------------------------------

def test_missing_dead_letter_exchange_drops_message(scratch: Scratch) -> None:
    """B-DLX-5: a dead-letter exchange that does not exist: the message is dropped (not
    requeued, nothing else happens; the channel stays usable)."""
    ch = scratch.channel
    q = scratch.queue("q", **{"x-dead-letter-exchange": f"{scratch.uid}-nowhere"})
    publish(ch, q, b"lost")
    reject_from(scratch, q)
    settle(scratch.connection)
    assert drain(ch, q) == []
    publish(ch, q, b"next")
    assert bodies([wait_get(ch, q)]) == [b"next"]


@mq_only
def test_missing_dead_letter_exchange_is_logged(scratch: Scratch, mq_broker) -> None:
    """B-DLX-5: the broker log says the dead letter was dropped, naming queue and exchange."""
    ch = scratch.channel
    nowhere = f"{scratch.uid}-nowhere"
    q = scratch.queue("q", **{"x-dead-letter-exchange": nowhere, "x-message-ttl": 100})
    publish(ch, q, b"lost")
    deadline = time.monotonic() + 5
    while not any(nowhere in line and q in line and "dropped" in line
                  for line in mq_broker.log().splitlines()):
        assert time.monotonic() < deadline, "no log line about the dropped dead letter"
        time.sleep(0.1)
