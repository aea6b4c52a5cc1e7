"""Resource alarms (B-CONN-10): past the memory watermark or below the disk free limit,
publishers get connection.blocked and are no longer read; consumers go on; publishers are
unblocked when it clears."""
from __future__ import annotations

import struct
import time
from typing import Iterator

import pika
import pytest
from pamqp import commands as spec

from mq.testing import BrokerProcess, run_broker
from flood import RssSampler, SlowConsumer, rss_of
from rawamqp import RawClient

BODY = 32 * 1024
TOTAL = 2500  # 80 MB published in all: far past a watermark 30 MB above the broker's size
HEADROOM = 30 * 1024 * 1024


@pytest.fixture
def low_watermark_broker() -> Iterator[tuple[BrokerProcess, int]]:
    """A broker of its own whose memory watermark is its idle RSS + 30 MB."""
    broker = BrokerProcess().start()
    try:
        time.sleep(0.3)
        watermark = rss_of(broker.proc.pid) + HEADROOM
        broker.args = ("--memory-high-watermark", str(watermark))
        broker.restart()
        yield broker, watermark
    finally:
        broker.cleanup()


def test_flood_blocks_publisher_at_memory_watermark_and_recovers(low_watermark_broker, uid):
    """B-CONN-10: a publisher flooding a queue gets connection.blocked ('low on memory') at
    the watermark, the broker's memory stays bounded, connection.unblocked comes once a slow
    consumer has drained it, publishing goes on, and every message is consumed once. (The
    consumer starts at the block: with it attached from the start, credit flow (B-FLOW-1)
    would hold the publisher before the watermark.)"""
    broker, watermark = low_watermark_broker
    sampler = RssSampler(broker.proc.pid)
    sampler.start()
    conn = pika.BlockingConnection(pika.URLParameters(broker.url))
    events: list[tuple[str, str | None]] = []
    conn.add_on_connection_blocked_callback(
        lambda _c, frame: events.append(("blocked", frame.method.reason)))
    conn.add_on_connection_unblocked_callback(lambda _c, _f: events.append(("unblocked", None)))
    ch = conn.channel()
    ch.queue_declare(uid)
    consumer = SlowConsumer(broker.url, uid, pause=0.0005, fmt=">I", expect=TOTAL)
    padding = b"x" * (BODY - 4)
    sent, sent_at_first_unblock = 0, None
    deadline = time.monotonic() + 30
    while sent < TOTAL and time.monotonic() < deadline:
        if events and events[-1][0] == "blocked":
            if consumer.ident is None:  # not started yet
                consumer.start()
            conn.process_data_events(time_limit=0.05)  # wait, as a publisher should
            continue
        if sent_at_first_unblock is None and events:
            sent_at_first_unblock = sent
        ch.basic_publish("", uid, struct.pack(">I", sent) + padding)
        sent += 1
        conn.process_data_events(time_limit=0)
    consumer.join(30)
    sampler.finish()
    conn.close()
    assert consumer.error is None, consumer.error
    assert sent == TOTAL
    assert events[0] == ("blocked", "low on memory"), events
    assert ("unblocked", None) in events
    assert sent_at_first_unblock is not None and sent_at_first_unblock < TOTAL
    assert sorted(consumer.seen) == list(range(TOTAL)), "lost or duplicated messages"
    # Bounded: the watermark plus what arrives between two checks and the socket backlog.
    assert sampler.peak < watermark + 20 * 1024 * 1024, (sampler.peak - watermark) / 2 ** 20
    log = broker.log()
    assert "alarm set resource=memory" in log and "alarm cleared resource=memory" in log


@pytest.fixture(scope="module")
def disk_alarm_broker() -> Iterator[BrokerProcess]:
    """A broker whose disk free limit no disk meets: the disk alarm is on from the start."""
    with run_broker(args=("--disk-free-limit", "1000000TB")) as broker:
        yield broker


def test_disk_alarm_blocks_publishers_only(disk_alarm_broker, uid):
    """B-CONN-10: below the disk free limit, a connection is blocked ('low on disk') at its
    next publish: that publish is taken, later ones are not read; a connection that does not
    publish is still served (declare, get, ack)."""
    broker = disk_alarm_broker
    publisher = pika.BlockingConnection(pika.URLParameters(broker.url))
    events: list[str] = []
    publisher.add_on_connection_blocked_callback(
        lambda _c, frame: events.append(frame.method.reason))
    pch = publisher.channel()
    pch.queue_declare(uid)
    pch.basic_publish("", uid, b"first")
    deadline = time.monotonic() + 3
    while not events and time.monotonic() < deadline:
        publisher.process_data_events(time_limit=0.05)
    assert events == ["low on disk"]
    pch.basic_publish("", uid, b"second")  # sits in the socket: the broker is not reading
    consumer = pika.BlockingConnection(pika.URLParameters(broker.url))
    cch = consumer.channel()
    method, _props, body = cch.basic_get(uid)
    assert body == b"first"
    cch.basic_ack(method.delivery_tag)
    time.sleep(0.3)
    assert cch.queue_declare(uid, passive=True).method.message_count == 0
    consumer.close()
    assert "alarm set resource=disk" in broker.log()
    assert 'connection blocked peer=' in broker.log()


@pytest.mark.parametrize("announced", [True, False], ids=["capable", "not-capable"])
def test_blocked_frame_only_for_capable_clients(disk_alarm_broker, uid, announced):
    """B-CONN-10: connection.blocked is sent only to a client that announced the
    'connection.blocked' capability (which connection.start offers); either way the broker
    stops reading it after its publish."""
    client = RawClient(disk_alarm_broker.port)
    client.send(b"AMQP\x00\x00\x09\x01")
    start = client.expect("Connection.Start")
    assert start.server_properties["capabilities"]["connection.blocked"] is True
    client.sock.close()
    client = RawClient(disk_alarm_broker.port)
    client.handshake(capabilities={"connection.blocked": announced})
    client.open_channel(1)
    client.send_method(1, spec.Queue.Declare(queue=uid))
    client.expect("Queue.DeclareOk")
    client.send_method(1, spec.Basic.Publish(routing_key=uid))
    client.send_content(1, b"taken")
    if announced:
        assert client.expect("Connection.Blocked").reason == "low on disk"
    else:
        time.sleep(0.2)  # frames that came in the same read as the publish are still handled
    client.send_method(1, spec.Queue.Declare(queue=uid, passive=True))  # not read
    with pytest.raises(TimeoutError):
        client.recv_method(timeout=0.5)
    client.close()


def test_blocked_connection_is_not_timed_out(disk_alarm_broker, uid):
    """B-CONN-10, B-CONN-6: while the broker does not read a blocked connection, that
    connection's silence is not a missed heartbeat: after 2.5 intervals it is still open and
    still gets the broker's heartbeats."""
    client = RawClient(disk_alarm_broker.port)
    client.handshake(heartbeat=1, capabilities={"connection.blocked": True})
    client.open_channel(1)
    client.send_method(1, spec.Basic.Publish(routing_key=uid))
    client.send_content(1, b"x")
    assert client.expect("Connection.Blocked").reason == "low on disk"
    heartbeats, deadline = 0, time.monotonic() + 2.5
    while time.monotonic() < deadline:
        try:
            ftype, _channel, _payload = client.recv_raw(timeout=deadline - time.monotonic())
        except TimeoutError:
            break
        assert ftype == 8, "only heartbeats, no connection.close"
        heartbeats += 1
    assert heartbeats >= 2
    assert not client.closed_by_peer(timeout=0.1)
    client.close()
