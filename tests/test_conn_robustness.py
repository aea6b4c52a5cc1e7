"""Connection robustness (B-CONN-6..9): heartbeats, the handshake timeout, malformed input and
connections that close or just drop, through raw sockets and pika against real brokers."""
from __future__ import annotations

import re
import socket
import struct
import time
from typing import Callable, Iterator

import pika
import pytest
from pamqp import commands as spec
from pamqp import frame as pamqp_frame
from pamqp.header import ContentHeader

from mq.amqp.connection import Connection
from mq.broker.broker import Broker
from mq.config import Settings
from mq.testing import BrokerProcess, run_broker
from rawamqp import PROTOCOL_HEADER, RawClient

HEARTBEAT_FRAME = b"\x08\x00\x00\x00\x00\x00\x00\xce"


def client_name(client: RawClient) -> str:
    """How the broker's log names this client's connection ("127.0.0.1:PORT")."""
    host, port = client.sock.getsockname()[:2]
    return f"{host}:{port}"


def raw_consumer(port: int, queue: str, heartbeat: int = 0) -> RawClient:
    """A raw client on channel 1 that has received (and not acked) one message from queue."""
    client = RawClient(port)
    client.handshake(heartbeat=heartbeat)
    client.open_channel(1)
    client.send_method(1, spec.Basic.Consume(queue=queue, consumer_tag="raw"))
    client.expect("Basic.ConsumeOk")
    deliver = client.expect("Basic.Deliver")
    assert deliver.redelivered is False
    client.expect("ContentHeader")
    client.expect("ContentBody")
    return client


def get_one(channel, queue: str, timeout: float = 5.0) -> tuple:
    """basic.get until a message is there (requeueing happens as the broker notices a close)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        method, props, body = channel.basic_get(queue, auto_ack=True)
        if method is not None:
            return method, props, body
        time.sleep(0.05)
    raise AssertionError(f"no message in {queue} within {timeout}s")


def log_since(broker: BrokerProcess, offset: int) -> str:
    return broker.log()[offset:]


def wait_for_log(broker: BrokerProcess, offset: int, pattern: str, timeout: float = 3.0) -> str:
    """The first log line after offset matching pattern (logging may trail the socket close)."""
    deadline = time.monotonic() + timeout
    while True:
        for line in log_since(broker, offset).splitlines():
            if re.search(pattern, line):
                return line
        if time.monotonic() > deadline:
            raise AssertionError(f"no log line matching {pattern!r}:\n{log_since(broker, offset)}")
        time.sleep(0.05)


# ---- B-CONN-6: heartbeats ---------------------------------------------------------------

def test_server_sends_heartbeats_while_idle(mq_broker):
    """B-CONN-6: with heartbeat=1 negotiated, an idle server sends heartbeat frames, and a
    client that keeps sending its own stays connected."""
    client = RawClient(mq_broker.port)
    client.handshake(heartbeat=1)
    received = 0
    deadline = time.monotonic() + 3.5
    while time.monotonic() < deadline:
        client.send(HEARTBEAT_FRAME)
        try:
            channel, frame = client.recv_frame(timeout=0.5)
        except TimeoutError:
            continue
        assert frame.name == "Heartbeat" and channel == 0, frame
        received += 1
    assert received >= 2
    client.open_channel(1)  # still alive after more than two intervals
    client.close()


def test_server_is_never_silent_for_a_whole_interval(mq_broker):
    """B-CONN-6: with heartbeat=1 the server sends a frame at least every interval (strict
    clients such as @cloudamqp/amqp-client drop a connection silent for one interval)."""
    client = RawClient(mq_broker.port)
    client.handshake(heartbeat=1)
    last = time.monotonic()
    gaps = []
    deadline = last + 4.0
    while time.monotonic() < deadline:
        client.send(HEARTBEAT_FRAME)
        try:
            client.recv_frame(timeout=0.2)
        except TimeoutError:
            continue
        now = time.monotonic()
        gaps.append(now - last)
        last = now
    assert len(gaps) >= 4 and max(gaps) < 0.95, gaps
    client.close()


def test_silent_client_is_closed_after_two_intervals(mq_broker, connection, channel, uid):
    """B-CONN-6: a client that sends nothing for two heartbeat intervals is disconnected, the
    log says so, and its channels are cleaned up: its unacked message goes to another
    connection, marked redelivered."""
    channel.queue_declare(uid)
    channel.basic_publish("", uid, b"held by a silent client")
    offset = len(mq_broker.log())
    started = time.monotonic()  # before the client's last bytes: the silence starts later
    client = raw_consumer(mq_broker.port, uid, heartbeat=1)
    name = client_name(client)
    assert client.closed_by_peer(timeout=5.0)
    elapsed = time.monotonic() - started
    assert 2.0 <= elapsed < 4.5, elapsed
    line = wait_for_log(mq_broker, offset, "missed heartbeats")
    assert name in line and "timeout: 1s" in line
    method, _, body = get_one(channel, uid)
    assert body == b"held by a silent client"
    assert method.redelivered is True


# ---- B-CONN-7: handshake timeout ---------------------------------------------------------

@pytest.fixture(scope="module")
def quick_handshake_broker() -> Iterator[BrokerProcess]:
    """A broker of our own with a 1 s handshake timeout, so the test need not wait 10 s."""
    with run_broker(args=("--handshake-timeout", "1")) as broker:
        yield broker


def _send_nothing(client: RawClient) -> None:
    pass


def _send_header_only(client: RawClient) -> None:
    client.send(PROTOCOL_HEADER)
    client.expect("Connection.Start")


def _stall_before_tune_ok(client: RawClient) -> None:
    client.send(PROTOCOL_HEADER)
    client.expect("Connection.Start")
    client.send_method(0, spec.Connection.StartOk(client_properties={}, mechanism="PLAIN",
                                                  response="\0guest\0guest"))
    client.expect("Connection.Tune")


@pytest.mark.parametrize("stall", [_send_nothing, _send_header_only, _stall_before_tune_ok],
                         ids=["nothing", "header-only", "before-tune-ok"])
def test_unfinished_handshake_is_dropped(quick_handshake_broker, stall: Callable):
    """B-CONN-7: a socket that does not finish the handshake in time is dropped and the drop
    is logged; an open connection on the same broker is not touched."""
    broker = quick_handshake_broker
    bystander = pika.BlockingConnection(pika.URLParameters(broker.url))
    offset = len(broker.log())
    client = RawClient(broker.port)
    started = time.monotonic()
    stall(client)
    assert client.closed_by_peer(timeout=4.0)
    assert 0.9 <= time.monotonic() - started < 3.0
    line = wait_for_log(broker, offset, "handshake not finished")
    assert client_name(client) in line and "1s" in line
    bystander.channel().queue_declare("", exclusive=True)  # the logged-in one still works
    bystander.close()


class ListTransport:
    """A Connection's output sink for sans-IO tests."""

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def close(self) -> None:
        self.closed = True


def test_default_handshake_timeout_is_ten_seconds():
    """B-CONN-7: by default a handshake has 10 s: a connection that sent only the protocol
    header is still there at 9.5 s and dropped after 10 s (clock driven by the test)."""
    assert Settings().handshake_timeout == 10
    now = [1000.0]
    transport = ListTransport()
    conn = Connection(Broker(), transport, ("127.0.0.1", 1),
                      clock=lambda: now[0], handshake_timeout=Settings().handshake_timeout)
    conn.data_received(PROTOCOL_HEADER)
    assert transport.out  # connection.start
    now[0] += 9.5
    conn.tick()
    assert not transport.closed
    now[0] += 1.0
    conn.tick()
    assert transport.closed


# ---- B-CONN-8: malformed input -----------------------------------------------------------

def frame(ftype: int, channel: int, payload: bytes, end: bytes = b"\xce") -> bytes:
    return struct.pack(">BHI", ftype, channel, len(payload)) + payload + end


def method_payload(method) -> bytes:
    return pamqp_frame.marshal(method, 1)[7:-1]


PUBLISH = pamqp_frame.marshal(spec.Basic.Publish(exchange="", routing_key="nowhere"), 1)
HEADER = pamqp_frame.marshal(ContentHeader(0, 3, spec.Basic.Properties()), 1)

# (id, bytes sent on an open connection with channel 1 open, reply code, class/method ids,
#  a piece of the reply text). Codes as RabbitMQ 3.10 answers, except where noted.
MALFORMED = [
    ("bad-frame-type", frame(9, 0, b"abcd"), 501, (0, 0), "unknown frame type 9"),
    ("bad-frame-type-on-channel", frame(0, 1, b"abcd"), 501, (0, 0), "unknown frame type 0"),
    ("missing-frame-end", frame(1, 1, method_payload(spec.Basic.Qos()), end=b"\x00"), 501,
     (0, 0), "frame end"),
    ("method-without-ids", frame(1, 1, b"\x00\x32"), 501, (0, 0), "too short"),
    ("truncated-queue-declare", frame(1, 1, method_payload(spec.Queue.Declare(queue="q"))[:9]), 501,
     (50, 10), "cannot decode"),
    ("truncated-publish", frame(1, 1, method_payload(spec.Basic.Publish())[:7]), 501,
     (60, 40), "cannot decode"),
    ("truncated-content-header", PUBLISH + frame(2, 1, b"\x00\x3c\x00\x00\x00\x00"), 501,
     (60, 40), "content header"),
    # RabbitMQ drops the socket without a word here; the contract asks for 540.
    ("unknown-class", frame(1, 1, b"\x00\x63\x00\x0a"), 540, (99, 10),
     "unknown class/method 99/10"),
    ("unknown-method", frame(1, 1, b"\x00\x32\x00\x63"), 540, (50, 99),
     "unknown class/method 50/99"),
    ("header-without-publish", HEADER, 505, None, "content header"),
    ("body-without-publish", frame(3, 1, b"abc"), 505, None, "content body"),
    ("method-instead-of-header", PUBLISH + pamqp_frame.marshal(spec.Basic.Qos(), 1), 505,
     (60, 40), "expected content header"),
    ("body-instead-of-header", PUBLISH + frame(3, 1, b"abc"), 505, (60, 40), "content body"),
    ("content-on-channel-0", frame(3, 0, b"abc"), 505, None, "channel 0"),
    ("content-on-unopened-channel", frame(3, 5, b"abc"), 505, None, "not open"),
    ("heartbeat-on-channel-1", frame(8, 1, b""), 505, None, "heartbeat"),
    ("channel-method-on-channel-0", pamqp_frame.marshal(spec.Basic.Qos(), 0), 504, (60, 10),
     "Basic.Qos"),
    ("connection-method-on-channel-1", pamqp_frame.marshal(spec.Connection.Close(200, "", 0, 0), 1),
     503,
     (10, 50), "Connection.Close"),
]


@pytest.fixture(scope="module")
def witness(mq_broker) -> Iterator[Callable[[], None]]:
    """A second connection that must keep working while others send garbage."""
    conn = pika.BlockingConnection(pika.URLParameters(mq_broker.url))
    ch = conn.channel()
    queue = ch.queue_declare("", exclusive=True).method.queue
    count = [0]

    def round_trip() -> None:
        count[0] += 1
        body = f"still here {count[0]}".encode()
        ch.basic_publish("", queue, body)
        assert get_one(ch, queue)[2] == body

    round_trip()
    yield round_trip
    conn.close()


def expect_connection_close(client: RawClient, code: int, text: str,
                            ids: tuple[int, int] | None = None) -> None:
    """connection.close with this code and text; after our close-ok the socket closes."""
    close = client.expect("Connection.Close")
    assert close.reply_code == code, close.reply_text
    assert text in close.reply_text
    if ids is not None:
        assert (close.class_id, close.method_id) == ids
    try:
        client.send_method(0, spec.Connection.CloseOk())
    except OSError:
        pass  # the broker may already have hung up (broken framing)
    assert client.closed_by_peer(timeout=3.0)


@pytest.mark.parametrize("data,code,ids,text", [m[1:] for m in MALFORMED],
                         ids=[m[0] for m in MALFORMED])
def test_malformed_input_is_a_connection_error(mq_broker, witness, data, code, ids, text):
    """B-CONN-8: malformed input gets connection.close with the matching code, then the socket
    closes; the broker logs no traceback and another connection keeps working."""
    offset = len(mq_broker.log())
    client = RawClient(mq_broker.port)
    client.handshake()
    client.open_channel(1)
    client.send(data)
    expect_connection_close(client, code, text, ids)
    witness()
    assert mq_broker.proc.poll() is None
    assert "Traceback" not in log_since(mq_broker, offset)


def test_non_latin1_credentials_are_refused_not_a_crash(mq_broker):
    """B-CONN-3, B-CONN-8: a PLAIN response holding UTF-8 beyond Latin-1 is a failed login
    (403), not an internal error."""
    offset = len(mq_broker.log())
    client = RawClient(mq_broker.port)
    client.send(PROTOCOL_HEADER)
    client.expect("Connection.Start")
    client.send_method(0, spec.Connection.StartOk(
        client_properties={"capabilities": {"authentication_failure_close": True}},
        mechanism="PLAIN", response="\0gu\u0100st\0guest"))
    expect_connection_close(client, 403, "ACCESS_REFUSED - Login was refused")
    assert "Traceback" not in log_since(mq_broker, offset)


def test_error_texts_naming_odd_names_are_valid_short_strings(mq_broker, witness):
    """B-CONN-8: reply texts are valid short strings whatever the client named, byte for byte as
    RabbitMQ sends them: a publish to an exchange named in invalid UTF-8 is 404 naming it in
    the client's bytes; a text over 255 bytes is cut to 252 and ends in "...". Neither is an
    internal error."""
    offset = len(mq_broker.log())
    client = RawClient(mq_broker.port)
    client.handshake()
    client.open_channel(1)
    client.send_frame(1, 1, b"\x00\x3c\x00\x28\x00\x00\x03f\xfax\x01k\x00")  # basic.publish
    client.send_content(1, b"body")
    # channel.close, raw: pamqp does not decode a short string that is not UTF-8
    assert client.recv_raw() == (1, 1, b"\x00\x14\x00\x28\x01\x94\x2a"
                                 b"NOT_FOUND - no exchange 'f\xfax' in vhost '/'\x00\x3c\x00\x28")
    client.send_method(1, spec.Channel.CloseOk())
    client.open_channel(2)
    name = ("\u00e9" * 127).encode()  # 254 bytes: a valid name, but the reply text is longer
    # queue.declare(passive) by hand: pamqp refuses names outside a narrower set than AMQP's.
    client.send_frame(1, 2, b"\x00\x32\x00\x0a\x00\x00" + bytes([len(name)]) + name
                      + b"\x01\x00\x00\x00\x00")
    close = client.expect("Channel.Close")
    assert close.reply_code == 404
    assert close.reply_text == "NOT_FOUND - no queue '" + "\u00e9" * 115 + "..."
    assert len(close.reply_text.encode()) == 255
    client.close()
    witness()
    assert "Traceback" not in log_since(mq_broker, offset)


def test_frame_over_frame_min_before_tune_is_501(mq_broker, witness):
    """B-CONN-8: before tune-ok frames are limited to 4096 bytes (RabbitMQ's frame_min), so a
    client that is not logged in cannot make the broker buffer a huge frame."""
    client = RawClient(mq_broker.port)
    client.send(PROTOCOL_HEADER)
    client.expect("Connection.Start")
    client.send(struct.pack(">BHI", 1, 0, 100_000_000))
    close = client.expect("Connection.Close")
    assert close.reply_code == 501 and "frame_max 4096" in close.reply_text
    assert client.closed_by_peer(timeout=3.0)
    witness()


# ---- B-CONN-9: close and drop --------------------------------------------------------------

def test_client_close_requeues_unacked(mq_broker, channel, uid):
    """B-CONN-9: connection.close from a client with an unacked delivery gets close-ok and the
    message goes back to the queue, marked redelivered."""
    channel.queue_declare(uid)
    channel.basic_publish("", uid, b"m")
    client = raw_consumer(mq_broker.port, uid)
    client.send_method(0, spec.Connection.Close(reply_code=200, reply_text="bye",
                                                class_id=0, method_id=0))
    client.expect("Connection.CloseOk")
    assert client.closed_by_peer(timeout=3.0)
    method, _, body = get_one(channel, uid)
    assert (body, method.redelivered) == (b"m", True)


@pytest.mark.parametrize("how", ["close", "reset"])
def test_dropped_socket_is_cleaned_up(mq_broker, connection, channel, uid, how):
    """B-CONN-9: a socket that just drops (FIN or RST) has its unacked message redelivered to
    another consumer with redelivered=true and its exclusive queue deleted."""
    channel.queue_declare(uid)
    channel.basic_publish("", uid, b"orphan")
    client = raw_consumer(mq_broker.port, uid)
    client.send_method(1, spec.Queue.Declare(queue=uid + "-excl", exclusive=True))
    client.expect("Queue.DeclareOk")
    got: list = []
    channel.basic_consume(uid, lambda ch, m, p, b: got.append((m, b)), auto_ack=True)
    offset = len(mq_broker.log())
    if how == "reset":  # SO_LINGER 0: close sends RST
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        connection.process_data_events(time_limit=0.1)
    assert [(m.redelivered, b) for m, b in got] == [(True, b"orphan")]
    wait_for_log(mq_broker, offset, "connection lost")
    probe = connection.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        probe.queue_declare(uid + "-excl", passive=True)
    assert info.value.reply_code == 404
