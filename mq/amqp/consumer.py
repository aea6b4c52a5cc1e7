"""A basic.consume subscription: what a queue hands messages to on behalf of a channel."""
from __future__ import annotations

import base64
import os
from typing import TYPE_CHECKING

from pamqp import commands as spec

from mq._core.delivery import ConsumerCore
from mq.broker.queue import Queue

if TYPE_CHECKING:
    from mq.amqp.channel import Channel


def consumer_tag() -> str:
    """A server-made consumer tag, as RabbitMQ makes them."""
    return "amq.ctag-" + base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")


class ChannelConsumer(ConsumerCore):
    """A basic.consume subscription; implements mq.broker.consumer.Consumer. Room and
    delivery are ConsumerCore's (mq._core.delivery), in the channel's Deliveries."""

    __slots__ = ("channel", "arguments")

    def __init__(self, channel: Channel, queue: Queue, tag: str, no_ack: bool, exclusive: bool,
                 priority: int, prefetch: int, arguments: dict) -> None:
        self.deliveries = channel.deliveries
        self.channel = channel
        self.queue = queue
        self.tag = tag
        self.no_ack = no_ack
        self.exclusive = exclusive
        self.priority = priority
        self.prefetch = prefetch
        self.arguments = arguments

    @property
    def owner(self) -> object:
        return self.channel.conn

    def cancelled_by_broker(self, queue: Queue) -> None:
        ch = self.channel
        if ch.consumers.pop(self.tag, None) is None:
            return
        if ch.conn.capabilities.get("consumer_cancel_notify") and ch.state == "open":
            if ch.held_cancels is not None:
                ch.held_cancels.append(self.tag)
            else:
                ch.send(spec.Basic.Cancel(consumer_tag=self.tag, nowait=True))
