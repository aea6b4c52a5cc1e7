"""Sockets: one asyncio protocol object per client connection, feeding the sans-IO
connection and batching its output into one write per loop turn."""
from __future__ import annotations

import asyncio
import gc
import logging
import os
import json
import signal
import ssl
import threading
import time
from typing import Any

import anyio

from mq.alarms import ResourceMonitor, release_free_memory
from mq.amqp.connection import Connection
from mq.broker.broker import Broker
from mq.broker.errors import AMQPError, ConnectionForced
from mq.broker.definitions import import_definitions, load_access
from mq.config import Settings, memory_limit, parse_size
from mq.logfmt import kv
from mq.store import Store, StoreError
from mq.store.paging import Pager

log = logging.getLogger("mq.server")

# Connection timers run this often: a 1 s heartbeat needs a frame every 0.5 s, and clients
# such as @cloudamqp/amqp-client drop a connection that is silent for one whole interval.
TICK = 0.25
WRITE_BUFFER_HIGH = 4 * 1024 * 1024  # pause deliveries above this much unsent output
WRITE_BUFFER_LOW = 1024 * 1024
# Output gathered during a read goes out in one write, or sooner past this much: the
# transport's high-water mark (pause_writing) must see it while a queue is still dispatching.
WRITE_GATHER = 256 * 1024
SHUTDOWN_DRAIN_TIMEOUT = 2.0  # seconds for clients to be sent their 320 before we exit
# The event loop measures its own lateness (B-DUR-9, B-FLOW-4): a timer every LAG_INTERVAL
# notes how late it ran; the worst of each LAG_WINDOW is kept (and logged past LAG_WARN).
LAG_INTERVAL = 0.01
LAG_WINDOW = 10.0
LAG_WARN = 0.1


class AMQPProtocol(asyncio.Protocol):
    """Glue between an asyncio transport and a Connection (which is also its Transport)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.conn: Connection | None = None
        self._loop = asyncio.get_running_loop()
        self._out: Any = None  # the connection's Output: gathers what goes out (mq._core.delivery)
        # Why reading is paused: "turn", "flow", "blocked", "disk" (an answer waits for it)
        self._paused: set[str] = set()
        self._slice_scheduled = False
        self.recv_oct = self.send_oct = 0  # bytes in and out, for the management API
        self.connected_at = time.time()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(WRITE_BUFFER_HIGH, WRITE_BUFFER_LOW)
        peer = transport.get_extra_info("peername") or ("?", 0)
        settings = self.server.settings
        self.conn = Connection(self.server.broker, self, (str(peer[0]), int(peer[1])),
                               heartbeat=settings.heartbeat,
                               handshake_timeout=settings.handshake_timeout,
                               channel_max=settings.max_channels_per_connection)
        self._out = self.conn.out
        self._out.gather(WRITE_GATHER, self._schedule_flush)
        self.conn.set_alarms(self.server.monitor.alarms)
        self.server.connections.add(self.conn)
        log.info("connection accepted %s", kv(peer=self.conn.name))

    def data_received(self, data: bytes) -> None:
        self.recv_oct += len(data)
        self._handle(self.conn.data_received, data)

    def _next_slice(self) -> None:
        self._slice_scheduled = False
        if len(self._paused) > 1 or self.conn.closed:
            return  # also held by flow or an alarm: resume_reading goes on from here
        self._handle(self.conn.process_more)

    def _handle(self, step: Any, *args: Any) -> None:
        """One slice of input, its output in one write. The connection handles one slice
        per loop turn (B-FLOW-4): without this, libuv reads up to 32 chunks of 256 KB from
        one socket per turn and a flooding publisher starves every other connection's acks
        and heartbeats. The socket is not read while a slice waits."""
        out = self._out
        out.in_read = True
        try:
            more = step(*args)
        finally:
            out.in_read = False
        out.flush()
        if more:
            self.pause_reading("turn")
            self._schedule_slice()
        elif "turn" in self._paused:
            self.resume_reading("turn")

    def _schedule_slice(self) -> None:
        if not self._slice_scheduled:
            self._slice_scheduled = True
            self._loop.call_soon(self._next_slice)

    def _schedule_flush(self) -> None:
        self._loop.call_soon(self._out.flush)

    # Transport interface used by Connection (write: where its Output's gathered bytes go).
    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.send_oct += len(data)
            self.transport.write(data)

    def close(self) -> None:
        if self._out is not None:
            self._out.flush()
        if self.transport is not None:
            self.transport.close()

    def pause_reading(self, reason: str) -> None:
        """Stop reading the socket for this reason (others may hold it paused too)."""
        if not self._paused and self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
        self._paused.add(reason)

    def resume_reading(self, reason: str) -> None:
        """This reason is gone: read again once no other one holds the socket paused (first
        what is still buffered, a slice per turn)."""
        self._paused.discard(reason)
        if self._paused == {"turn"}:
            self._schedule_slice()
        elif not self._paused and self.transport is not None \
                and not self.transport.is_closing():
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        self.conn.set_writable(False)

    def resume_writing(self) -> None:
        self.conn.set_writable(True)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._out is not None:
            self._out.discard()
        self.transport = None
        if self.conn is not None:
            self.conn.connection_lost()
            self.server.connections.discard(self.conn)


class Server:
    """The broker process: listener, timers, signals."""

    def __init__(self, settings: Settings, cluster: Any = None) -> None:
        self.settings = settings
        # In a cluster: the leader's part (mq.cluster.node.Leading), None on a single node.
        self.cluster = cluster
        self.broker = Broker(max_message_size=settings.max_message_size,
                             loopback_users=tuple(u for u in settings.loopback_users.split(",") if u),
                             max_connections=settings.max_connections,
                             max_queues=settings.max_queues)
        self.monitor = ResourceMonitor(memory_limit(settings.memory_high_watermark),
                                       parse_size(settings.disk_free_limit), settings.data_dir,
                                       self._alarms_changed)
        self.connections: set[Connection] = set()
        # Event-loop lag in seconds: the worst since start, and of the last whole window.
        self.loop_lag_max = 0.0
        self.loop_lag_window = 0.0
        self.port = settings.port
        self.tls_port = settings.tls_port
        self.management_port = settings.management_port

    async def serve(self, started: Any = None) -> None:
        """Run until cancelled or SIGTERM/SIGINT."""
        os.makedirs(self.settings.data_dir, exist_ok=True)
        loop = asyncio.get_running_loop()
        # Recover durable state before accepting anyone.
        store = Store(self.settings.data_dir, self.settings.store_segment_size)
        # Recovery makes millions of long-lived objects and no garbage cycles: without the
        # collector it is faster (a 1M backlog took 7.8 s with it, 2.6 s without, before
        # replay moved to C), and what it built is frozen so that later collections do not
        # walk it again and again.
        gc.disable()
        try:
            try:
                recovered = store.open()
            except StoreError as exc:
                log.error("cannot start: %s", exc)
                raise SystemExit(f"mq: {exc}") from None
            # After the store's lock is ours: the last run's paging scratch is wiped here.
            self.broker.page_to(Pager(os.path.join(self.settings.data_dir, "paging"),
                                      self.settings.queue_memory_budget))
            self.broker.restore(store, recovered)
            del recovered        # the queues hold what they need; free the rest now
        finally:
            gc.enable()
        gc.freeze()
        release_free_memory()
        if load_access(self.broker, self.settings.data_dir):
            log.info("loaded users and permissions from %s", self.settings.data_dir)
        if self.settings.definitions:
            try:
                with open(self.settings.definitions) as fh:
                    import_definitions(self.broker, json.load(fh))
            except (OSError, ValueError, KeyError, AMQPError) as exc:  # bad JSON, queue, policy
                reason = exc.text if isinstance(exc, AMQPError) else \
                    f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
                log.error("cannot start: definitions %s: %s", self.settings.definitions, reason)
                raise SystemExit(f"mq: definitions {self.settings.definitions}: {reason}") \
                    from None
            log.info("definitions loaded %s", kv(path=self.settings.definitions))
        store.on_failure = self.monitor.store_failed  # B-DUR-8: the disk alarm at once
        if self.cluster is not None:
            self.cluster.attach(store)  # before the flusher starts: every write is streamed
        store.start(loop)
        self.broker.timers.attach(loop)
        listener = await loop.create_server(lambda: AMQPProtocol(self), self.settings.host,
                                            self.settings.port, reuse_address=True, backlog=1024)
        self.port = listener.sockets[0].getsockname()[1]
        tls_listener = await self._tls_listener(loop)
        management = await self._management()
        log.info("mq listening on amqp://%s:%d (data dir %s)", self.settings.host, self.port,
                 self.settings.data_dir)
        if started is not None:
            started(self)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._ticker)
                tg.start_soon(self._watch_resources)
                tg.start_soon(self._watch_loop)
                if management is not None:
                    tg.start_soon(management.run)  # rate sampling; closes the HTTP side at the end
                tg.start_soon(self._signals, tg.cancel_scope)
                if self.cluster is not None:
                    tg.start_soon(self.cluster.run)
        finally:
            listener.close()
            if tls_listener is not None:
                tls_listener.close()
            self.shutdown()
            with anyio.CancelScope(shield=True):
                await self._drain()
            store.close()
            log.info("event loop lag %s", kv(worst_ms=round(self.loop_lag_max * 1000, 1)))
            log.info("mq stopped")

    async def _tls_listener(self, loop: asyncio.AbstractEventLoop) -> Any:
        """The amqps listener (B-AUTH-3), when a certificate and key are configured."""
        settings = self.settings
        if not (settings.tls_cert and settings.tls_key):
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
        if settings.tls_ca:
            context.load_verify_locations(settings.tls_ca)
            context.verify_mode = ssl.CERT_REQUIRED
        listener = await loop.create_server(lambda: AMQPProtocol(self), settings.host,
                                            settings.tls_port, ssl=context, reuse_address=True,
                                            backlog=1024)
        self.tls_port = listener.sockets[0].getsockname()[1]
        log.info("mq listening on amqps://%s:%d", settings.host, self.tls_port)
        return listener

    async def _management(self) -> Any:
        """The management HTTP API, dashboard and metrics (B-MGMT), unless the port is -1."""
        settings = self.settings
        if settings.management_port < 0:
            return None
        from mq.management import Management  # aiohttp is loaded only when it is used

        management = Management(self)
        self.management_port = await management.start(settings.management_host or settings.host,
                                                      settings.management_port)
        return management

    async def _ticker(self) -> None:
        while True:
            await anyio.sleep(TICK)
            for conn in list(self.connections):
                conn.tick()

    async def _watch_resources(self) -> None:
        self.monitor.check()
        log.info("resource limits %s", kv(memory_high_watermark=self.monitor.memory_limit,
                                          disk_free_limit=self.monitor.disk_limit))
        while True:
            await anyio.sleep(self.monitor.interval())
            self.monitor.check()

    async def _watch_loop(self) -> None:
        """How late the loop runs a timer: a stall of the whole broker (any connection's
        work, compaction, the disk) shows here."""
        loop = asyncio.get_running_loop()
        window_max = 0.0
        window_end = loop.time() + LAG_WINDOW
        while True:
            before = loop.time()
            await asyncio.sleep(LAG_INTERVAL)
            now = loop.time()
            lag = now - before - LAG_INTERVAL
            if lag > window_max:
                window_max = lag
                if lag > self.loop_lag_max:
                    self.loop_lag_max = lag
            if now >= window_end:
                self.loop_lag_window = window_max
                if window_max >= LAG_WARN:
                    log.warning("event loop lag %s", kv(worst_ms=round(window_max * 1000),
                                                        window_s=LAG_WINDOW))
                window_max = 0.0
                window_end = now + LAG_WINDOW

    def _alarms_changed(self, alarms: tuple[str, ...]) -> None:
        for conn in list(self.connections):
            conn.set_alarms(alarms)

    async def _signals(self, scope: anyio.CancelScope) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # embedded in a thread: the host program owns the signals
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("shutting down %s", kv(signal=signal.Signals(signum).name))
                scope.cancel()
                return

    def shutdown(self) -> None:
        """Close every client with 320 CONNECTION_FORCED, in RabbitMQ's words."""
        for conn in list(self.connections):
            conn.close_with(ConnectionForced(
                "broker forced connection closure with reason 'shutdown'"))
            conn.close_transport()

    async def _drain(self) -> None:
        """Let the sockets send their connection.close before the loop ends."""
        deadline = time.monotonic() + SHUTDOWN_DRAIN_TIMEOUT
        while self.connections and time.monotonic() < deadline:
            await anyio.sleep(0.01)
