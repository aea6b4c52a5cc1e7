# cython: language_level=3
"""The per-message publish path: enqueueing a routed message and the confirm it earns, and
a channel's cache of routes so that a publish like the last one to the same exchange and
routing key is checked, routed and enqueued here, without Python.

What the cache holds was checked and routed by the full path (mq.broker.publish.route)
first; an entry is good while the vhost's `version` (bumped by every change of queues,
exchanges, bindings or policies) is unchanged. Only routes that depend on the exchange and
routing key alone are cached (VirtualHost.routes_by_key).
"""
from collections import deque

from mq._core.delivery cimport QueueCore
from mq._core.message cimport Message

NO_ROUTE = -2   # no queue matched (mandatory: return it); confirm now
REFUSED = -1    # a queue refused it (x-overflow) or the store cannot write: nack
DEF C_NO_ROUTE = -2
DEF C_REFUSED = -1
DEF CACHED_KEYS = 1024  # routing keys cached per exchange (then the cache starts over)
REPLY_TO = "amq.rabbitmq.reply-to"  # direct reply-to
PUBLISH_METHOD = (60, 40)


cpdef long long enqueue(object store, object queues, Message msg, object flow_to,
                        object waiter) except -3:
    """Enqueue a routed message into its queues. flow_to.flow(queue) is called for a queue
    that falls behind its consumers (the publisher's back-pressure). Returns REFUSED, 0
    (nothing to wait for) or the store sequence that must be on disk before the confirm;
    with a waiter, it is registered for that sequence (mq.broker.publish)."""
    cdef bint persistent = store is not None and msg.delivery_mode == 2
    cdef long long before = store.seq if persistent else 0
    cdef bint accepted = True
    cdef QueueCore queue
    for queue in queues:
        accepted = queue.publish(msg) and accepted
        if flow_to is not None and queue.consumer_count and queue.behind():
            flow_to.flow(queue)
    if not accepted:
        return C_REFUSED
    if not persistent:
        return 0
    cdef long long seq = store.seq
    if seq == before:
        return 0
    if store.failed is not None:  # B-DUR-8: a nack, never silence
        return C_REFUSED
    if waiter is not None:
        store.waiters.add(waiter)
    return seq


cdef class Route:
    """A cached route: the queues, for the vhost version it was made under."""
    cdef long long version
    cdef tuple queues
    cdef bint topic  # a topic exchange: topic permissions may apply

    def __cinit__(self, long long version, tuple queues, bint topic):
        self.version = version
        self.queues = queues
        self.topic = topic


cdef class PublishCore:
    """A channel's publishing state that the hot path uses: confirm mode and its sequence,
    the unconfirmed publishes, and the route cache. The channel (a Python subclass)
    provides `_publish_message` (the full path), `conn` and `vhost`."""

    cdef public bint confirm
    cdef public bint tx
    cdef public long long publish_seq
    cdef public long long published  # messages the client published here (management API)
    # Publish sequence numbers not yet confirmed, in order: [seq, True (ack) / False (nack) /
    # None (waiting), store seq]; flushed once per read, runs of acks coalesced.
    cdef public object unconfirmed
    cdef public set _writable  # exchanges this user may publish to (checked once)
    cdef public object _pending  # a publish being assembled from frames
    cdef public long long max_message_size
    cdef dict _routes  # exchange name -> routing key -> Route
    cdef object _vhost

    def __cinit__(self, *args, **kwargs):
        self.unconfirmed = deque()
        self._writable = set()
        self._routes = {}

    def start_publishing(self, vhost, long long max_message_size) -> None:
        self._vhost = vhost
        self.max_message_size = max_message_size

    def publish_assembled(self, str exchange_name, str routing_key, bint mandatory,
                          bytes props, body) -> None:
        """basic.publish + header + body, already cut from the stream in one piece: a
        publish along a cached route is done here, anything else takes the full path."""
        self.current_method = PUBLISH_METHOD
        cdef Route route = self._cached(exchange_name, routing_key)
        cdef Message msg
        if route is not None and not self.tx and len(body) <= self.max_message_size:
            try:
                msg = Message(exchange_name, routing_key, props, body)
            except ValueError:
                msg = None  # the full path says what is wrong
            # Only a message the broker has nothing to check in (user-id, expiration, CC,
            # direct reply-to) goes on here.
            if msg is not None and msg.user_id is None and msg.expiration is None \
                    and msg.reply_to != REPLY_TO and b"CC" not in props:
                self.published += 1
                self.confirm_outcome(enqueue(self._vhost.store, route.queues, msg, self.conn,
                                             self if self.confirm else None))
                return
        self._publish_message(exchange_name, routing_key, mandatory, props, body)

    cdef Route _cached(self, str exchange_name, str routing_key):
        by_key = self._routes.get(exchange_name)
        if by_key is None:
            return None
        cdef Route route = (<dict>by_key).get(routing_key)
        if route is None:
            return None
        if route.version != self._vhost.version:
            self._routes.clear()
            return None
        if route.topic and self.conn.user.topic_permissions:
            return None  # checked per key by the full path
        return route

    def remember_route(self, exchange, str routing_key, list queues) -> None:
        """The full path routed a message by exchange and key alone: cache its queues."""
        by_key = self._routes.get(exchange.name)
        if by_key is None or len(by_key) >= CACHED_KEYS:
            by_key = self._routes[exchange.name] = {}
        by_key[routing_key] = Route(self._vhost.version, tuple(queues), exchange.type == "topic")

    cpdef void confirm_outcome(self, long long outcome) except *:
        """Record what a publish earns in confirm mode: an ack, a nack (REFUSED) or a wait
        for the store (outcome > 0, settled by store_durable)."""
        if self.confirm:
            self.publish_seq += 1
            if outcome > 0:
                self.unconfirmed.append([self.publish_seq, None, outcome])
            else:
                self.unconfirmed.append([self.publish_seq, outcome != C_REFUSED])
