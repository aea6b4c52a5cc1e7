# cython: language_level=3
"""A channel's hot state and its per-message paths: a publish along a cached route, and
basic.ack. Everything else, and whatever these paths do not take, is the Python Channel's
(mq.amqp.channel, a subclass): `_publish_message` (the full publish path), `_ack` (acks in a
transaction, unknown tags), `resume_deliveries` (global prefetch room)."""
from collections import deque

from mq._core.dedup cimport Cache
from mq._core.delivery cimport Deliveries
from mq._core.message cimport Message
from mq._core.publish cimport RouteCache, enqueue
from mq._core.publish import REFUSED, REPLY_TO

cdef long long C_REFUSED = REFUSED
PUBLISH_METHOD = (60, 40)
ACK_METHOD = (60, 80)


cdef inline bint _routing_headers(Message msg) noexcept:
    """CC or BCC headers, or a table that cannot be walked: the full path checks them. The
    bytes "CC" are looked for first (one search), the table walked only when they are there."""
    return msg._hdr_start >= 0 and b"CC" in msg.props \
        and (msg.field(b"CC", 2) != -1 or msg.field(b"BCC", 3) != -1)


cdef inline bint _seen(object cache, Message msg) except -1:
    """The exchange deduplicates (B-DEDUP-1) and has seen the message."""
    return cache is not None and (<Cache>cache).duplicate(msg)


cdef inline bint _not_delayed(bint delayed_route, Message msg) except -1:
    """The route is a delayed exchange's hold, and this message is not delayed (no positive
    integer x-delay, B-DELAY-1): the full path routes it by the delayed type."""
    if not delayed_route:
        return False
    delay = msg.integer_header(b"x-delay")
    return delay is None or delay <= 0


cdef class ChannelCore:
    """Deliveries (what went out and is unsettled), confirm mode with the unconfirmed
    publishes, the transaction flag, the publish being assembled, and the route cache."""

    def __cinit__(self, *args, **kwargs):
        self.unconfirmed = deque()
        self._writable = set()
        self.current_method = (0, 0)

    def start(self, int number, conn, Deliveries deliveries) -> None:
        """Set up for this connection (its vhost and broker fixed from now on)."""
        self.number = number
        self.conn = conn
        self.deliveries = deliveries
        self.max_message_size = conn.broker.max_message_size
        self.store = conn.vhost.store  # the durable store (None: in memory), fixed at start
        self._routes = RouteCache(conn.vhost.topology)

    cpdef bint ready_for_publish(self):
        """Open and not in the middle of assembling another message."""
        return self.deliveries.open and self._pending is None

    cpdef void publish_assembled(self, str exchange_name, str routing_key, bint mandatory,
                                 bytes props, object body) except *:
        """A whole message (basic.publish + header + body): along a cached route it is
        enqueued here, anything else takes the full path."""
        self.current_method = PUBLISH_METHOD
        cdef tuple route = None
        cdef Message msg = None
        if not self.tx and len(body) <= self.max_message_size:
            route = self._routes.lookup(exchange_name, routing_key, self.conn)
        if route is not None:
            try:
                msg = Message(exchange_name, routing_key, props, body)
            except ValueError:
                msg = None  # the full path says what is wrong
            # Only a message the broker has nothing to check in (user-id, expiration, CC,
            # BCC, direct reply-to) goes on here.
            # A duplicate (the exchange deduplicates, B-DEDUP-1) takes the full path too,
            # which finds it seen again and answers it as unroutable.
            if msg is not None and msg.user_id is None and msg.expiration is None \
                    and msg.reply_to != REPLY_TO and not _routing_headers(msg) \
                    and not _not_delayed((<tuple>route)[3], msg) \
                    and not _seen((<tuple>route)[2], msg):
                self.published += 1
                self.confirm_outcome(enqueue(self.store, (<tuple>route)[0], msg, self.conn,
                                             self if self.confirm else None))
                return
        self._publish_message(exchange_name, routing_key, mandatory, props, body)

    def remember_route(self, exchange, str routing_key, list queues) -> None:
        self._routes.remember(exchange, routing_key, queues)

    cpdef void ack_assembled(self, unsigned long long delivery_tag, bint multiple) except *:
        """basic.ack: settled here, except in a transaction or for an unknown tag (the
        channel's _ack)."""
        self.current_method = ACK_METHOD
        cdef Deliveries deliveries = self.deliveries
        if self.tx or not deliveries.ack(delivery_tag, multiple, self.conn.pending_dispatch):
            self._ack(delivery_tag, multiple)
        elif deliveries.limit:
            self.resume_deliveries()

    cpdef void confirm_outcome(self, long long outcome) except *:
        """Record what a publish earns in confirm mode: an ack, a nack (REFUSED) or a wait
        for the store (outcome > 0, settled by store_durable)."""
        if self.confirm:
            self.publish_seq += 1
            if outcome > 0:
                self.unconfirmed.append([self.publish_seq, None, outcome])
            else:
                self.unconfirmed.append([self.publish_seq, outcome != C_REFUSED])
