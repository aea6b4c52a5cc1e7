"""The follower's relay, mq.cluster.proxy (B-CLUSTER-2): a follower passes its clients'
connections to the leader. Driven from this thread with real sockets and pika, the proxy on
its own event loop in a thread (the plain asyncio loop and uvloop), relaying to real echo
servers and a real mq broker."""
from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import os
import socket
import threading
import time
from typing import Any, Callable, Coroutine, Iterator

import pika
import pytest

from mq.cluster.proxy import Proxy
from mq.testing import BrokerProcess, run_broker
from ctlutil import eventually

LOOPS = ["asyncio"]
try:
    import uvloop
    LOOPS.append("uvloop")
except ImportError:  # pragma: no cover
    uvloop = None


class LoopThread:
    """An event loop running in a daemon thread; coroutines are run on it from the test."""

    def __init__(self, kind: str) -> None:
        self.loop = uvloop.new_event_loop() if kind == "uvloop" else asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 20) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        async def call() -> Any:
            return fn(*args)
        return self.run(call())

    def stop(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self.run(cancel_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


class Echo:
    """A TCP server on the loop: says its name and a newline, then echoes what it reads
    (with back-pressure, so 1 MB echoed back is no problem); `sink=True` never reads."""

    def __init__(self, lt: LoopThread, name: str, sink: bool = False) -> None:
        self.lt, self.name, self.sink = lt, name.encode(), sink
        self.writers: list[asyncio.StreamWriter] = []
        self.server = lt.run(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        writer.write(self.name + b"\n")
        try:
            if self.sink:
                await asyncio.sleep(3600)
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        async def close() -> None:
            self.server.close()
            for writer in self.writers:
                writer.transport.abort()
        self.lt.run(close())


@pytest.fixture(params=LOOPS)
def lt(request: pytest.FixtureRequest) -> Iterator[LoopThread]:
    loop_thread = LoopThread(request.param)
    yield loop_thread
    loop_thread.stop()


@pytest.fixture
def proxy(lt: LoopThread) -> Iterator[tuple[Proxy, int]]:
    p = Proxy("amqp", wait=0.5)
    port = lt.run(p.start("127.0.0.1", 0))
    yield p, port
    lt.run(p.close())


@pytest.fixture
def echo(lt: LoopThread) -> Iterator[Echo]:
    server = Echo(lt, "A")
    yield server
    server.close()


def connect(port: int, timeout: float = 5) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def read_line(sock: socket.socket) -> bytes:
    out = b""
    while not out.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        out += chunk
    return out


def closed(sock: socket.socket, timeout: float = 5) -> bool:
    """True when the peer closes (EOF or reset) within timeout (data before that is read)."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False
    return True


def recv_exact(sock: socket.socket, size: int) -> bytes:
    got = b""
    while len(got) < size:
        chunk = sock.recv(size - len(got))
        if not chunk:
            break
        got += chunk
    return got


def echo_round(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    return recv_exact(sock, len(data))


def test_relays_both_ways_and_a_megabyte_arrives_intact(lt: LoopThread, proxy, echo) -> None:
    """B-CLUSTER-2: the bytes go to the target and back unchanged; 1 MB sent through the
    proxy comes back intact (written while read, so both directions carry it at once)."""
    p, port = proxy
    lt.call(p.set_target, echo.address)
    with connect(port) as sock:
        assert read_line(sock) == b"A\n"
        assert echo_round(sock, b"hello") == b"hello"
        payload = os.urandom(1 << 20)
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        got = bytearray()
        while len(got) < len(payload):
            chunk = sock.recv(65536)
            assert chunk, "closed early"
            got += chunk
        sender.join(10)
        assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
        assert lt.call(lambda: p.connections) == 1
    assert lt.call(lambda: p.connections) == 0 or eventually(
        lambda: lt.call(lambda: p.connections) == 0)


def test_back_pressure_bounds_what_the_proxy_buffers(lt: LoopThread, proxy) -> None:
    """B-CLUSTER-2: a target that does not read stops the proxy reading the client (no
    unbounded buffering): the client's writes block, the proxy's buffers stay small."""
    p, port = proxy
    sink = Echo(lt, "S", sink=True)
    try:
        lt.call(p.set_target, sink.address)
        with connect(port) as sock:
            assert read_line(sock) == b"S\n"
            sock.setblocking(False)
            sent, chunk = 0, b"x" * 65536
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline and sent < 256 << 20:
                try:
                    sent += sock.send(chunk)
                except BlockingIOError:
                    time.sleep(0.01)
            assert sent < 64 << 20, f"{sent} bytes went in: the proxy does not push back"

            def buffered() -> int:
                return max((side.transport.get_write_buffer_size()
                            for relay in p._relays for side in (relay.client, relay.upstream)
                            if side is not None and side.transport is not None), default=0)
            assert lt.call(buffered) <= 1 << 20
    finally:
        sink.close()


def test_new_target_closes_relayed_connections(lt: LoopThread, proxy, echo) -> None:
    """B-CLUSTER-2: when the leader moves, every relayed connection is closed (clients
    reconnect), and new ones reach the new target."""
    p, port = proxy
    other = Echo(lt, "B")
    try:
        lt.call(p.set_target, echo.address)
        socks = [connect(port) for _ in range(3)]
        for sock in socks:
            assert read_line(sock) == b"A\n"
        lt.call(p.set_target, echo.address)  # the same target: nothing changes
        assert echo_round(socks[0], b"still") == b"still"
        lt.call(p.set_target, other.address)
        for sock in socks:
            assert closed(sock)
            sock.close()
        with connect(port) as sock:
            assert read_line(sock) == b"B\n"
            assert echo_round(sock, b"ping") == b"ping"
    finally:
        other.close()


def test_without_a_target_clients_wait_then_are_closed(lt: LoopThread, proxy, echo) -> None:
    """B-CLUSTER-2: with no leader, a new client waits up to `wait` seconds: closed when
    none comes, relayed when one is set in time; None also closes relayed connections."""
    p, port = proxy  # wait=0.5
    with connect(port) as sock:
        started = time.monotonic()
        assert closed(sock, timeout=5)
        assert 0.4 <= time.monotonic() - started < 3
    with connect(port) as sock:
        sock.sendall(b"early ")  # sent before there is anyone to send it to
        time.sleep(0.2)
        lt.call(p.set_target, echo.address)
        assert read_line(sock) == b"A\n"
        sock.sendall(b"bird")
        assert recv_exact(sock, 10) == b"early bird"
        lt.call(p.set_target, None)
        assert closed(sock)


def test_unreachable_target_closes_the_client(lt: LoopThread, proxy) -> None:
    """B-CLUSTER-2: a connection that cannot reach the target is closed."""
    p, port = proxy
    with socket.socket() as probe:  # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()
    lt.call(p.set_target, dead)
    with connect(port) as sock:
        assert closed(sock, timeout=5)
    assert eventually(lambda: lt.call(lambda: p.connections) == 0)


def test_close_frees_the_port_at_once(lt: LoopThread, echo) -> None:
    """B-CLUSTER-2: close() stops listening and closes every relayed connection; the
    broker's own listener can bind the port right after (as a follower becoming leader)."""
    p = Proxy("amqp", wait=5)
    port = lt.run(p.start("127.0.0.1", 0))
    lt.call(p.set_target, echo.address)
    socks = [connect(port) for _ in range(3)]
    for sock in socks:
        assert read_line(sock) == b"A\n"
    waiting = Proxy("http", wait=5)  # and one whose client is waiting for a target
    wport = lt.run(waiting.start("127.0.0.1", 0))
    wsock = connect(wport)
    time.sleep(0.1)
    lt.run(p.close())
    lt.run(waiting.close())
    for sock in socks + [wsock]:
        assert closed(sock, timeout=2)
        sock.close()
    for bound in (port, wport):
        # as the broker listens: asyncio's create_server with reuse_address=True
        server = lt.run(asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", bound,
                                             reuse_address=True))
        server.close()
        lt.run(server.wait_closed())
    # even without SO_REUSEADDR: the relayed connections were reset, no TIME_WAIT here
    with socket.socket() as plain:
        plain.bind(("127.0.0.1", port))
        plain.listen()


def test_pika_publishes_and_gets_through_the_proxy(lt: LoopThread, proxy,
                                                   mq_broker: BrokerProcess, uid: str) -> None:
    """B-CLUSTER-2: a real client (pika) through the proxy to a real broker: declare,
    publish with confirms, get the messages back; then the leader moves and the client's
    connection is closed."""
    p, port = proxy
    lt.call(p.set_target, ("127.0.0.1", mq_broker.port))
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        queue = f"proxy-{uid}"
        ch.queue_declare(queue, auto_delete=True)
        bodies = [b"m%d" % i for i in range(100)] + [os.urandom(300_000)]
        for body in bodies:
            ch.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2))
        got = []
        for _ in bodies:
            method, _, body = ch.basic_get(queue, auto_ack=True)
            assert method is not None
            got.append(body)
        assert got == bodies
        lt.call(p.set_target, ("127.0.0.1", 1))  # the leader moved (elsewhere)
        with pytest.raises(pika.exceptions.AMQPError):
            for _ in range(50):
                conn.process_data_events(0.1)
                ch.basic_get(queue)
    finally:
        if conn.is_open:
            conn.close()




def test_management_http_through_the_proxy(lt: LoopThread) -> None:
    """B-CLUSTER-2: HTTP connections are relayed too: the management API answers through
    the proxy (several requests on one kept-alive connection, and a large body)."""
    with run_broker(args=("--management-port", "0")) as broker:
        p = Proxy("http", wait=0.5)
        port = lt.run(p.start("127.0.0.1", 0))
        try:
            mgmt_port = int(broker.management_url.rsplit(":", 1)[1])
            lt.call(p.set_target, ("127.0.0.1", mgmt_port))
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            auth = {"Authorization": "Basic Z3Vlc3Q6Z3Vlc3Q=", "Content-Type":
                    "application/json"}
            for _ in range(3):
                conn.request("GET", "/api/overview", headers=auth)
                response = conn.getresponse()
                assert response.status == 200
                assert json.loads(response.read())["product_name"] == "mq"
            payload = "x" * 200_000
            conn.request("PUT", "/api/queues/%2F/proxied-http", body=json.dumps(
                {"durable": False}), headers=auth)
            assert conn.getresponse().read() == b""
            conn.request("POST", "/api/exchanges/%2F/amq.default/publish", headers=auth,
                         body=json.dumps({"properties": {}, "routing_key": "proxied-http",
                                          "payload": payload, "payload_encoding": "string"}))
            assert json.loads(conn.getresponse().read()) == {"routed": True}
            conn.request("POST", "/api/queues/%2F/proxied-http/get", headers=auth,
                         body=json.dumps({"count": 1, "ackmode": "ack_requeue_false",
                                          "encoding": "auto"}))
            [message] = json.loads(conn.getresponse().read())
            assert message["payload"] == payload
            conn.request("DELETE", "/api/queues/%2F/proxied-http", headers=auth)
            conn.getresponse().read()
            conn.close()
        finally:
            lt.run(p.close())
