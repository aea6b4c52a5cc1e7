"""The follower's relay (B-CLUSTER-2): every node accepts AMQP and HTTP connections; a
follower passes its clients' bytes to the leader and the leader's bytes back, unchanged.

One `Proxy` per listener. Each accepted connection gets a connection to the current target
(the leader's address); the bytes go both ways through asyncio protocols, with
back-pressure: when one side's transport buffer is over its high-water mark, reading from
the other side pauses until it drains, so nothing is buffered without bound. When the leader
moves, every relayed connection is closed (the clients reconnect and reach the new leader);
while there is no leader, new clients wait up to `wait` seconds for one, then are closed.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct

from mq.logfmt import kv

log = logging.getLogger("mq.cluster.proxy")

Target = tuple[str, int]
# SO_LINGER on, 0 s: close() resets the connection, so no TIME_WAIT is left on our side.
_LINGER_RESET = struct.pack("ii", 1, 0)


def _reset(transport: asyncio.BaseTransport | None) -> None:
    """Close at once, dropping what is buffered, with a reset (no TIME_WAIT here)."""
    if transport is None or transport.is_closing():
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    transport.abort()


class _Half(asyncio.Protocol):
    """One side of a relayed connection: what it reads is written to its peer; when its
    own buffer fills it pauses the peer's reading (and resumes it once drained)."""

    def __init__(self, relay: _Relay) -> None:
        self.relay = relay
        self.transport: asyncio.Transport | None = None
        self.peer: _Half | None = None
        self.eof = False  # it sent EOF (it writes no more)
        self.paused = False  # its reading is paused by the peer's full buffer
        self.early: list[bytes] = []  # read before the peer was connected (bounded: see below)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self is self.relay.client:
            self.relay.started()

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or peer.transport is None:
            # Read before the two sides are joined: keep it and stop reading (one read's
            # worth at most); flush() passes it on.
            self.early.append(data)
            self.pause()
            return
        peer.transport.write(data)

    def flush(self) -> None:
        """Joined to the peer: write what was read before, pass on an EOF, read on."""
        peer = self.peer
        if self.early:
            peer.transport.write(b"".join(self.early))
            self.early.clear()
        if self.eof:
            if peer.transport.can_write_eof():
                peer.transport.write_eof()
        else:
            self.resume()

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        if peer is None or peer.transport is None:
            return True  # the peer gets it once connected
        if peer.eof:  # both sides are done
            self.relay.close()
            return False
        if peer.transport.can_write_eof():
            peer.transport.write_eof()
            return True  # half-closed: the other direction goes on
        self.relay.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.lost(self, exc)

    # ---- back-pressure: this side's write buffer is full -> the peer stops reading -----

    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.pause()

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.resume()

    def pause(self) -> None:
        if not self.paused and self.transport is not None and not self.transport.is_closing():
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None and not self.transport.is_closing():
            self.paused = False
            self.transport.resume_reading()


class _Relay:
    """A client's connection and its connection to the target."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.client = _Half(self)
        self.upstream: _Half | None = None
        self.target: Target | None = None  # what it connects (or is connected) to
        self.task: asyncio.Task | None = None
        self.closed = False
        self.peer = ""

    def started(self) -> None:
        """The client is accepted: hold its bytes until the target's side is up."""
        self.client.pause()
        peer = self.client.transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.task = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        proxy = self.proxy
        try:
            target = await proxy._wait_target()
        except asyncio.TimeoutError:
            log.debug("proxy: no leader to relay to, client closed %s",
                      kv(what=proxy.what, client=self.peer, waited=proxy.wait))
            self.close()
            return
        self.target = target
        loop = asyncio.get_running_loop()
        upstream = _Half(self)
        try:
            await asyncio.wait_for(loop.create_connection(lambda: upstream, *target),
                                   proxy.connect_timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            log.debug("proxy: cannot reach the target, client closed %s",
                      kv(what=proxy.what, client=self.peer, target=f"{target[0]}:{target[1]}",
                         error=str(exc) or type(exc).__name__))
            self.close()
            return
        if self.closed:  # closed while connecting (target change, close())
            _reset(upstream.transport)
            return
        self.upstream = upstream
        client = self.client
        upstream.peer, client.peer = client, upstream
        with contextlib.suppress(OSError):  # AMQP frames are small: no Nagle delay
            upstream.transport.get_extra_info("socket").setsockopt(
                socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        log.debug("proxy: relaying %s", kv(what=proxy.what, client=self.peer,
                                           target=f"{target[0]}:{target[1]}"))
        # Either side may have spoken before the two were joined (the leader's side between
        # its connection_made and here): pass that on, then let both read.
        for side in (client, upstream):
            side.flush()

    def lost(self, side: _Half, exc: Exception | None) -> None:
        """One side is gone: the other is closed once its buffered bytes are written."""
        other = self.upstream if side is self.client else self.client
        self.closed = True
        self._stop_waiting()
        if other is not None and other.transport is not None and not other.transport.is_closing():
            other.transport.close()
        self.finish()

    def close(self) -> None:
        """Close both sides (the buffered bytes are written first)."""
        self.closed = True
        for side in (self.client, self.upstream):
            if side is not None and side.transport is not None:
                side.transport.close()
        self.finish()

    def reset(self) -> None:
        """Close both sides at once (the target changed, or the proxy closes)."""
        self.closed = True
        self._stop_waiting()
        for side in (self.client, self.upstream):
            if side is not None:
                _reset(side.transport)
        self.finish()

    def _stop_waiting(self) -> None:
        """A client waiting for a target waits no more. One whose connection to the target
        is under way is left to it: `closed` makes _connect reset what it got (cancelling
        could lose a transport that was made just then)."""
        if self.target is None and self.task is not None and not self.task.done():
            self.task.cancel()

    def finish(self) -> None:
        self.proxy._relays.discard(self)


class Proxy:
    """Accepts TCP connections on (host, port) and relays the bytes both ways to the current
    target."""

    def __init__(self, what: str, wait: float = 5.0, connect_timeout: float = 5.0) -> None:
        self.what = what  # "amqp" or "http", for log lines
        self.wait = wait
        self.connect_timeout = connect_timeout
        self.target: Target | None = None
        self._server: asyncio.AbstractServer | None = None
        self._relays: set[_Relay] = set()
        self._waiters: set[asyncio.Future] = set()

    @property
    def connections(self) -> int:
        """Client connections open now (relayed, connecting or waiting for a target)."""
        return len(self._relays)

    async def start(self, host: str, port: int) -> int:
        """Listen (port 0: a free one); returns the bound port."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._accept, host, port,
                                                reuse_address=True, backlog=1024)
        bound = self._server.sockets[0].getsockname()[1]
        log.info("proxy listening %s", kv(what=self.what, host=host, port=bound))
        return bound

    def _accept(self) -> asyncio.Protocol:
        relay = _Relay(self)
        self._relays.add(relay)
        return relay.client

    def set_target(self, target: Target | None) -> None:
        """The leader's address for this listener, or None while there is none. A change
        closes every relayed connection (and those connecting to the old target); clients
        waiting for a target go on to the new one."""
        target = None if target is None else (str(target[0]), int(target[1]))
        if target == self.target:
            return
        old, self.target = self.target, target
        dropped = [r for r in self._relays if r.target is not None and r.target != target]
        for relay in dropped:
            relay.reset()
        log.info("proxy target %s", kv(what=self.what,
                                       old=f"{old[0]}:{old[1]}" if old else "none",
                                       new=f"{target[0]}:{target[1]}" if target else "none",
                                       closed=len(dropped)))
        if target is not None:
            waiters, self._waiters = self._waiters, set()
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(target)

    async def _wait_target(self) -> Target:
        """The current target, or the next one set within `wait` seconds (else
        asyncio.TimeoutError)."""
        if self.target is not None:
            return self.target
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            return await asyncio.wait_for(waiter, self.wait)
        finally:
            self._waiters.discard(waiter)

    async def close(self) -> None:
        """Stop listening and close every relayed connection; the port is free at once."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        relays = list(self._relays)
        for relay in relays:
            relay.reset()
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)
        if relays:
            log.debug("proxy closed %s", kv(what=self.what, connections=len(relays)))
