"""Publishing a message, the same for every front end (AMQP basic.publish in mq.amqp, the
HTTP API's publish in mq.management): the checks of the publisher's rights and of the
message itself, in RabbitMQ's order, then routing (CC/BCC, the BCC header removed) and
enqueueing. How a refusal or an unroutable message is answered is the front end's own
(a channel error and basic.return over AMQP; a 400/401 and {"routed": false} over HTTP).

route() also answers the confirm question: what must be on disk before this publish may be
confirmed. It returns a small int (no object per message):

    NO_ROUTE  no queue matched (mandatory: return it); confirm now
    REFUSED   a queue refused it (x-overflow reject-publish) or the store cannot write
              (B-DUR-8): nack
    0         enqueued, nothing to wait for: confirm now
    seq > 0   enqueued into the store: confirm once its records up to seq are on disk. A
              `waiter` given to route() is told then (waiter.store_durable(seq) -> still
              waiting?) or on a failed write (waiter.store_failed(error)); a front end
              without one asks mq.broker.durability.when_durable(store, callback, seq).
"""
from __future__ import annotations

from typing import Any

from mq._core.message import Message
from mq._core.publish import NO_ROUTE, REFUSED, REPLY_TO, enqueue
from mq.broker.deadletter import check_routing_headers, without_bcc
from mq.broker.errors import AccessRefused, PreconditionFailed
from mq.broker.queue_args import check_expiration

__all__ = ["NO_ROUTE", "REFUSED", "REPLY_TO", "check_exchange", "check_message",
           "check_permission", "check_size", "check_topic", "route"]


def check_size(size: int, limit: int) -> None:
    """406 when a body is larger than the broker's max_message_size (RabbitMQ's words)."""
    if size > limit:
        raise PreconditionFailed(f"message size {size} is larger than configured max size "
                                 f"{limit}")


def check_permission(user: Any, vhost_name: str, permission: str, kind: str,
                     name: str) -> None:
    """403 unless the user's permissions on the vhost allow it (B-AUTH-1)."""
    granted = user.permissions.get(vhost_name)
    if granted is None or not granted.allows(permission, name):
        raise AccessRefused(f"{permission} access to {kind} '{name}' in vhost "
                            f"'{vhost_name}' refused for user '{user.name}'")


def check_topic(user: Any, vhost_name: str, permission: str, exchange: Any,
                routing_key: str) -> None:
    """B-AUTH-1 topic authorisation: on a topic exchange only, 403 when the user has a topic
    permission for it whose write (publish) or read (bind) pattern does not match the key.
    No topic permission for the exchange: allowed."""
    if exchange is None or exchange.type != "topic":
        return
    granted = user.topic_permissions.get((vhost_name, exchange.name))
    if granted is not None and not granted.allows(
            permission, routing_key, {"username": user.name, "vhost": vhost_name}):
        raise AccessRefused(f"access to topic '{routing_key}' in exchange '{exchange.name}' "
                            f"in vhost '{vhost_name}' refused for user '{user.name}'")


def check_exchange(vhost: Any, exchange: Any, user: Any, routing_key: str) -> None:
    """What RabbitMQ checks of the exchange, after the write permission: not internal, and
    the user's topic permission on a topic exchange."""
    if exchange.internal:
        raise AccessRefused(f"cannot publish to internal exchange '{exchange.name}' in "
                            f"vhost '{vhost.name}'")
    if exchange.type == "topic":
        check_topic(user, vhost.name, "write", exchange, routing_key)


def check_message(msg: Message, user_name: str) -> None:
    """RabbitMQ's checks of the message itself, in its order (after the exchange's): the
    user_id property names the publishing user, the expiration is valid, CC and BCC are
    arrays. Each check looks only when the message carries what it checks."""
    if msg.user_id is not None and msg.user_id != user_name:
        raise PreconditionFailed(f"user_id property set to '{msg.user_id}' but authenticated "
                                 f"user was '{user_name}'")
    if msg.expiration is not None:
        check_expiration(msg.expiration)
    if b"CC" in msg.props:  # only a CC or BCC header needs checking (rare)
        check_routing_headers(msg)


def route(vhost: Any, exchange: Any, msg: Message, flow_to: Any = None,
          waiter: Any = None, remember: Any = None) -> int:
    """Route a checked message (CC and BCC keys too; the BCC header is removed from what the
    queues get) and enqueue it (mq._core.publish.enqueue). flow_to.flow(queue) is called for
    a queue that falls behind its consumers (the publishing connection's back-pressure).
    Returns NO_ROUTE, REFUSED, 0 or the store sequence to wait for (module docstring); with
    a waiter, it is registered for that sequence. remember(exchange, routing_key, queues) is
    told a route that depends on the exchange and routing key alone (a route cache)."""
    if exchange.dedup is not None and exchange.dedup.duplicate(msg):
        return NO_ROUTE  # seen (B-DEDUP-1): not routed, still confirmed
    queues = vhost.route(exchange, msg)
    if not queues:
        return NO_ROUTE
    if remember is not None and vhost.routes_by_key(exchange, msg):
        remember(exchange, msg.routing_key, queues)
    if b"BCC" in msg.props:
        msg = without_bcc(msg)
    return enqueue(vhost.store, queues, msg, flow_to, waiter)
