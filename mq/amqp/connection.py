"""The AMQP 0-9-1 connection state machine, sans-IO: bytes in, frames out to a sink.

It owns the handshake, heartbeats, channel table and the one place where typed protocol
errors become channel.close / connection.close.
"""
from __future__ import annotations

import logging
import platform
import struct
import time
from typing import Any, Callable, Protocol

from pamqp import commands as spec
from pamqp import frame as pamqp_frame

import mq
from mq._core import frames
from mq._core.fieldtable import decode_table
from mq._core.connection import ConnectionCore
from mq._core.delivery import Output
from mq.amqp.channel import Channel
from mq.amqp.methods import decode_method
from mq.broker.broker import Broker
from mq.broker.durability import disk_error, when_durable
from mq.broker.errors import (AMQPError, ChannelError, CommandInvalid, FrameError, InternalError,
                              NotAllowed, UnexpectedFrame)
from mq.logfmt import kv

log = logging.getLogger("mq.connection")

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
CHANNEL_MAX = 2047
FRAME_MAX = 131072
FRAME_MIN = 4096
HEARTBEAT = 60
HANDSHAKE_TIMEOUT = 10.0
CLOSE_TIMEOUT = 3.0
# Credit flow (B-FLOW-1) holds a publisher at most this long before reading it again for a
# turn, so that connections which publish to each other's consumers never wait forever.
FLOW_MAX_PAUSE = 1.0
FLOW_STATE_INTERVAL = 1.0  # 'flow' is shown this long after it ends (RabbitMQ's interval)
# channel.open-ok with an empty reserved long string, as RabbitMQ sends it (pamqp would send
# "0", which clients that skip a fixed 4 bytes, like @cloudamqp/amqp-client, misparse).
CHANNEL_OPEN_OK = b"\x00\x14\x00\x0b\x00\x00\x00\x00"

CAPABILITIES = {
    "publisher_confirms": True,
    "exchange_exchange_bindings": True,
    "basic.nack": True,
    "consumer_cancel_notify": True,
    "connection.blocked": True,
    "consumer_priorities": True,
    "authentication_failure_close": True,
    "per_consumer_qos": True,
    "direct_reply_to": True,
}


class Transport(Protocol):
    """Where a connection's output goes (the server's socket, or a list in tests)."""

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...

    def pause_reading(self, reason: str) -> None: ...

    def resume_reading(self, reason: str) -> None: ...


class Connection(ConnectionCore):
    """One client connection. Feed it bytes with `data_received`; call `tick` every second.
    The loop over each slice of frames is ConnectionCore's (mq._core.connection)."""

    def __init__(self, broker: Broker, transport: Transport, peer: tuple[str, int] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 heartbeat: int = HEARTBEAT, handshake_timeout: float = HANDSHAKE_TIMEOUT,
                 channel_max: int = CHANNEL_MAX) -> None:
        self.broker = broker
        self.transport = transport
        # Where frames go (its channels' deliveries write there directly), frame_max and
        # whether the peer takes more (mq._core.delivery.Output).
        self.out = Output(transport.write)
        self.peer = peer or ("?", 0)
        self.clock = clock
        # Until tune-ok, frames are limited to frame_min (as in RabbitMQ), so a client that is
        # not logged in cannot make us buffer a huge frame.
        self.reader = frames.FrameReader(FRAME_MIN)
        self.state = "header"
        self.channels: dict[int, Channel] = {}
        # Queues whose consumers got room back during a read: dispatched once at its end.
        self.pending_dispatch: dict[Any, None] = {}
        self._max_channels = channel_max  # what we propose in tune (--max-channels-per-connection)
        self.channel_max = channel_max
        self.heartbeat = 0
        self._proposed_heartbeat = heartbeat
        self._handshake_timeout = handshake_timeout
        self.user: Any = None
        self.vhost: Any = None
        self.client_properties: dict = {}
        self.capabilities: dict = {}
        self.closed = False
        self._opened_at = clock()
        self._last_recv = self._last_sent = self._closing_since = self._opened_at
        self._last_tick = self._opened_at
        self.name = f"{self.peer[0]}:{self.peer[1]}"
        self._current_method = (0, 0)  # class and method id of the last method frame
        # Resource alarms (B-CONN-10), as RabbitMQ: while an alarm is on the connection is
        # 'blocking'; its next publish makes it 'blocked' (connection.blocked, reading paused).
        self.alarms: tuple[str, ...] = ()
        self.blocked = False
        # Credit flow (B-FLOW-1): queues that fell behind this connection's publishes; it is
        # not read while any of them is behind.
        self.flow_queues: set[Any] = set()
        self._flow_since = 0.0
        self._flow_ended = float("-inf")
        self._counted = False  # counted in broker.open_connections
        # Waiting for the disk (B-DUR-9): (channel, reply) of a method whose answer needs its
        # store records on disk; no further frame of this connection is handled (nor read)
        # until the store answers. Events already cut from the buffer wait in _held_events.
        self._disk_wait: tuple[Channel, Callable[[], None] | None] | None = None
        self._disk_now: list | None = None
        self._held_events: Any = None

    # ---- output ---------------------------------------------------------------------

    @property
    def frame_max(self) -> int:
        return self.out.frame_max

    @property
    def writable(self) -> bool:
        return self.out.writable

    def write(self, data: bytes) -> None:
        self.out.write(data)

    def send_method(self, channel: int, method: Any) -> None:
        self.write(pamqp_frame.marshal(method, channel))

    # ---- input ----------------------------------------------------------------------

    def data_received(self, data: bytes) -> bool:
        """Handle bytes from the peer, one slice of them now (B-FLOW-4). Returns True when
        more is buffered: call process_more() on a later loop turn. Never raises."""
        if self.closed:
            return False
        self._last_recv = self.clock()
        self.reader.feed(data)
        return self.process_more()

    def process_more(self) -> bool:
        """The next slice of what is buffered (at most mq._core.connection.READ_SLICE bytes of frames, so that
        other connections get their turn). Returns True when more remains. Never raises:
        every failure becomes a close."""
        if self.closed:
            return False
        if self._disk_wait is not None:
            return True  # held: the store's answer goes on from here (resume_reading)
        more = False
        try:
            try:
                more = self._process()
            except frames.FrameError as exc:
                self._connection_error(FrameError(exc.text.partition(" - ")[2] or exc.text), 0, 0,
                                       broken=True)
            except AMQPError as exc:
                self._connection_error(exc, *self._current_method)
            except Exception:
                # A bug of ours, not the client's: 541 for this connection, the rest goes on.
                log.exception("internal error %s", kv(peer=self.name))
                self._connection_error(InternalError("internal error, see the broker log"),
                                       *self._current_method)
            finally:
                self._after_read()
        except Exception:
            # The error path itself failed: drop the socket rather than leave a dead protocol.
            log.exception("connection dropped %s", kv(peer=self.name,
                                                      reason="error while closing it"))
            self.abort()
        return more and not self.closed

    def _after_read(self) -> None:
        """Deliveries freed by this read's acks, then its confirms, each batched."""
        pending, self.pending_dispatch = self.pending_dispatch, {}
        for queue in pending:
            queue.dispatch()
        for ch in list(self.channels.values()):
            ch.flush_confirms()

    def _hold_rest(self, events: Any, event: tuple) -> None:
        for i, e in enumerate(events):
            if e is event:
                if i + 1 < len(events):
                    self._held_events = events[i + 1:]
                return

    # ---- waiting for the disk (B-DUR-8, B-DUR-9) ---------------------------------------

    def wait_for_disk(self, ch: Channel, seq: int, reply: Callable[[], None] | None) -> None:
        """Answer a method of ch (reply(), or None for nowait) once the store's records up
        to seq are on disk; a failed write closes the channel with 541 and the disk error
        instead. Meanwhile the loop goes on: only this connection waits (its socket is not
        read and frames already read are held), so its methods are answered in order."""
        self._disk_wait = (ch, reply)
        self._disk_now = []
        try:
            when_durable(self.broker.store, self._disk_answered, seq)
        except BaseException:
            self._disk_wait = None
            raise
        finally:
            now, self._disk_now = self._disk_now, None
        if now:  # answered at once (no flusher thread, or writes failing): no hold
            self._disk_wait = None
            if now[0] is not None:
                raise disk_error(now[0])
            if reply is not None:
                reply()
            return
        if self._disk_wait is not None:
            self.transport.pause_reading("disk")

    def _disk_answered(self, exc: BaseException | None) -> None:
        """The store's answer (on the loop). Never raises."""
        if self._disk_now is not None:
            self._disk_now.append(exc)
            return
        wait, self._disk_wait = self._disk_wait, None
        if wait is None or self.closed:
            return
        ch, reply = wait
        try:
            if self.state == "open" and self.channels.get(ch.number) is ch \
                    and ch.state == "open":
                if exc is not None:
                    self.channel_error(ch, disk_error(exc))
                elif reply is not None:
                    reply()
            self._after_read()
            self.transport.resume_reading("disk")
        except Exception:
            log.exception("connection dropped %s", kv(peer=self.name,
                                                      reason="error while answering after "
                                                             "the disk"))
            self.abort()

    def _replay(self, event: tuple) -> None:
        """A publish or ack event the core did not take: handled as the frames it was."""
        for frame in frames.unassemble(event):
            self._frame(*frame)

    def _hot_failed(self, ch: Channel, exc: Exception) -> None:
        """An error from a publish or ack the core handled: a channel error closes that
        channel; anything else goes on up, as an error of that method."""
        self._current_method = ch.current_method
        if not isinstance(exc, AMQPError) or exc.connection_level:
            raise exc
        self.channel_error(ch, exc)

    def _protocol_header(self) -> bool:
        header = self.reader.take_raw(8)
        if header is None:
            return False  # wait for all 8 bytes; the handshake timeout bounds the wait
        if header != PROTOCOL_HEADER:
            self._reject_header()
            return False
        self.state = "start-ok"
        self.send_method(0, spec.Connection.Start(
            server_properties={
                "product": "mq", "version": mq.__version__,
                "platform": f"Python {platform.python_version()}",
                "copyright": "mq contributors", "information": "https://example.invalid/mq",
                "cluster_name": "mq@" + platform.node(),
                "capabilities": CAPABILITIES,
            },
            mechanisms="PLAIN AMQPLAIN", locales="en_US"))
        return True

    def _reject_header(self) -> None:
        log.info("connection refused %s", kv(peer=self.name, reason="bad protocol header"))
        self.write(PROTOCOL_HEADER)
        self.close_transport()

    def _frame(self, ftype: int, channel: int, payload: bytes) -> None:
        if ftype == 8:  # heartbeat
            if channel != 0:
                raise UnexpectedFrame(f"heartbeat frame on channel {channel}")
            return
        if ftype == 1:
            if len(payload) < 4:
                self._current_method = (0, 0)
                raise FrameError(f"method frame of {len(payload)} bytes is too short to hold "
                                 "class and method ids")
            # Named in connection.close if this method (or its content) breaks a rule.
            self._current_method = (payload[0] << 8 | payload[1], payload[2] << 8 | payload[3])
        if self.state == "closing":
            if ftype == 1 and channel == 0:
                mid = frames.method_id(payload)
                if mid == 0x000A0033:  # close-ok
                    self.close_transport()
                elif mid == 0x000A0032:  # close from the client too
                    self.send_method(0, spec.Connection.CloseOk())
                    self.close_transport()
            return
        if channel == 0:
            if ftype != 1:
                raise UnexpectedFrame(f"unexpected content frame type {ftype} on channel 0")
            self._connection_method(decode_method(payload))
            return
        if self.state != "open":
            raise CommandInvalid(f"channel {channel} used before the connection was opened")
        ch = self.channels.get(channel)
        if ch is None and len(self.channels) >= self.channel_max and ftype == 1 \
                and frames.method_id(payload) == 0x0014000A:
            log.warning("channel refused %s", kv(peer=self.name, channel=channel,
                                                 limit=self.channel_max))
            self._current_method = (0, 0)  # RabbitMQ's close names no method here
            raise NotAllowed(f"number of channels opened ({len(self.channels)}) has reached "
                             f"the negotiated channel_max ({self.channel_max})")
        if ch is None:
            if ftype != 1:  # RabbitMQ: 505, as for content without a publish
                raise UnexpectedFrame(f"content frame on channel {channel}, which is not open")
            if frames.method_id(payload) != 0x0014000A:
                raise ChannelError(f"expected 'channel.open' on channel {channel}")
            decode_method(payload)
            self.channels[channel] = Channel(self, channel)
            self.write(frames.encode_frame(1, channel, CHANNEL_OPEN_OK))
            return
        try:
            ch.frame_received(ftype, payload)
        except AMQPError as exc:
            if exc.connection_level:
                # Name what the channel was doing: the publish whose content went wrong.
                self._current_method = ch.current_method
                raise
            self.channel_error(ch, exc)

    def channel_error(self, ch: Channel, exc: AMQPError) -> None:
        """A channel-level error: channel.close with the code and the offending method."""
        log.info("channel error %s", kv(peer=self.name, user=getattr(self.user, "name", None),
                                        channel=ch.number, code=exc.reply_code,
                                        text=exc.reply_text))
        class_id, method_id = ch.current_method
        ch.flush_confirms()  # publishes routed before the error are acked before the close
        ch.closing()
        self.write(close_frame(ch.number, exc.reply_code, exc.reply_text, class_id, method_id))

    def channel_closed(self, number: int) -> None:
        self.channels.pop(number, None)

    # ---- connection class methods -----------------------------------------------------

    def _connection_method(self, method: Any) -> None:
        name = method.name
        if name == "Connection.StartOk" and self.state == "start-ok":
            self._start_ok(method)
        elif name == "Connection.TuneOk" and self.state == "tune-ok":
            self._tune_ok(method)
        elif name == "Connection.Open" and self.state == "open-wait":
            self._open(method)
        elif name == "Connection.Close":
            self.send_method(0, spec.Connection.CloseOk())
            self._log_closed("client closed")
            self.close_transport()
        elif name in ("Connection.Blocked", "Connection.Unblocked", "Connection.UpdateSecret"):
            if name == "Connection.UpdateSecret":
                self.send_method(0, spec.Connection.UpdateSecretOk())
        else:
            # RabbitMQ: 504 "unexpected method in connection state running".
            raise ChannelError(f"unexpected method {name} on channel 0 in connection state "
                               f"'{self.state}'")

    def _credentials(self, method: Any) -> tuple[str, str] | None:
        response = method.response
        # pamqp hands a longstr over as str when it is valid UTF-8: encoding it back as UTF-8
        # restores the bytes on the wire.
        raw = response.encode("utf-8") if isinstance(response, str) else bytes(response or b"")
        if method.mechanism == "PLAIN":
            parts = raw.split(b"\x00")
            if len(parts) != 3:
                return None
            return parts[1].decode("utf-8", "replace"), parts[2].decode("utf-8", "replace")
        if method.mechanism == "AMQPLAIN":
            try:
                table = decode_table(len(raw).to_bytes(4, "big") + raw)
            except Exception:
                return None
            login, password = table.get("LOGIN"), table.get("PASSWORD")
            if login is None or password is None:
                return None
            return (login.decode() if isinstance(login, bytes) else str(login),
                    password.decode() if isinstance(password, bytes) else str(password))
        return None

    def _start_ok(self, method: Any) -> None:
        self.client_properties = method.client_properties or {}
        self.capabilities = self.client_properties.get("capabilities") or {}
        if method.mechanism not in ("PLAIN", "AMQPLAIN"):
            self._refuse_login(f"unsupported authentication mechanism '{method.mechanism}'", "?")
            return
        creds = self._credentials(method)
        user = self.broker.users.authenticate(*creds) if creds else None
        if user is None:
            self._refuse_login(
                f"Login was refused using authentication mechanism {method.mechanism}. "
                "For details see the broker logfile.", creds[0] if creds else "?")
            return
        if user.name in self.broker.loopback_users and not _is_loopback(self.peer[0]):
            self._refuse_login(f"user '{user.name}' can only connect via localhost", user.name)
            return
        self.user = user
        self.state = "tune-ok"
        self.send_method(0, spec.Connection.Tune(channel_max=self._max_channels,
                                                 frame_max=FRAME_MAX,
                                                 heartbeat=self._proposed_heartbeat))

    def _refuse_login(self, text: str, username: str) -> None:
        log.warning("authentication failed %s", kv(peer=self.name, user=username, text=text))
        if self.capabilities.get("authentication_failure_close"):
            # As RabbitMQ: wait for close-ok (or the close timeout) before dropping the
            # socket, so that clients read the 403 rather than a reset (php-amqplib).
            self.write(close_frame(0, 403, f"ACCESS_REFUSED - {text}", 0, 0))
            self.state = "closing"
            self._closing_since = self.clock()
        else:
            self.close_transport()

    def _tune_ok(self, method: Any) -> None:
        channel_max = method.channel_max or self._max_channels
        frame_max = method.frame_max or FRAME_MAX
        if channel_max > self._max_channels:
            raise NotAllowed(f"channel_max={channel_max} > {self._max_channels} max channels")
        if frame_max > FRAME_MAX:
            raise NotAllowed(f"frame_max={frame_max} > {FRAME_MAX} max size")
        if frame_max < FRAME_MIN:
            raise NotAllowed(f"frame_max={frame_max} < {FRAME_MIN} min size")
        self.channel_max, self.out.frame_max = channel_max, frame_max
        self.heartbeat = method.heartbeat
        self.reader.frame_max = frame_max
        self.state = "open-wait"

    def _open(self, method: Any) -> None:
        vhost = self.broker.vhosts.get(method.virtual_host)
        if vhost is None or method.virtual_host not in self.user.permissions:
            raise NotAllowed(f"vhost {method.virtual_host} not found"
                             if vhost is None else
                             f"access to vhost '{method.virtual_host}' refused for user "
                             f"'{self.user.name}'")
        limit = self.broker.max_connections
        if limit and self.broker.open_connections >= limit:
            log.warning("connection refused %s", kv(peer=self.name, user=self.user.name,
                                                    reason="connection limit", limit=limit))
            raise NotAllowed(f"connection refused: node connection limit ({limit}) is reached")
        self.broker.open_connections += 1
        self._counted = True
        self.vhost = vhost
        self.state = "open"
        self.send_method(0, spec.Connection.OpenOk())
        log.info("connection opened %s", kv(peer=self.name, user=self.user.name,
                                            vhost=vhost.name))

    # ---- errors, timers, teardown -----------------------------------------------------

    def _connection_error(self, exc: AMQPError, class_id: int, method_id: int,
                          broken: bool = False) -> None:
        if self.closed:
            return
        if self.state == "closing":
            if broken:  # garbage while waiting for close-ok: no point waiting longer
                self.close_transport()
            return
        log.warning("connection error %s", kv(peer=self.name, user=getattr(self.user, "name", None),
                                              vhost=getattr(self.vhost, "name", None),
                                              code=exc.reply_code, text=exc.reply_text))
        handshaking = self.state in ("header", "start-ok", "tune-ok")
        self.state = "closing"
        self._closing_since = self.clock()
        self._release()
        self.write(close_frame(0, exc.reply_code, exc.reply_text, class_id, method_id))
        if broken or handshaking:
            self.close_transport()

    def close_with(self, exc: AMQPError) -> None:
        """Close the connection from the broker's side (e.g. 320 on shutdown)."""
        self._connection_error(exc, 0, 0)

    def tick(self) -> None:
        """Timers: handshake timeout, heartbeats, close-ok timeout. Call a few times a second.

        Never raises: the server's one timer task ticks every connection."""
        if self.closed:
            return
        try:
            self._tick()
        except Exception:
            log.exception("connection dropped %s", kv(peer=self.name, reason="error in its timers"))
            self.abort()

    def _tick(self) -> None:
        now = self.clock()
        previous_tick, self._last_tick = self._last_tick, now
        if self.state == "closing":
            if now - self._closing_since > CLOSE_TIMEOUT:
                self.close_transport()
        elif self.state != "open":
            if now - self._opened_at > self._handshake_timeout:
                log.warning("connection closed %s", kv(
                    peer=self.name, reason=f"handshake not finished in "
                                           f"{self._handshake_timeout:.0f}s"))
                self.close_transport()
        else:
            if self.flow_queues and now - self._flow_since > FLOW_MAX_PAUSE:
                self._end_flow()
            if not self.heartbeat:
                return
            # Not reading a blocked connection is our doing: its silence is no timeout.
            if now - self._last_recv > 2 * self.heartbeat and not self.paused:
                log.warning("connection closed %s", kv(
                    peer=self.name, user=getattr(self.user, "name", None),
                    reason=f"missed heartbeats from client, timeout: {self.heartbeat}s"))
                self.close_transport()
                return
            if self.out.sent:
                # Something went out since the last tick: count it as sent then (the
                # earliest it may have been), so that silence never outlasts heartbeat / 2
                # by more than the tick.
                self.out.sent = False
                self._last_sent = previous_tick
            if now - self._last_sent >= self.heartbeat / 2:
                self.write(frames.HEARTBEAT_FRAME)
                self.out.sent = False
                self._last_sent = now

    def set_alarms(self, alarms: tuple[str, ...]) -> None:
        """The broker's resource alarms changed (B-CONN-10). A blocked connection is told
        and read again once none is left; others block at their next publish.

        Never raises: the server's resource monitor calls it for every connection."""
        self.alarms = alarms
        if not alarms and self.blocked and not self.closed:
            self.blocked = False
            self._last_recv = self.clock()
            try:
                if self.capabilities.get("connection.blocked"):
                    self.send_method(0, spec.Connection.Unblocked())
                self.transport.resume_reading("blocked")
            except Exception:
                log.exception("connection dropped %s", kv(peer=self.name,
                                                          reason="error while unblocking it"))
                self.abort()
                return
            log.info("connection unblocked %s", kv(peer=self.name,
                                                   user=getattr(self.user, "name", None)))

    def _message_complete(self, number: int) -> bool:
        """A content frame ended its message: block after a whole publish (RabbitMQ blocks
        at the header and leaves the body unread until it unblocks)."""
        ch = self.channels.get(number)
        return ch is None or ch.ready_for_publish()

    def _block(self) -> None:
        self.blocked = True
        reason = "low on " + " & ".join(self.alarms)  # RabbitMQ's: 'low on memory & disk'
        if self.capabilities.get("connection.blocked"):
            self.send_method(0, spec.Connection.Blocked(reason=reason))
        self.transport.pause_reading("blocked")
        log.info("connection blocked %s", kv(peer=self.name, user=getattr(self.user, "name", None),
                                             reason=reason))

    def reading_state(self) -> str:
        """What the management API shows, as RabbitMQ: 'blocked' by an alarm, 'blocking'
        (an alarm is on, it has not published since), 'flow' (held by credit flow now or
        within the last second), else 'running'."""
        if self.blocked:
            return "blocked"
        if self.alarms:
            return "blocking"
        if self.flow_queues or self.clock() - self._flow_ended < FLOW_STATE_INTERVAL:
            return "flow"
        return "running"

    @property
    def paused(self) -> bool:
        """Not read by our choice (alarm or flow): its silence is no missed heartbeat."""
        return self.blocked or bool(self.flow_queues) or self._disk_wait is not None

    def flow(self, queue: Any) -> None:
        """A queue this connection published to is behind its consumers: stop reading until
        it catches up (it calls flow_off). Not when this connection consumes from it: the
        acks that let the queue catch up would never be read."""
        if queue in self.flow_queues or self.closed or queue.consumed_by(self):
            return
        if not self.flow_queues:
            self._flow_since = self.clock()
            self.transport.pause_reading("flow")
        self.flow_queues.add(queue)
        queue.flow_publishers.add(self)

    def flow_off(self, queue: Any) -> None:
        """The queue caught up. Never raises: another connection's dispatch calls it."""
        self.flow_queues.discard(queue)
        if not self.flow_queues:
            self._flow_resumed()

    def _end_flow(self) -> None:
        """Held for FLOW_MAX_PAUSE: read again for a turn, whatever the queues say."""
        self._forget_flow()
        self._flow_resumed()

    def _forget_flow(self) -> None:
        for queue in self.flow_queues:
            queue.flow_publishers.discard(self)
        self.flow_queues.clear()

    def _flow_resumed(self) -> None:
        if self.closed:
            return
        self._last_recv = self._flow_ended = self.clock()
        try:
            self.transport.resume_reading("flow")
        except Exception:
            log.exception("connection dropped %s", kv(peer=self.name,
                                                      reason="error while resuming it"))
            self.abort()

    def set_writable(self, writable: bool) -> None:
        """Back-pressure from the socket: consumers pause while the peer can't keep up."""
        self.out.writable = writable
        if writable:
            for ch in list(self.channels.values()):
                ch.resume_deliveries()

    def close_transport(self) -> None:
        if not self.closed:
            self._mark_closed()
            try:
                self._release()
            finally:
                self.transport.close()

    def abort(self) -> None:
        """Last resort after a failed cleanup: close the socket, skip the release."""
        self._mark_closed()
        self.channels.clear()
        self.transport.close()

    def connection_lost(self) -> None:
        """The socket went away: same cleanup as a close. Never raises, so that the server
        always forgets the connection."""
        if not self.closed:
            self._log_closed("connection lost")
            self._mark_closed()
            try:
                self._release()
            except Exception:
                log.exception("connection release failed %s", kv(peer=self.name))

    def _log_closed(self, reason: str) -> None:
        log.info("connection closed %s", kv(peer=self.name, user=getattr(self.user, "name", None),
                                            vhost=getattr(self.vhost, "name", None),
                                            reason=reason))

    def _mark_closed(self) -> None:
        # Before the release: if that fails, the connection still counts as closed.
        self.closed = True
        self.state = "closed"

    def _release(self) -> None:
        # Messages requeued from one channel must not be delivered to another of ours.
        self.out.writable = False
        self._forget_flow()
        for ch in list(self.channels.values()):
            ch.release()
        self.channels.clear()
        if self._counted:
            self._counted = False
            self.broker.open_connections -= 1
        if self.vhost is not None:
            self.vhost.connection_closed(self)


def close_frame(channel: int, reply_code: int, reply_text: str, class_id: int,
                method_id: int) -> bytes:
    """connection.close (channel 0) or channel.close, encoded here because the reply text may
    name things in the bytes the client used, even invalid UTF-8 (pamqp only encodes valid
    str). As RabbitMQ, a text over 255 bytes is cut to 252 and ends in "..."."""
    text = reply_text.encode("utf-8", "surrogateescape")
    if len(text) > 255:
        cut = 252
        while cut and text[cut] & 0xC0 == 0x80:  # not inside a UTF-8 character
            cut -= 1
        text = text[:cut] + b"..."
    close = (10, 50) if channel == 0 else (20, 40)
    return frames.encode_frame(1, channel, struct.pack(">HHHB", *close, reply_code, len(text))
                               + text + struct.pack(">HH", class_id, method_id))


def _is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "::1", "localhost") or host.startswith("127.") \
        or host.startswith("::ffff:127.")
