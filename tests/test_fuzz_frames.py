"""B-CONN-8 by fuzzing: random and mutated frames (valid handshake, methods and content built
with pamqp, then bytes flipped, inserted and deleted; random frame types, sizes, channels)
never crash a connection, never leak its state and never touch another connection.

Twice: in-process against the sans-IO Connection and a real Broker, and over TCP against a
broker process while a pika connection keeps publishing and consuming."""
from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from typing import Iterator

import pika
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pamqp import commands as spec
from pamqp import frame as pamqp_frame
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from mq.amqp.connection import Connection
from mq.broker.broker import Broker
from mq.testing import BrokerProcess, run_broker
from rawamqp import PROTOCOL_HEADER

# ---- inputs -------------------------------------------------------------------------------

FRAME_MAX = 4096  # the smallest allowed, so that bigger messages take several body frames

HANDSHAKE = PROTOCOL_HEADER + b"".join(pamqp_frame.marshal(m, 0) for m in (
    spec.Connection.StartOk(client_properties={"capabilities": {"consumer_cancel_notify": True}},
                            mechanism="PLAIN", response="\0guest\0guest"),
    spec.Connection.TuneOk(channel_max=16, frame_max=FRAME_MAX, heartbeat=0),
    spec.Connection.Open(virtual_host="/"),
))
# Channels 1 and 2 with the objects the frames below use, so that most frames reach deep.
SETUP = b"".join(pamqp_frame.marshal(m, ch) for ch, m in (
    (1, spec.Channel.Open()), (2, spec.Channel.Open()),
    (1, spec.Queue.Declare(queue="fz")),
    (1, spec.Queue.Declare(queue="fzp", arguments={"x-max-priority": 3, "x-max-length": 2})),
    (1, spec.Exchange.Declare(exchange="fzx", exchange_type="topic")),
    (1, spec.Queue.Bind(queue="fz", exchange="fzx", routing_key="#")),
    (2, spec.Basic.Consume(queue="fz", consumer_tag="c2")),  # publishes become deliveries
))


def _publish(channel: int, body: bytes, properties: spec.Basic.Properties,
             exchange: str = "", routing_key: str = "fz") -> bytes:
    """basic.publish with its content header and body frames."""
    frames = [spec.Basic.Publish(exchange=exchange, routing_key=routing_key),
              ContentHeader(0, len(body), properties)]
    step = FRAME_MAX - 8
    frames += [ContentBody(body[i:i + step]) for i in range(0, len(body), step)]
    return b"".join(pamqp_frame.marshal(f, channel) for f in frames)


def _valid_frames(ch: int) -> list[bytes]:
    """Well-formed frames on channel ch that drive a channel through most of its states."""
    methods = [
        spec.Channel.Flow(active=False), spec.Channel.Flow(active=True),
        spec.Channel.Close(reply_code=200, reply_text="", class_id=0, method_id=0),
        spec.Channel.CloseOk(),
        spec.Exchange.Declare(exchange="fzx", exchange_type="topic"),
        spec.Exchange.Declare(exchange="fzx", exchange_type="direct"),  # inequivalent: 406
        spec.Exchange.Delete(exchange="fzx"),
        spec.Queue.Declare(queue="fz"), spec.Queue.Declare(queue="fz", exclusive=True),
        spec.Queue.Declare(queue="", exclusive=True),
        spec.Queue.Declare(queue="fzp", arguments={"x-max-priority": 3, "x-max-length": 2}),
        spec.Queue.Bind(queue="fz", exchange="fzx", routing_key="#"),
        spec.Queue.Unbind(queue="fz", exchange="fzx", routing_key="#"),
        spec.Queue.Purge(queue="fz"), spec.Queue.Delete(queue="fz"),
        spec.Basic.Qos(prefetch_count=2), spec.Basic.Qos(prefetch_count=1, global_=True),
        spec.Basic.Consume(queue="fz", consumer_tag="c1"),
        spec.Basic.Consume(queue="fzp", consumer_tag="c2", no_ack=True),
        spec.Basic.Cancel(consumer_tag="c1"), spec.Basic.Get(queue="fz"),
        spec.Basic.Ack(delivery_tag=1), spec.Basic.Ack(delivery_tag=0, multiple=True),
        spec.Basic.Nack(delivery_tag=2, requeue=True), spec.Basic.Reject(delivery_tag=1),
        spec.Basic.Recover(requeue=True),
        spec.Confirm.Select(), spec.Tx.Select(), spec.Tx.Commit(), spec.Tx.Rollback(),
    ]
    consume = [spec.Basic.Consume(queue="fz", consumer_tag="c1"),
               spec.Basic.Ack(delivery_tag=0, multiple=True)]
    return [pamqp_frame.marshal(m, ch) for m in methods + consume * 2] + 4 * [
        _publish(ch, b"hello", spec.Basic.Properties()),
        _publish(ch, b"", spec.Basic.Properties(delivery_mode=2, priority=2)),
        _publish(ch, b"x" * 5000, spec.Basic.Properties(  # two body frames at frame_max 4096
            headers={"a": 1, "b": [1, "x"], "c": {"d": 1.5}}, expiration="60000")),
        _publish(ch, b"t", spec.Basic.Properties(), exchange="fzx", routing_key="a.b"),
    ]


VALID = _valid_frames(1) * 3 + _valid_frames(2) + [pamqp_frame.marshal(spec.Channel.Open(), 2)]
METHOD_IDS = sorted({f[7:11] for f in VALID if f[0] == 1})


def _frame(ftype: int, channel: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", ftype, channel, len(payload)) + payload + b"\xce"


frame_types = st.sampled_from([1, 1, 1, 2, 3, 8])
random_frames = st.builds(
    _frame,
    st.one_of(frame_types, frame_types, frame_types, st.integers(0, 255)),
    st.sampled_from([1, 1, 2, 0, 3, 16, 17, 65535]),
    st.binary(max_size=40)
    | st.builds(bytes.__add__, st.sampled_from(METHOD_IDS), st.binary(max_size=40)),
)

# A mutation: (kind, position, bytes); positions wrap around the stream's length.
mutations = st.tuples(st.sampled_from(["flip", "insert", "delete", "size"]),
                      st.integers(0, 1 << 16), st.binary(min_size=1, max_size=6))


def _mutate(data: bytes, start: int, kind: str, pos: int, blob: bytes) -> bytes:
    span = len(data) - start
    if span <= 0:
        return data + blob
    at = start + pos % span
    if kind == "flip":
        return data[:at] + bytes([data[at] ^ (blob[0] or 1)]) + data[at + 1:]
    if kind == "insert":
        return data[:at] + blob + data[at:]
    if kind == "delete":
        return data[:at] + data[at + len(blob):]
    # "size": overwrite four bytes, as often as not a frame's size field
    return data[:at] + (blob * 4)[:4] + data[at + 4:]


@st.composite
def streams(draw: st.DrawFn) -> list[bytes]:
    """A client's byte stream, cut into the reads the broker will see."""
    valid = st.sampled_from(VALID)
    frames = st.one_of(valid, valid, valid, valid, valid, valid, random_frames)
    body = b"".join(draw(st.lists(frames, min_size=3, max_size=40)))
    data = HANDSHAKE + SETUP + body
    # Mostly mutate after the setup, so that the mutations reach the channels.
    start = draw(st.sampled_from([0, len(HANDSHAKE), len(HANDSHAKE + SETUP),
                                  len(HANDSHAKE + SETUP)]))
    for kind, pos, blob in draw(st.lists(mutations, max_size=3)):
        data = _mutate(data, start, kind, pos, blob)
    cuts = sorted({c % (len(data) + 1) for c in draw(st.lists(st.integers(0, 1 << 16),
                                                             max_size=4))})
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


# ---- checking the broker's output ---------------------------------------------------------

# Reply codes a client may legitimately cause. 541 INTERNAL_ERROR means a bug of ours.
CLIENT_CAUSED = {312, 403, 404, 405, 406, 501, 502, 503, 504, 505, 506, 530, 540}


# Methods that carry names in the bytes the client used (possibly invalid UTF-8, which pamqp
# will not decode), by class and method id.
CLOSES = {(10, 50): "Connection.Close", (20, 40): "Channel.Close"}
ECHOING = {(60, 60): "Basic.Deliver", (60, 71): "Basic.GetOk", (60, 50): "Basic.Return"}
CONTENT = {2: "ContentHeader", 3: "ContentBody", 8: "Heartbeat"}


def check_output(out: bytes, complete: bool = True) -> list[tuple[int, str]]:
    """The broker's bytes are either our protocol header (a bad header) or well-formed frames:
    methods that decode, closes with client-caused codes and, once connection.close is sent,
    nothing but close-ok. complete=False allows a cut-off last frame (TCP reset).
    Returns (channel, frame name) for each frame."""
    if out.startswith(b"AMQP"):
        assert out == PROTOCOL_HEADER
        return []
    decoded, pos, close_sent = [], 0, False
    while pos < len(out):
        if len(out) - pos < 7 or len(out) - pos < 8 + struct.unpack_from(">I", out, pos + 3)[0]:
            assert not complete, f"truncated frame at the end: {out[pos:]!r}"
            break
        ftype, channel, size = struct.unpack_from(">BHI", out, pos)
        assert out[pos + 7 + size] == 0xCE
        frame = out[pos:pos + 8 + size]
        pos += 8 + size
        assert not close_sent or frame[:1] + frame[7:11] == b"\x01\x00\x0a\x00\x33", \
            f"{frame!r} after connection.close"
        if ftype != 1:
            # Content is passed through as published (pamqp cannot decode every property
            # value a client may send, e.g. a timestamp past year 9999), so only its shape.
            assert ftype in (2, 3, 8) and (ftype != 2 or frame[7:9] == b"\x00\x3c"), frame
            decoded.append((channel, CONTENT[ftype]))
            continue
        ids = struct.unpack_from(">HH", frame, 7)
        if ids in CLOSES:
            code, length = struct.unpack_from(">HB", frame, 11)
            assert 4 + 2 + 1 + length + 4 == size, frame
            text = frame[14:14 + length].decode("utf-8", "replace")
            assert code in CLIENT_CAUSED, text
            assert text.split(" - ")[0].isupper(), text
            name = CLOSES[ids]
        elif ids in ECHOING:
            name = ECHOING[ids]
        else:
            name = pamqp_frame.unmarshal(frame)[2].name
        close_sent = close_sent or name == "Connection.Close"
        decoded.append((channel, name))
    return decoded


class ErrorLog(logging.Handler):
    """Collects mq's log records at ERROR and above (tracebacks of internal errors)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def error_log() -> Iterator[ErrorLog]:
    handler = ErrorLog()
    logger = logging.getLogger("mq")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


# ---- (a) in-process, sans-IO --------------------------------------------------------------

class ListTransport:
    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.out.append(data)

    def close(self) -> None:
        self.closed = True


def test_fuzz_sans_io_connection(error_log: ErrorLog):
    """B-CONN-8: fed random and mutated frames, Connection.data_received never raises, writes
    only well-formed frames with client-caused close codes, logs no internal error, and when
    the socket goes away leaves no consumer, unacked message or exclusive queue behind."""

    @settings(max_examples=600, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(streams())
    def run(chunks: list[bytes]) -> None:
        error_log.records.clear()
        broker = Broker()
        transport = ListTransport()
        now = [1000.0]
        conn = Connection(broker, transport, ("127.0.0.1", 40000), clock=lambda: now[0])
        for chunk in chunks:
            conn.data_received(chunk)
            now[0] += 0.5
            conn.tick()
        check_output(b"".join(transport.out))
        assert transport.closed == conn.closed
        conn.connection_lost()
        for queue in broker.vhosts["/"].queues.values():
            assert queue.consumer_count == 0 and queue.unacked == 0, queue.name
            assert queue.exclusive_owner is None, queue.name
        assert not error_log.records, [r.getMessage() for r in error_log.records]

    run()


# ---- (b) over TCP against a broker process ------------------------------------------------

@pytest.fixture(scope="module")
def fuzz_broker() -> Iterator[BrokerProcess]:
    """A broker of our own: if the fuzzing kills it, no other test suffers."""
    with run_broker() as broker:
        yield broker


class Witness(threading.Thread):
    """A pika connection that publishes and consumes in a loop, checking every message comes
    back in order, while the fuzzer works."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.stop = threading.Event()
        self.round_trips = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            conn = pika.BlockingConnection(pika.URLParameters(self.url))
            ch = conn.channel()
            ch.confirm_delivery()
            queue = ch.queue_declare("", exclusive=True).method.queue
            got: list[bytes] = []
            ch.basic_consume(queue, lambda c, m, p, b: got.append(b), auto_ack=True)
            while not self.stop.is_set():
                body = str(self.round_trips).encode()
                ch.basic_publish("", queue, body)
                deadline = time.monotonic() + 5
                while not got and time.monotonic() < deadline:
                    conn.process_data_events(time_limit=0.05)
                assert got == [body], f"expected {body!r}, got {got!r}"
                got.clear()
                self.round_trips += 1
            conn.close()
        except BaseException as exc:  # reported by the test
            self.error = exc


def _exchange(port: int, chunks: list[bytes]) -> bytes:
    """Send the chunks, half-close, and read everything until the broker closes (bounded)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    out = b""
    try:
        try:
            for chunk in chunks:
                sock.sendall(chunk)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the broker closed first; what it wrote is still to be read
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            out += data
    finally:
        sock.close()
    return out


def test_fuzz_over_tcp(fuzz_broker: BrokerProcess):
    """B-CONN-8: random and mutated frames over real sockets: every connection ends (no hang)
    after well-formed replies, the broker process survives without a traceback, and a pika
    connection publishing and consuming at the same time never notices."""
    witness = Witness(fuzz_broker.url)
    witness.start()

    @settings(max_examples=150, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(streams())
    def run(chunks: list[bytes]) -> None:
        check_output(_exchange(fuzz_broker.port, chunks), complete=False)
        assert witness.error is None, witness.error

    try:
        run()
    finally:
        witness.stop.set()
        witness.join(10)
    assert witness.error is None, witness.error
    assert witness.round_trips > 10
    assert fuzz_broker.proc.poll() is None, "the broker process died"
    log = fuzz_broker.log()
    assert "Traceback" not in log and "internal error" not in log, log[-3000:]
