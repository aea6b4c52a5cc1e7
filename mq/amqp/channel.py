"""An AMQP channel: frame and method dispatch, the channel, exchange, queue and consume
methods. Publishing (publishing.py) and settling with transactions (settling.py) are mixed in;
subscriptions are consumer.py's."""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any, Callable

from pamqp import commands as spec

from mq._core import frames
from mq._core.channel import ChannelCore
from mq._core.delivery import Deliveries
from mq._core.message import Message
from mq.amqp.consumer import ChannelConsumer, consumer_tag
from mq.amqp.methods import decode_method
from mq.amqp.publishing import Publishing
from mq.amqp.settling import Settling
from mq.broker.durability import durable_binding, refuse_while_failing, seq_to_wait
from mq.broker.errors import (AccessRefused, ChannelError, CommandInvalid, FrameError, NotAllowed,
                              NotImplemented_, PreconditionFailed, UnexpectedFrame)
from mq.broker.publish import REPLY_TO, check_permission, check_topic
from mq.broker.queue import Queue
from mq.broker.queue_args import consumer_priority

if TYPE_CHECKING:
    from mq.amqp.connection import Connection
    from mq.broker.exchange import Exchange

M_PUBLISH = 0x003C0028
M_ACK = 0x003C0050
M_CHANNEL_CLOSE = 0x00140028
M_CHANNEL_CLOSE_OK = 0x00140029


class Channel(ChannelCore, Publishing, Settling):
    """One channel of a connection. Errors it raises are closed by the connection."""

    def __init__(self, conn: Connection, number: int) -> None:
        # Deliveries (their tags, the unsettled ones and the counts read from them), confirm
        # mode, the unconfirmed publishes, the route cache: ChannelCore's (mq._core.channel).
        self.start(number, conn, Deliveries(number, conn.out))
        self.state = "open"
        self.consumers: dict[str, ChannelConsumer] = {}
        self.prefetch = 0          # for consumers created from now on (global=false)
        # consumer tags whose basic.cancel waits for this channel's queue.delete-ok
        self.held_cancels: list[str] | None = None
        self.reply_queue: Queue | None = None  # direct reply-to pseudo-queue
        self._tx_publishes: list[tuple[Any, Message, bool]] = []
        # Settles named in the transaction, already taken out of the deliveries (still
        # counted): (tag, entry, queue, consumer) records, and requeue (None for an ack).
        self._tx_settles: list[tuple[list[tuple], bool | None]] = []
        # A publish being assembled: method, then header, then body frames (_pending is
        # ChannelCore's: (exchange, routing key, mandatory) from the method frame).
        self._props = b""
        self._body_size = 0
        self._body: list[bytes] = []
        self._received = 0
        self._handlers: dict[str, Callable[[Any], None]] = {
            "Channel.Close": self._channel_close, "Channel.CloseOk": self._ignore,
            "Channel.Flow": self._flow, "Channel.FlowOk": self._ignore,
            "Channel.Open": self._reopen,
            "Exchange.Declare": self._exchange_declare, "Exchange.Delete": self._exchange_delete,
            "Exchange.Bind": self._exchange_bind, "Exchange.Unbind": self._exchange_unbind,
            "Queue.Declare": self._queue_declare, "Queue.Bind": self._queue_bind,
            "Queue.Unbind": self._queue_unbind, "Queue.Purge": self._queue_purge,
            "Queue.Delete": self._queue_delete,
            "Basic.Qos": self._qos, "Basic.Consume": self._consume, "Basic.Cancel": self._cancel,
            "Basic.Get": self._get, "Basic.Reject": self._reject, "Basic.Nack": self._nack,
            "Basic.Recover": self._recover, "Basic.RecoverAsync": self._recover,
            "Confirm.Select": self._confirm_select,
            "Tx.Select": self._tx_select, "Tx.Commit": self._tx_commit,
            "Tx.Rollback": self._tx_rollback,
        }

    @property
    def vhost(self) -> Any:
        return self.conn.vhost

    @property
    def state(self) -> str:
        """open, closing (we sent channel.close), releasing, closed."""
        return self._state

    @state.setter
    def state(self, state: str) -> None:
        self._state = state
        self.deliveries.open = state == "open"

    @property
    def global_prefetch(self) -> int:
        """basic.qos global=true: the limit of the whole channel's unsettled deliveries."""
        return self.deliveries.limit

    def send(self, method: Any) -> None:
        self.conn.send_method(self.number, method)

    # ---- frames -------------------------------------------------------------------------

    def frame_received(self, ftype: int, payload: bytes) -> None:
        if self.state == "closing":
            self._while_closing(ftype, payload)
            return
        if ftype == 1:
            if self._pending is not None:
                raise UnexpectedFrame(f"expected content header for class 60, got a method frame "
                                      f"on channel {self.number}")
            mid = frames.method_id(payload)
            self.current_method = (mid >> 16, mid & 0xFFFF)
            if mid == M_PUBLISH:
                self._publish(payload)
            elif mid == M_ACK:
                try:
                    tag, multiple = frames.decode_ack(payload)
                except ValueError as exc:  # RabbitMQ: 501 "cannot decode"
                    raise FrameError(f"cannot decode basic.ack: {exc}") from None
                self.ack_assembled(tag, multiple)
            else:
                method = decode_method(payload)
                handler = self._handlers.get(method.name)
                if handler is None:
                    # RabbitMQ: 503 "unimplemented method" (e.g. connection.close on channel 1).
                    raise CommandInvalid(f"method {method.name} is not accepted on a channel")
                handler(method)
        elif ftype == 2:
            self._content_header(payload)
        else:
            self._content_body(payload)

    def _while_closing(self, ftype: int, payload: bytes) -> None:
        """After we sent channel.close, only close-ok (or the client's own close) counts."""
        if ftype != 1:
            return
        mid = frames.method_id(payload)
        if mid == M_CHANNEL_CLOSE:
            # The closes crossed: answer, but the client still owes us its close-ok.
            self.send(spec.Channel.CloseOk())
        elif mid == M_CHANNEL_CLOSE_OK:
            self.conn.channel_closed(self.number)

    def _ignore(self, method: Any) -> None:
        pass

    def _reopen(self, method: Any) -> None:
        raise ChannelError(f"second 'channel.open' seen on channel {self.number}")

    # ---- channel class ----------------------------------------------------------------

    def _channel_close(self, method: Any) -> None:
        self.release()
        self.send(spec.Channel.CloseOk())
        self.conn.channel_closed(self.number)

    def _flow(self, method: Any) -> None:
        # As RabbitMQ 3.10: a client may not pause the server's deliveries this way (basic.qos
        # is the way); active=false closes the connection with 540.
        if not method.active:
            raise NotImplemented_("active=false")
        self.send(spec.Channel.FlowOk(active=True))

    def closing(self) -> None:
        """We are closing the channel with an error: drop its state now."""
        self.release()
        self.state = "closing"

    def release(self) -> None:
        """Cancel consumers and requeue unacked messages (channel or connection closed)."""
        self._pending = None
        self._body = []
        closing = self.state == "closing"
        self.state = "releasing"  # its consumers have no room from now on
        # Requeue before the consumers go, as RabbitMQ does: a single active consumer that
        # takes over then gets the requeued messages first, in their original order.
        uncommitted = [record for taken, _ in self._tx_settles for record in taken]
        self._tx_publishes, self._tx_settles = [], []
        self._requeue_entries(self._release_taken(self.deliveries.take_all() + uncommitted))
        for consumer in list(self.consumers.values()):
            consumer.queue.remove_consumer(consumer)
        self.consumers.clear()
        self.reply_queue = None
        self.state = "closing" if closing else "closed"

    def resume_deliveries(self) -> None:
        for queue in {c.queue for c in self.consumers.values()}:
            queue.dispatch()

    # ---- exchanges ----------------------------------------------------------------------

    def _allow(self, permission: str, kind: str, name: str) -> None:
        """403 unless the user's permissions on this vhost allow it (B-AUTH-1)."""
        check_permission(self.conn.user, self.vhost.name, permission, kind, name)

    def _allow_topic(self, permission: str, exchange: Exchange | None, routing_key: str) -> None:
        """B-AUTH-1 topic authorisation (mq.broker.publish.check_topic)."""
        check_topic(self.conn.user, self.vhost.name, permission, exchange, routing_key)

    # ---- durable changes: answered once on disk (B-DUR-8, B-DUR-9) ----------------------

    def _answer_durable(self, before: int, durable: bool,
                        reply: Callable[[], None] | None) -> None:
        """After a change: reply() (None: nowait) once what it wrote to the store is on disk,
        as RabbitMQ's declare-ok and commit-ok mean. A change that wrote nothing but names a
        durable object (a redeclare) waits for the last topology record, which may be its
        own. The wait never blocks the loop: this connection is held (wait_for_disk)."""
        target = seq_to_wait(self.store, before, durable)
        if not target:
            if reply is not None:
                reply()
            return
        self.conn.wait_for_disk(self, target, reply)

    def _send_later(self, method: Any, nowait: bool) -> Callable[[], None] | None:
        return None if nowait else lambda: self.send(method)

    def _durable_binding(self, source: str, destination: str, to_queue: bool) -> bool:
        """Whether a binding between these (if they exist) is kept in the store."""
        vhost = self.vhost
        src = vhost.exchanges.get(source)
        dest = (vhost.queues if to_queue else vhost.exchanges).get(destination)
        return src is not None and dest is not None and durable_binding(src, dest)

    def _exchange_declare(self, m: Any) -> None:
        if not m.passive:
            self._allow("configure", "exchange", m.exchange)
        before = refuse_while_failing(self.store, not m.passive and m.durable
                                      and m.exchange not in self.vhost.exchanges)
        exchange = self.vhost.declare_exchange(m.exchange, m.exchange_type, m.passive,
                                               m.durable, m.auto_delete, m.internal,
                                               m.arguments)
        self._answer_durable(before, not m.passive and exchange.durable,
                             self._send_later(spec.Exchange.DeclareOk(), m.nowait))

    def _exchange_delete(self, m: Any) -> None:
        self._allow("configure", "exchange", m.exchange)
        existing = self.vhost.exchanges.get(m.exchange)
        before = refuse_while_failing(self.store, existing is not None and existing.durable)
        self.vhost.delete_exchange(m.exchange, m.if_unused)
        self._answer_durable(before, False, self._send_later(spec.Exchange.DeleteOk(), m.nowait))

    def _exchange_bind(self, m: Any) -> None:
        self._allow("write", "exchange", m.destination)
        self._allow("read", "exchange", m.source)
        self._allow_topic("read", self.vhost.exchanges.get(m.source), m.routing_key)
        durable = self._durable_binding(m.source, m.destination, False)
        before = refuse_while_failing(self.store, durable)
        self.vhost.bind_names(m.source, m.destination, False, m.routing_key, m.arguments,
                              self.conn)
        self._answer_durable(before, durable, self._send_later(spec.Exchange.BindOk(), m.nowait))

    def _exchange_unbind(self, m: Any) -> None:
        self._allow("write", "exchange", m.destination)
        self._allow("read", "exchange", m.source)
        self._allow_topic("read", self.vhost.exchanges.get(m.source), m.routing_key)
        durable = self._durable_binding(m.source, m.destination, False)
        before = refuse_while_failing(self.store, durable)
        self.vhost.unbind_names(m.source, m.destination, False, m.routing_key, m.arguments,
                                self.conn)
        self._answer_durable(before, False,
                             self._send_later(spec.Exchange.UnbindOk(), m.nowait))

    # ---- queues -------------------------------------------------------------------------

    def _queue_declare(self, m: Any) -> None:
        if m.queue.startswith(REPLY_TO):
            self._reply_to_declare(m)
            return
        if m.queue and not m.passive:
            self._allow("configure", "queue", m.queue)
        new = not m.passive and m.queue not in self.vhost.queues
        if new:
            self.conn.broker.check_queue_limit(self.vhost.name, m.queue)
        before = refuse_while_failing(self.store, new and m.durable and not m.exclusive)
        queue = self.vhost.declare_queue(m.queue, m.passive, m.durable, m.exclusive,
                                         m.auto_delete, m.arguments, owner=self.conn)
        # The counts as they are when the declare-ok goes out.
        reply = None if m.nowait else lambda: self.conn.write(_encode_declare_ok(self.number,
                                                                                  queue))
        self._answer_durable(before, not m.passive and bool(queue.store_qid), reply)

    def _reply_to_declare(self, m: Any) -> None:
        """RabbitMQ answers a declare (passive or not) of a direct reply-to name itself: the
        bare name always exists, a generated one while its consumer lasts; else 404."""
        if m.queue != REPLY_TO and m.queue not in self.vhost.reply_queues:
            self.vhost.get_queue(m.queue)  # not a real queue either: 404 in the vhost's words
        if not m.nowait:
            self.send(spec.Queue.DeclareOk(queue=m.queue, message_count=0, consumer_count=1))

    def _queue_bind(self, m: Any) -> None:
        self._allow("write", "queue", m.queue)
        self._allow("read", "exchange", m.exchange)
        self._allow_topic("read", self.vhost.exchanges.get(m.exchange), m.routing_key)
        durable = self._durable_binding(m.exchange, m.queue, True)
        before = refuse_while_failing(self.store, durable)
        self.vhost.bind_names(m.exchange, m.queue, True, m.routing_key, m.arguments, self.conn)
        self._answer_durable(before, durable, self._send_later(spec.Queue.BindOk(), m.nowait))

    def _queue_unbind(self, m: Any) -> None:
        self._allow("write", "queue", m.queue)
        self._allow("read", "exchange", m.exchange)
        self._allow_topic("read", self.vhost.exchanges.get(m.exchange), m.routing_key)
        durable = self._durable_binding(m.exchange, m.queue, True)
        before = refuse_while_failing(self.store, durable)
        self.vhost.unbind_names(m.exchange, m.queue, True, m.routing_key, m.arguments, self.conn)
        self._answer_durable(before, False, self._send_later(spec.Queue.UnbindOk(), False))

    def _queue_purge(self, m: Any) -> None:
        self._allow("read", "queue", m.queue)
        count = self.vhost.get_queue(m.queue, self.conn).purge()
        if not m.nowait:
            self.send(spec.Queue.PurgeOk(message_count=count))

    def _queue_delete(self, m: Any) -> None:
        self._allow("configure", "queue", m.queue)
        existing = self.vhost.queues.get(m.queue)
        before = refuse_while_failing(self.store,
                                      existing is not None and bool(existing.store_qid))
        # RabbitMQ answers delete-ok before it tells this channel's consumers of the queue
        # they are cancelled; py-amqp/kombu fail on the reverse order.
        self.held_cancels = []
        try:
            count = self.vhost.delete_queue(m.queue, m.if_unused, m.if_empty, owner=self.conn)
        finally:
            held, self.held_cancels = self.held_cancels, None

        def reply() -> None:
            if not m.nowait:
                self.send(spec.Queue.DeleteOk(message_count=count))
            for tag in held:
                self.send(spec.Basic.Cancel(consumer_tag=tag, nowait=True))
        self._answer_durable(before, False, reply)

    # ---- consuming ----------------------------------------------------------------------

    def _qos(self, m: Any) -> None:
        if m.prefetch_size:
            raise NotImplemented_(f"prefetch_size!=0 ({m.prefetch_size})")
        if m.global_:
            self.deliveries.limit = m.prefetch_count
        else:
            self.prefetch = m.prefetch_count
        self.send(spec.Basic.QosOk())
        self.resume_deliveries()

    def _consume(self, m: Any) -> None:
        if m.queue == REPLY_TO:
            queue = self._open_reply_queue(m.no_ack)
        else:
            self._allow("read", "queue", m.queue)
            queue = self.vhost.consumable(m.queue, self.conn)
        tag = m.consumer_tag or consumer_tag()
        if tag in self.consumers:
            raise NotAllowed(f"attempt to reuse consumer tag '{tag}'")
        # RabbitMQ refuses any exclusive consume on a single-active-consumer queue.
        if queue.has_exclusive_consumer() or (m.exclusive and (
                queue.consumer_count or queue.settings.single_active_consumer)):
            raise AccessRefused(f"queue '{queue.name}' in vhost '{queue.vhost}' in exclusive use")
        arguments = m.arguments or {}
        queue.check_consume(m.no_ack, self.prefetch, self.deliveries.limit, arguments)
        priority = consumer_priority(arguments, queue.name, queue.vhost)
        consumer = ChannelConsumer(self, queue, tag, m.no_ack, m.exclusive, priority,
                                   self.prefetch, arguments)
        self.consumers[tag] = consumer
        if not m.nowait:
            self.send(spec.Basic.ConsumeOk(consumer_tag=tag))
        queue.add_consumer(consumer)

    def _open_reply_queue(self, no_ack: bool) -> Queue:
        """Direct reply-to: consuming from amq.rabbitmq.reply-to gives the channel a private
        pseudo-queue that replies are routed to by its generated name."""
        if not no_ack:
            raise PreconditionFailed("reply consumer cannot acknowledge")
        if self.reply_queue is not None:
            raise PreconditionFailed("reply consumer already set")
        self.reply_queue = self.vhost.open_reply_queue(self.conn)
        return self.reply_queue

    def _cancel(self, m: Any) -> None:
        consumer = self.consumers.pop(m.consumer_tag, None)
        if not m.nowait:
            self.send(spec.Basic.CancelOk(consumer_tag=m.consumer_tag))
        if consumer is not None:
            consumer.queue.remove_consumer(consumer)
            if consumer.queue is self.reply_queue:
                self.reply_queue = None

    def _get(self, m: Any) -> None:
        self._allow("read", "queue", m.queue)
        queue = self.vhost.get_queue(m.queue, self.conn)
        entry = queue.get(m.no_ack)
        if entry is None:
            self.send(spec.Basic.GetEmpty())
            return
        tag = self.deliveries.next_tag()
        if not m.no_ack:
            self.deliveries.add(tag, entry, queue, None)
        msg = entry.msg
        self.conn.write(frames.encode_get_ok(self.number, tag, entry.redelivered,
                                             msg.exchange, msg.routing_key, queue.message_count,
                                             queue.delivery_props(entry), msg.body,
                                             self.conn.frame_max))


def _encode_declare_ok(channel: int, queue: Queue) -> bytes:
    """queue.declare-ok, encoded here because pamqp refuses queue names outside a narrow
    regex while AMQP (and RabbitMQ) allow any UTF-8 name of up to 255 bytes."""
    name = queue.name.encode()
    payload = (struct.pack(">HHB", 50, 11, len(name)) + name
               + struct.pack(">II", queue.message_count, queue.consumer_count))
    return frames.encode_frame(1, channel, payload)
