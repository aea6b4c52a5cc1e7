"""Super streams and consumer groups over AMQP 0-9-1 (B-STREAM-7), end to end with pika: a
super stream in RabbitMQ's layout (exchange NAME with x-super-stream, partitions NAME-<key>
bound by key with x-stream-partition-order), consumed by a group (basic.consume on the super
stream's name with x-stream-group). mq's own: RabbitMQ has consumer groups only in its
stream protocol."""
from __future__ import annotations

import collections
import time
from typing import Any

import pika
import pytest

from ctlutil import ctl
from mq.testing import run_broker

PARTITIONS = 4


def _super_stream(ch: Any, name: str, partitions: int = PARTITIONS) -> None:
    ch.exchange_declare(name, "direct", durable=True, arguments={"x-super-stream": True})
    for i in range(partitions):
        ch.queue_declare(f"{name}-{i}", durable=True, arguments={"x-queue-type": "stream"})
        ch.queue_bind(f"{name}-{i}", name, str(i), arguments={"x-stream-partition-order": i})


class Member:
    """One group member on its own connection; keeps (partition key, offset, body,
    redelivered) of what it got, acking each."""

    def __init__(self, url: str, stream: str, group: str, got: list, prefetch: int = 10,
                 ack: bool = True) -> None:
        self.conn = pika.BlockingConnection(pika.URLParameters(url))
        self.ch = self.conn.channel()
        self.ch.basic_qos(prefetch_count=prefetch)
        self.got = got

        def on(ch: Any, method: Any, props: Any, body: bytes) -> None:
            got.append((method.routing_key, props.headers["x-stream-offset"], body,
                        method.redelivered))
            if ack:
                ch.basic_ack(method.delivery_tag)
        self.ch.basic_consume(stream, on, arguments={"x-stream-group": group,
                                                     "x-stream-offset": "first"})

    def pump(self) -> None:
        self.conn.process_data_events(0.01)

    def close(self) -> None:
        """pika rejects the deliveries it still buffers when it cancels a consumer, and a
        stream refuses rejects (540, as RabbitMQ 3.10 does): the connection goes either way."""
        try:
            self.conn.close()
        except pika.exceptions.AMQPError:
            pass


def _pump(members: list[Member], until: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not until() and time.monotonic() < deadline:
        for m in members:
            m.pump()


@pytest.fixture
def channel(mq_fresh_broker):
    conn = pika.BlockingConnection(pika.URLParameters(mq_fresh_broker.url))
    ch = conn.channel()
    ch.confirm_delivery()
    yield ch
    conn.close()


def test_each_partition_has_one_member_and_the_group_gets_everything_once(
        mq_fresh_broker, channel) -> None:
    """B-STREAM-7: three members of a group over four partitions: partition i goes to member
    i mod 3; every message reaches the group exactly once, in order within its partition."""
    _super_stream(channel, "inv")
    for n in range(200):
        channel.basic_publish("inv", str(n % PARTITIONS), str(n).encode())
    logs: list[list] = [[], [], []]
    members = [Member(mq_fresh_broker.url, "inv", "g", log) for log in logs]
    _pump(members, lambda: sum(map(len, logs)) >= 200)
    assert [sorted({key for key, *_ in log}) for log in logs] == [["0", "3"], ["1"], ["2"]]
    bodies = [int(b) for log in logs for _, _, b, _ in log]
    assert sorted(bodies) == list(range(200))
    for log in logs:
        for key in {k for k, *_ in log}:
            offsets = [o for k, o, _, _ in log if k == key]
            assert offsets == list(range(len(offsets)))


def test_rebalance_when_members_leave_and_join_loses_nothing(mq_fresh_broker, channel) -> None:
    """B-STREAM-7: a member leaves and another joins while messages keep coming: the
    partitions move, each resumes after the group's last ack there, and the group gets every
    message; what it gets twice was delivered to a member that had not acked it yet, and
    comes flagged redelivered."""
    _super_stream(channel, "orders")
    got: list = []
    members = [Member(mq_fresh_broker.url, "orders", "billing", got) for _ in range(3)]
    for n in range(300):
        channel.basic_publish("orders", str(n % PARTITIONS), str(n).encode())
    _pump(members, lambda: len(got) >= 300)
    members[0].close()
    members.pop(0)
    for n in range(300, 600):
        channel.basic_publish("orders", str(n % PARTITIONS), str(n).encode())
    members.append(Member(mq_fresh_broker.url, "orders", "billing", got))
    _pump(members, lambda: len({int(b) for _, _, b, _ in got}) >= 600)
    bodies = [int(b) for _, _, b, _ in got]
    assert set(bodies) == set(range(600))
    copies: dict[bytes, list[bool]] = collections.defaultdict(list)
    for _, _, body, redelivered in got:
        copies[body].append(redelivered)
    for body, flags in copies.items():  # all but the first delivery flagged redelivered
        assert flags.count(True) >= len(flags) - 1, (body, flags)


def test_two_groups_each_get_every_message_and_keep_their_offsets(mq_fresh_broker) -> None:
    """B-STREAM-7: two groups read the same super stream independently; a group that
    comes back (its members reconnect) resumes after its last acks, across a restart."""
    conn = pika.BlockingConnection(pika.URLParameters(mq_fresh_broker.url))
    ch = conn.channel()
    ch.confirm_delivery()
    _super_stream(ch, "ev", partitions=2)
    for n in range(50):
        ch.basic_publish("ev", str(n % 2), str(n).encode())
    conn.close()
    a: list = []
    b: list = []
    members = [Member(mq_fresh_broker.url, "ev", "A", a), Member(mq_fresh_broker.url, "ev",
                                                                 "B", b)]
    _pump(members, lambda: len(a) >= 50 and len(b) >= 50)
    assert sorted(int(x[2]) for x in a) == sorted(int(x[2]) for x in b) == list(range(50))
    for m in members:
        m.close()
    time.sleep(1)  # tracked offsets are saved within half a second
    mq_fresh_broker.restart(kill=True)
    conn = pika.BlockingConnection(pika.URLParameters(mq_fresh_broker.url))
    ch = conn.channel()
    ch.confirm_delivery()
    for n in range(50, 60):
        ch.basic_publish("ev", str(n % 2), str(n).encode())
    conn.close()
    again: list = []
    member = Member(mq_fresh_broker.url, "ev", "A", again)
    _pump([member], lambda: len(again) >= 10)
    member.pump()
    assert sorted(int(x[2]) for x in again) == list(range(50, 60))


def test_a_group_consume_needs_its_name(mq_fresh_broker, channel) -> None:
    """B-STREAM-7: basic.consume on a super stream without x-stream-group is refused with
    406 and a text saying what is missing."""
    _super_stream(channel, "s2", partitions=2)
    channel.basic_qos(prefetch_count=10)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        channel.basic_consume("s2", lambda *a: None)
    assert info.value.reply_code == 406
    assert "x-stream-group" in info.value.reply_text


def test_ctl_creates_a_super_stream() -> None:
    """B-STREAM-7: `mq ctl add-super-stream NAME --partitions N` makes RabbitMQ's layout."""
    with run_broker(args=("--management-port", "0")) as broker:
        _ctl_super_stream(broker)


def _ctl_super_stream(broker: Any) -> None:
    out = ctl(broker, "add-super-stream", "invoices", "--partitions", "3")
    assert "3 partitions" in out.stdout
    conn = pika.BlockingConnection(pika.URLParameters(broker.url))
    ch = conn.channel()
    ch.confirm_delivery()
    for i in range(3):
        ok = ch.queue_declare(f"invoices-{i}", passive=True)
        assert ok.method.queue == f"invoices-{i}"
    ch.basic_publish("invoices", "2", b"to partition 2")
    ch.basic_qos(prefetch_count=5)
    got = []
    ch.basic_consume("invoices-2", lambda c, m, p, body: got.append(body),
                     arguments={"x-stream-offset": "first"})
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        conn.process_data_events(0.05)
    conn.close()
    assert got == [b"to partition 2"]
