"""Publishing on a channel: content assembly, and the AMQP side of publisher confirms and
basic.return. The checks, routing and the question of when a publish may be confirmed are
the broker's (mq.broker.publish), shared with the HTTP API's publish. Mixed into Channel:
the state it works on is declared, typed, in ChannelCore (mq/_core/channel.pxd: confirm,
tx, publish_seq, published, unconfirmed, _writable, _pending, max_message_size); its own is
the content being assembled (_props, _body, _body_size, _received, set by Channel)."""
from __future__ import annotations

from typing import Any

from pamqp import commands as spec

from mq._core import frames
from mq._core.message import Message
from mq.broker.errors import (FrameError, NotImplemented_, PreconditionFailed, SyntaxError_,
                              UnexpectedFrame)
from mq.broker.properties import decode as decode_properties
from mq.broker.properties import encode as encode_properties
from mq.broker.publish import (NO_ROUTE, REPLY_TO, check_exchange, check_message,
                               check_size, route)


class Publishing:
    """basic.publish (with its content frames) and confirm.select, for Channel; a publish
    along a cached route is ChannelCore's (mq._core.channel)."""

    def _publish(self, payload: bytes) -> None:
        try:
            exchange, routing_key, mandatory, immediate = frames.decode_publish(payload)
        except ValueError as exc:  # RabbitMQ: 501 "cannot decode"
            raise FrameError(f"cannot decode basic.publish: {exc}") from None
        if immediate:
            raise NotImplemented_("immediate=true")
        self._pending = (exchange, routing_key, mandatory)

    def _content_header(self, payload: bytes) -> None:
        if self._pending is None or self._props:
            raise UnexpectedFrame(f"content header frame without a basic.publish on channel "
                                  f"{self.number}")
        try:
            class_id, body_size, props = frames.decode_content_header(payload)
        except ValueError as exc:  # RabbitMQ: 501 FRAME_ERROR
            raise FrameError(f"cannot decode content header: {exc}") from None
        if class_id != 60:
            raise UnexpectedFrame(f"content header for class {class_id}, expected 60")
        self._accept_header(body_size, props)

    def _accept_header(self, body_size: int, props: bytes) -> None:
        try:
            check_size(body_size, self.max_message_size)
        except PreconditionFailed:
            self._pending = None
            raise
        self._props = props
        self._body_size = body_size
        if body_size == 0:
            self._complete(b"")

    def _content_body(self, payload: bytes) -> None:
        if self._pending is None or not self._props:
            raise UnexpectedFrame(f"content body frame without a content header on channel "
                                  f"{self.number}")
        self._received += len(payload)
        if self._received > self._body_size:
            raise UnexpectedFrame(f"content body larger than the {self._body_size} bytes the "
                                  "header announced")
        if self._received == self._body_size:
            if self._body:
                self._body.append(payload)
                payload = b"".join(self._body)
                self._body = []
            self._complete(payload)
        else:
            self._body.append(payload)

    def _complete(self, body: bytes) -> None:
        exchange_name, routing_key, mandatory = self._pending
        props = self._props
        self._pending = None
        self._props = b""
        self._received = 0
        self.publish_assembled(exchange_name, routing_key, mandatory, props, body)

    def _publish_message(self, exchange_name: str, routing_key: str, mandatory: bool,
                         props: bytes, body: bytes) -> None:
        """A whole message from the client: the broker's checks (mq.broker.publish), then
        routing (or the transaction). The full path: ChannelCore.publish_assembled takes a
        message along a route this has cached."""
        check_size(len(body), self.max_message_size)
        try:
            msg = Message(exchange_name, routing_key, props, body)
        except ValueError as exc:
            raise SyntaxError_(f"malformed content header properties: {exc}") from None
        self.published += 1
        if exchange_name not in self._writable:
            self._allow("write", "exchange", exchange_name)
            self._writable.add(exchange_name)
        vhost = self.vhost
        exchange = vhost.exchanges.get(exchange_name) or vhost.get_exchange(exchange_name)
        if exchange.internal or exchange.type == "topic":
            check_exchange(vhost, exchange, self.conn.user, routing_key)
        # The message's own checks, only when it carries what they look at (hot path).
        if msg.user_id is not None or msg.expiration is not None or b"CC" in props:
            check_message(msg, self.conn.user.name)
        # Direct reply-to is resolved at publish time, in a transaction too (as RabbitMQ).
        if msg.reply_to == REPLY_TO:
            msg = self._with_reply_queue(msg)
        if self.tx:
            self._tx_publishes.append((exchange, msg, mandatory))
            return
        # The broker says what must be durable before the confirm (mq.broker.publish); as
        # the waiter, this channel is told by store_durable() / store_failed() (B-PUB-6,
        # B-DUR-8).
        outcome = route(vhost, exchange, msg, self.conn, self if self.confirm else None,
                        self.remember_route)
        if outcome == NO_ROUTE and mandatory:
            self._return_unroutable(msg)
        self.confirm_outcome(outcome)

    def _route(self, exchange: Any, msg: Message, mandatory: bool) -> None:
        """Route and enqueue a transaction's publish at commit (its confirm is the
        commit-ok, which waits for the store as a whole)."""
        if route(self.vhost, exchange, msg, self.conn) == NO_ROUTE and mandatory:
            self._return_unroutable(msg)

    def _return_unroutable(self, msg: Message) -> None:
        self.conn.write(frames.encode_return(self.number, 312, "NO_ROUTE", msg.exchange,
                                             msg.routing_key, msg.props, msg.body,
                                             self.conn.frame_max))

    def _with_reply_queue(self, msg: Message) -> Message:
        """Direct reply-to: name this channel's pseudo-queue as the reply address."""
        if self.reply_queue is None:
            raise PreconditionFailed("fast reply consumer does not exist")
        props = decode_properties(msg.props)
        props.reply_to = self.reply_queue.name
        return msg.with_route(msg.exchange, msg.routing_key, encode_properties(props))

    def flush_confirms(self) -> None:
        """Write the confirms that are settled, in order: runs of acks as one
        basic.ack(multiple), each refused publish as a basic.nack. A lone ack is not
        multiple, as RabbitMQ sends it."""
        pending = self.unconfirmed
        last_ack = run = 0
        out = []
        while pending and pending[0][1] is not None:
            seq, ok = pending.popleft()[:2]
            if ok:
                last_ack, run = seq, run + 1
                continue
            if last_ack:
                out.append(frames.encode_basic_ack(self.number, last_ack, run > 1))
                last_ack = run = 0
            out.append(frames.encode_basic_ack(self.number, seq, False, True))
        if last_ack:
            out.append(frames.encode_basic_ack(self.number, last_ack, run > 1))
        if out and self.state == "open":
            self.conn.write(b"".join(out))

    def store_durable(self, seq: int) -> bool:
        """The store's records up to seq are on disk: confirm the publishes they cover.
        Returns whether this channel still waits for more."""
        if self.state != "open":
            return False
        waiting = False
        for entry in self.unconfirmed:
            if entry[1] is None:
                if entry[2] > seq:
                    waiting = True
                    break
                entry[1] = True
        self.flush_confirms()
        return waiting

    def store_failed(self, exc: BaseException) -> None:
        """A store write failed (B-DUR-8): every publish still waiting for the disk is
        nacked now (the store keeps retrying; a nacked message may still be delivered and
        kept, as a nack allows)."""
        for entry in self.unconfirmed:
            if entry[1] is None:
                entry[1] = False
        self.flush_confirms()

    def _confirm_select(self, m: Any) -> None:
        if self.tx:
            raise PreconditionFailed("cannot switch from tx to confirm mode")
        self.confirm = True
        if not m.nowait:
            self.send(spec.Confirm.SelectOk())
