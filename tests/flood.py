"""Load for the flow-control and alarm tests: a publisher as fast as a socket goes (frames
encoded once, then written in a loop, as PerfTest drives a broker), a slow consumer, a probe
that measures how long another connection waits for its own round trips meanwhile, and the
broker's peak memory."""
from __future__ import annotations

import struct
import threading
import time

import pika
from pamqp import commands as spec
from pamqp import frame as pamqp_frame
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from rawamqp import RawClient

PAGE = 4096


def rss_of(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as fh:
        return int(fh.read().split()[1]) * PAGE


class RssSampler(threading.Thread):
    """The broker's peak RSS, sampled every 10 ms from start() to finish()."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, rss_of(self.pid))
            time.sleep(0.01)

    def finish(self) -> int:
        self.stop.set()
        self.join()
        return self.peak


class SlowConsumer(threading.Thread):
    """Acks one message every `pause` seconds (prefetch 50) until told to hurry, recording
    each message's sequence number (packed as `fmt` at the start of its body). Stops when
    told (done), once `expect` messages came, or after 60 s."""

    def __init__(self, url: str, queue: str, pause: float, fmt: str = ">Q",
                 expect: int = 0) -> None:
        super().__init__(daemon=True)
        self.url, self.queue, self.pause, self.fmt, self.expect = url, queue, pause, fmt, expect
        self.seen: list[int] = []
        self.hurry, self.done = threading.Event(), threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            conn = pika.BlockingConnection(pika.URLParameters(self.url))
            ch = conn.channel()
            ch.basic_qos(prefetch_count=50)

            def on_message(ch, method, props, body) -> None:
                self.seen.append(struct.unpack_from(self.fmt, body)[0])
                if not self.hurry.is_set():
                    time.sleep(self.pause)
                ch.basic_ack(method.delivery_tag)

            ch.basic_consume(self.queue, on_message)
            deadline = time.monotonic() + 60
            while not self.done.is_set() and time.monotonic() < deadline and \
                    not (self.expect and len(self.seen) >= self.expect):
                conn.process_data_events(time_limit=0.05)
            conn.close()
        except BaseException as exc:  # reported by the test
            self.error = exc


def publish_frames(routing_key: str, body: bytes, count: int, exchange: str = "",
                   frame_max: int = 131072,
                   properties: spec.Basic.Properties | None = None) -> bytes:
    """count basic.publish + header + body frame sets on channel 1, encoded once."""
    one = pamqp_frame.marshal(spec.Basic.Publish(exchange=exchange, routing_key=routing_key), 1)
    one += pamqp_frame.marshal(ContentHeader(0, len(body), properties or spec.Basic.Properties()),
                               1)
    step = frame_max - 8
    for i in range(0, len(body), step):
        one += pamqp_frame.marshal(ContentBody(body[i:i + step]), 1)
    return one * count


class Flood(threading.Thread):
    """Writes `chunk` (publish frames) to its own connection until stopped or `limit` chunks
    are written; counts what it wrote. The broker decides how fast that goes."""

    def __init__(self, port: int, chunk: bytes, limit: int = 0) -> None:
        super().__init__(daemon=True)
        self.client = RawClient(port, timeout=30)
        self.client.handshake()
        self.client.open_channel(1)
        self.chunk, self.limit = chunk, limit
        self.chunks = 0
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set() and (not self.limit or self.chunks < self.limit):
                self.client.send(self.chunk)
                self.chunks += 1
        except BaseException as exc:  # reported by the test
            self.error = exc

    def close(self) -> None:
        self.stop.set()
        self.client.sock.close()
        self.join(10)


def round_trips(url: str, queue: str, seconds: float, size: int = 16) -> list[float]:
    """Publish one message and wait for its delivery on the same pika connection, again and
    again for `seconds`: the round-trip times in seconds."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.queue_declare(queue, exclusive=True)
    got: list[float] = []
    ch.basic_consume(queue, lambda c, m, p, b: got.append(time.perf_counter()), auto_ack=True)
    times = []
    padding = b"x" * max(0, size - 8)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        before = len(got)
        sent = time.perf_counter()
        ch.basic_publish("", queue, struct.pack(">d", sent) + padding)
        while len(got) == before:
            conn.process_data_events(time_limit=0.001)
        times.append(got[-1] - sent)
    conn.close()
    return times
