# cython: language_level=3
"""The per-message publish path: enqueueing a routed message (the same for every front
end), and a channel's cache of routes, so that a publish like an earlier one to the same
exchange and routing key is routed without Python (mq._core.channel).

What the cache holds was checked and routed by the full path (mq.broker.publish.route)
first; it is good while the vhost's Topology version (bumped by every change of queues,
exchanges, bindings or policies) is unchanged. Only routes that depend on the exchange and
routing key alone are cached (VirtualHost.routes_by_key).
"""

from mq._core.delivery cimport QueueCore
from mq._core.message cimport Message
from mq._core.storecore cimport LogCore

NO_ROUTE = -2   # no queue matched (mandatory: return it); confirm now
REFUSED = -1    # a queue refused it (x-overflow) or the store cannot write: nack
cdef long long C_REFUSED = REFUSED
cdef Py_ssize_t CACHED_KEYS = 1024  # routing keys cached per exchange (then it starts over)
REPLY_TO = "amq.rabbitmq.reply-to"  # direct reply-to


cpdef long long enqueue(object store, object queues, Message msg, object flow_to,
                        object waiter) except -3:
    """Enqueue a routed message into its queues. flow_to.flow(queue) is called for a queue
    that falls behind its consumers (the publisher's back-pressure). Returns REFUSED, 0
    (nothing to wait for) or the store sequence that must be on disk before the confirm;
    with a waiter, it is registered for that sequence (mq.broker.publish)."""
    # What the queues append to the store must be durable first: a persistent message's
    # records, and any message a stream took (streams keep every message).
    cdef LogCore log = store
    cdef long long before = log._flusher.seq if store is not None else 0
    cdef bint accepted = True
    cdef QueueCore queue
    for queue in queues:
        accepted = queue.publish(msg) and accepted
        if flow_to is not None and queue.consumer_count and queue.behind():
            flow_to.flow(queue)
    if not accepted:
        return C_REFUSED
    if store is None:
        return 0
    cdef long long seq = log._flusher.seq
    if seq == before:
        return 0
    if flow_to is not None and log.behind():
        flow_to.flow(store)  # the disk is behind: this publisher waits for it
    if store.failed is not None:  # B-DUR-8: a nack, never silence
        return C_REFUSED
    if waiter is not None:
        store.waiters.add(waiter)
    return seq


cdef class Topology:
    """A vhost's topology version: bumped by every change of queues, exchanges, bindings or
    policies, which may change where a message goes."""

    def __cinit__(self):
        self.version = 0


cdef class RouteCache:
    """A channel's routes by exchange name and routing key: the queues a message reaches,
    for the topology version they were found under (any change empties the cache)."""

    def __cinit__(self, Topology topology):
        self._topology = topology
        self._routes = {}
        self._version = topology.version

    cdef tuple lookup(self, str exchange_name, str routing_key, object conn):
        """The cached route (queues, topic?, the exchange's deduplication cache or None,
        delays?: it holds only for a message with a positive x-delay), or None: not cached,
        the topology changed, or a topic exchange on which the connection's user has topic
        permissions (checked per publish by the full path)."""
        if not self._current():
            return None
        by_key = self._routes.get(exchange_name)
        if by_key is None:
            return None
        route = (<dict>by_key).get(routing_key)
        if route is None:
            return None
        if (<tuple>route)[1] and conn.user.topic_permissions:
            return None
        return <tuple>route

    cdef bint _current(self):
        """Whether the cache is of the current topology; if not, it is emptied (and is)."""
        if self._version == self._topology.version:
            return True
        self._routes.clear()
        self._version = self._topology.version
        return False

    def remember(self, exchange, str routing_key, list queues) -> None:
        """The full path routed a message by exchange and key alone: cache its queues."""
        self._current()
        by_key = self._routes.get(exchange.name)
        if by_key is None or len(by_key) >= CACHED_KEYS:
            by_key = self._routes[exchange.name] = {}
        by_key[routing_key] = (tuple(queues), exchange.type == "topic", exchange.dedup,
                               exchange.delays)
