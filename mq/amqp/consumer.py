"""A basic.consume subscription: what a queue hands messages to on behalf of a channel."""
from __future__ import annotations

import base64
import os
from typing import TYPE_CHECKING

from pamqp import commands as spec

from mq._core import frames
from mq._core.msgqueue import Entry
from mq.broker.queue import Queue

if TYPE_CHECKING:
    from mq.amqp.channel import Channel


def consumer_tag() -> str:
    """A server-made consumer tag, as RabbitMQ makes them."""
    return "amq.ctag-" + base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")


class ChannelConsumer:
    """A basic.consume subscription; implements mq.broker.consumer.Consumer."""

    __slots__ = ("channel", "queue", "tag", "no_ack", "exclusive", "priority", "prefetch",
                 "unacked", "arguments")

    def __init__(self, channel: Channel, queue: Queue, tag: str, no_ack: bool, exclusive: bool,
                 priority: int, prefetch: int, arguments: dict) -> None:
        self.channel = channel
        self.queue = queue
        self.tag = tag
        self.no_ack = no_ack
        self.exclusive = exclusive
        self.priority = priority
        self.prefetch = prefetch
        self.unacked = 0
        self.arguments = arguments

    @property
    def owner(self) -> object:
        return self.channel.conn

    def has_room(self) -> bool:
        ch = self.channel
        if not ch.conn.writable or ch.state != "open":
            return False
        if self.no_ack:
            return True
        return (not self.prefetch or self.unacked < self.prefetch) and \
            (not ch.global_prefetch or ch.global_unacked < ch.global_prefetch)

    def deliver(self, entry: Entry, queue: Queue) -> None:
        ch = self.channel
        ch.delivery_tag += 1
        tag = ch.delivery_tag
        if not self.no_ack:
            ch.unacked[tag] = (entry, queue, self)
            self.unacked += 1
            ch.global_unacked += 1
        msg = entry.msg
        props = queue.delivery_props(entry) if queue.counts_deliveries else msg.props
        ch.conn.write(frames.encode_deliver(ch.number, self.tag, tag, entry.redelivered,
                                            msg.exchange, msg.routing_key, props, msg.body,
                                            ch.conn.frame_max))

    def cancelled_by_broker(self, queue: Queue) -> None:
        ch = self.channel
        if ch.consumers.pop(self.tag, None) is None:
            return
        if ch.conn.capabilities.get("consumer_cancel_notify") and ch.state == "open":
            if ch.held_cancels is not None:
                ch.held_cancels.append(self.tag)
            else:
                ch.send(spec.Basic.Cancel(consumer_tag=self.tag, nowait=True))
