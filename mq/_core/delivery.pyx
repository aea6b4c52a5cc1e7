# cython: language_level=3
"""The per-message delivery path: a queue hands ready messages to consumers with room, each
delivery is encoded into its connection's output, and a channel keeps what it delivered
until the client settles it.

One record per unsettled delivery (Deliveries, one per channel) and the counts read from it:
the consumer's (per-consumer prefetch), the channel's (global prefetch) and the queue's
(messages_unacknowledged). Only Deliveries changes them.

The Python classes build on these (mq.broker.queue.Queue on QueueCore, the AMQP consumer on
ConsumerCore): the rare paths (paging, TTL, length limits, dead lettering) stay there and
are called from here by name; a persistent message's records are the store's core
(mq._core.storecore).
"""
from time import time as _now

from mq._core.frames import encode_deliver
from mq._core.dedup cimport QueueIdentities
from mq._core.message cimport Message
from mq._core.msgqueue cimport Entry, MessageQueue
from mq._core.storecore cimport LogCore

# Credit flow (B-FLOW-1): a queue with consumers is behind when more than this many messages
# (or bytes) wait; the connections publishing into it are not read until it is back under
# half of that. A queue without consumers takes everything (load leveling, B-FLOW-3).
FLOW_READY_MESSAGES = 20_000
FLOW_READY_BYTES = 32 * 1024 * 1024
cdef Py_ssize_t READY_MESSAGES = FLOW_READY_MESSAGES
cdef Py_ssize_t READY_BYTES = FLOW_READY_BYTES

# What one ready message costs in memory besides its body, counted against the queue's
# memory budget: a generous figure (about 220 B measured for the message and entry objects).
ENTRY_OVERHEAD = 400
cdef Py_ssize_t OVERHEAD = ENTRY_OVERHEAD


cdef class Output:
    """A connection's output: where its frames go, whether the peer takes more now
    (socket back-pressure), the negotiated frame_max, and whether anything was sent since
    the heartbeat timer last looked.

    Frames go straight to the sink, or, once gather() is called (the server does), are
    gathered and written in one piece: at flush() (the end of a read), past `limit` bytes,
    or, for output made outside a read (`in_read` false: timers, the store's answers), from
    a flush the `schedule` callback arranges for later in the loop turn."""

    def __cinit__(self, sink):
        self._sink = sink
        self.writable = True
        self.frame_max = 131072
        self.sent = False
        self.in_read = False
        self._schedule = None
        self._chunks = []
        self._size = 0
        self._limit = 0
        self._flush_due = False

    def gather(self, Py_ssize_t limit, schedule) -> None:
        """Gather output from now on (see the class)."""
        self._limit = limit
        self._schedule = schedule

    cpdef void write(self, bytes data) except *:
        self.sent = True
        if self._schedule is None:
            self._sink(data)
            return
        self._chunks.append(data)
        self._size += len(data)
        if self._size >= self._limit:
            self.flush()
        elif not self.in_read and not self._flush_due:
            self._flush_due = True
            self._schedule()

    cpdef void flush(self) except *:
        """Write what was gathered, in one piece."""
        self._flush_due = False
        cdef list chunks = self._chunks
        if not chunks:
            return
        self._chunks = []
        self._size = 0
        self._sink(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    def discard(self) -> None:
        """The peer is gone: drop what was not written."""
        self._chunks = []
        self._size = 0


cdef class Deliveries:
    """A channel's deliveries: its delivery tag counter, its output, whether it may deliver
    (open, global prefetch `limit`), and the deliveries not yet settled, by tag.

    Tags grow by one per delivery, so the unsettled ones are kept in a window of slots
    (slot i holds tag base + i; settled slots are None and dropped from the front): O(1) to
    add, find and settle, and no object per delivery beyond the entry itself."""

    def __cinit__(self, int number, Output out):
        self.number = number
        self.out = out
        self.open = True
        self.limit = 0
        self.counted = 0
        self.last_tag = 0
        self.count = 0
        self._entries = []
        self._queues = []
        self._consumers = []
        self._head = 0
        self._base = 1

    def __len__(self) -> int:
        return self.count

    def next_tag(self) -> int:
        """A tag for a delivery made outside a consumer (basic.get)."""
        self.last_tag += 1
        return self.last_tag

    def add(self, long long tag, Entry entry, QueueCore queue, object consumer) -> None:
        """Keep a delivery until settled (consumer None: a basic.get)."""
        self._add(tag, entry, queue, consumer)

    cdef void _add(self, long long tag, Entry entry, QueueCore queue, object consumer) except *:
        self._put(tag, entry, queue, consumer)
        self._count(queue, consumer, 1)

    cdef void _put(self, long long tag, Entry entry, QueueCore queue, object consumer) except *:
        cdef Py_ssize_t i, n
        cdef list pad
        if self.count == 0:
            self._entries, self._queues, self._consumers = [], [], []
            self._head = 0
            self._base = tag
        i = tag - self._base
        if i < 0:  # a rolled-back settle of a tag already dropped from the front
            pad = [None] * (-i)
            self._entries[:0] = pad
            self._queues[:0] = pad
            self._consumers[:0] = pad
            self._base = tag
            self._head -= i
            i = 0
        n = len(self._entries)
        if i >= n:
            if i > n:  # tags in between went to no-ack consumers
                pad = [None] * (i - n)
                self._entries.extend(pad)
                self._queues.extend(pad)
                self._consumers.extend(pad)
            self._entries.append(entry)
            self._queues.append(queue)
            self._consumers.append(consumer)
        else:
            self._entries[i] = entry
            self._queues[i] = queue
            self._consumers[i] = consumer
        if i < self._head:
            self._head = i
        self.count += 1

    cdef void _count(self, QueueCore queue, object consumer, int n):
        queue.unacked += n
        if consumer is not None:
            (<ConsumerCore>consumer).unacked += n
            self.counted += n

    cdef void _trim(self):
        """Drop settled slots from the front."""
        cdef list entries = self._entries
        cdef Py_ssize_t n = len(entries), head = self._head
        while head < n and entries[head] is None:
            head += 1
        if head == n:
            self._entries, self._queues, self._consumers = [], [], []
            self._base += n
            head = 0
        elif head > 64 and 2 * head > n:
            del self._entries[:head]
            del self._queues[:head]
            del self._consumers[:head]
            self._base += head
            head = 0
        self._head = head

    cdef bint _range(self, unsigned long long tag, bint multiple, Py_ssize_t *lo, Py_ssize_t *hi):
        """The slots an ack/nack/reject of (tag, multiple) names; False for an unknown tag
        (a 406 for the caller)."""
        cdef Py_ssize_t n = len(self._entries)
        if tag == 0 and multiple:  # everything
            lo[0], hi[0] = self._head, n
            return True
        if tag < <unsigned long long>self._base or tag > <unsigned long long>self.last_tag:
            return False  # (a tag past 2**63 from the wire too)
        cdef Py_ssize_t i = <Py_ssize_t>(tag - <unsigned long long>self._base)
        if i < self._head or i >= n or self._entries[i] is None:
            return False
        lo[0], hi[0] = (self._head if multiple else i), i + 1
        return True

    def ack(self, unsigned long long tag, bint multiple, dict refill) -> bool:
        """basic.ack: the deliveries named are settled (their queues told, in runs) and no
        longer counted; each consumer's queue is put in refill (it may deliver again).
        False, with nothing changed, for an unknown tag."""
        cdef Py_ssize_t lo, hi, i
        if not self._range(tag, multiple, &lo, &hi):
            return False
        cdef list entries = self._entries, queues = self._queues, consumers = self._consumers
        cdef list run = None
        cdef QueueCore current = None, queue
        cdef object entry, consumer, refilled = None
        for i in range(lo, hi):
            entry = entries[i]
            if entry is None:
                continue
            queue = queues[i]
            consumer = consumers[i]
            entries[i] = queues[i] = consumers[i] = None
            self.count -= 1
            self._count(queue, consumer, -1)
            if consumer is not None and consumer is not refilled:
                refill[(<ConsumerCore>consumer).queue] = None
                refilled = consumer
            if queue is not current:
                if run is not None:
                    current.settle(run)
                current, run = queue, [entry]
            else:
                run.append(entry)
        if run is not None:
            current.settle(run)
        self._trim()
        return True

    cdef list _take(self, unsigned long long tag, bint multiple):
        cdef Py_ssize_t lo, hi, i
        if not self._range(tag, multiple, &lo, &hi):
            return None
        cdef list out = []
        cdef list entries = self._entries
        for i in range(lo, hi):
            if entries[i] is not None:
                out.append((self._base + i, entries[i], self._queues[i], self._consumers[i]))
                entries[i] = self._queues[i] = self._consumers[i] = None
                self.count -= 1
        self._trim()
        return out

    def take(self, unsigned long long tag, bint multiple):
        """Take out the deliveries an ack/nack/reject names, as (tag, entry, queue,
        consumer), still counted until release(); None for an unknown tag."""
        return self._take(tag, multiple)

    def take_all(self) -> list:
        """Take out every unsettled delivery (recover, channel close), still counted."""
        return self._take(0, True)

    def release(self, list taken) -> None:
        """Taken deliveries are settled (now, or at a commit): they no longer count."""
        for record in taken:
            self._count(record[2], record[3], -1)

    def restore(self, list taken) -> None:
        """Taken deliveries are unsettled again under their tags (tx.rollback)."""
        for record in taken:
            self._put(record[0], record[1], record[2], record[3])


cdef class ConsumerCore:
    """A subscription: prefetch room and delivering into its channel."""

    def __cinit__(self, *args, **kwargs):
        self.unacked = 0

    cpdef bint has_room(self):
        cdef Deliveries d = self.deliveries
        if not d.open or not d.out.writable:
            return False
        if self.no_ack:
            return True
        return (not self.prefetch or self.unacked < self.prefetch) and \
            (not d.limit or d.counted < d.limit)

    def hand(self, Entry entry, QueueCore queue) -> None:
        """deliver(), for a queue kind whose dispatch is Python's (a stream)."""
        self.deliver(entry, queue)

    cdef void deliver(self, Entry entry, QueueCore queue) except *:
        """Hand one message to the client (the queue has taken it off ready)."""
        cdef Deliveries d = self.deliveries
        d.last_tag += 1
        cdef long long tag = d.last_tag
        if not self.no_ack:
            d._add(tag, entry, queue, self)
        cdef Message msg = entry.msg
        props = queue.delivery_props(entry) if queue.counts_deliveries else msg.props
        d.out.write(encode_deliver(d.number, self.tag, tag, entry.redelivered, msg.exchange,
                                   msg.routing_key, props, msg.body, d.out.frame_max))


cdef class QueueCore:
    """A queue's ready messages and consumers: publish and dispatch. What a plain message
    needs runs here; limits, TTL, paging and the store's records are the subclass's."""

    def __cinit__(self, *args, **kwargs):
        self._groups = []
        self.flow_publishers = set()
        self.consumer_count = 0
        self.unacked = 0
        self._plain = False
        self.dedup = None

    @property
    def message_count(self) -> int:
        paged = self.paged
        return self.ready.count + (paged.count if paged is not None else 0)

    @property
    def message_bytes(self) -> int:
        paged = self.paged
        return self.ready.bytes + (paged.bytes if paged is not None else 0)

    cpdef bint publish(self, Message msg) except *:
        """Enqueue a routed message; False when x-overflow refused it. A message whose
        identity is in a deduplicating queue is dropped (still confirmed, B-DEDUP-2)."""
        cdef QueueIdentities dedup = self.dedup
        if dedup is not None:
            if not dedup.admit(msg):
                return True
            if not self._enqueue(msg):
                dedup.left(msg)  # refused: its identity is not in the queue
                return False
            return True
        return self._enqueue(msg)

    cdef bint _enqueue(self, Message msg) except -1:
        if not self._plain or msg.expiration is not None or self.paged is not None \
                or self._over_budget():
            return self._publish(msg)
        if self.store_qid and msg.delivery_mode == 2:
            self.store.enqueue(self.store_qid, msg, 0.0)
        self.ready.push(msg, 0.0)
        self.published += 1
        if self.consumer_count:
            self.dispatch(0.0)
        return True

    cpdef Py_ssize_t _in_memory(self):
        """What the ready messages in memory cost, as counted against the budget."""
        return self.ready.bytes + self.ready.count * OVERHEAD

    cpdef bint _over_budget(self):
        """Memory is full: newer messages wait on disk (B-FLOW-3)."""
        return self._budget > 0 and self._in_memory() > self._budget

    cpdef bint behind(self):
        """More is waiting than the consumers take: publishers into it should wait."""
        return self.consumer_count > 0 and self.backlog_above(1)

    cpdef bint backlog_above(self, int share):
        """More than 1/share of what makes a queue with consumers behind is waiting."""
        cdef Py_ssize_t count = self.ready.count, size = self.ready.bytes
        paged = self.paged
        if paged is not None:
            count += paged.count
            size += paged.bytes
        return count > READY_MESSAGES // share or size > READY_BYTES // share

    cpdef void dispatch(self, double now=0.0) except *:
        """Hand ready messages to consumers with room, round-robin within a priority."""
        cdef MessageQueue ready = self.ready
        cdef ConsumerCore consumer
        cdef Entry entry
        while True:
            if self.paged is not None:
                self._page_in()
            if not ready.count:
                break
            consumer = self._pick_consumer()
            if consumer is None:
                break
            entry = ready.pop()
            if entry.expires_at:
                if not now:
                    now = _now()
                if entry.expires_at < now:
                    self._dead_letter([entry], "expired")
                    continue
            consumer.deliver(entry, self)
            self.delivered += 1
            self.redelivered += entry.redelivered
            if consumer.no_ack and self.dedup is not None:
                self.dedup.left(entry.msg)  # gone: its identity may come again
            if self.store_qid and entry.msg.store_id:
                self._handed_out(entry, consumer.no_ack)
        if self.flow_publishers:
            self._caught_up()

    cdef ConsumerCore _pick_consumer(self):
        cdef ConsumerCore consumer
        cdef list groups = self._groups
        if self._single_active is not None:
            if self._handing_over is not None:
                if (<ConsumerCore>self._handing_over).unacked:
                    return None
                self._handing_over = None
            consumer = self._single_active
            return consumer if consumer.has_room() else None
        if len(groups) == 1:
            group = (<tuple>groups[0])[1]
            if len(group) == 1:  # the common single consumer
                consumer = group[0]
                return consumer if consumer.has_room() else None
        for item in groups:
            group = (<tuple>item)[1]
            for _ in range(len(group)):
                consumer = group[0]
                group.rotate(-1)
                if consumer.has_room():
                    return consumer
        return None

    def settle(self, list entries) -> None:
        """Delivered messages acknowledged: they are gone."""
        if not self.deleted:
            self.acked += len(entries)
            self._unstore(entries)
            self._left(entries)

    cpdef void _left(self, entries) except *:
        """Messages left the queue: their identities may come in again (B-DEDUP-2)."""
        cdef Entry entry
        if self.dedup is not None:
            for entry in entries:
                self.dedup.left(entry.msg)

    cpdef void _unstore(self, entries) except *:
        """Messages left the queue for good: their store entries go."""
        cdef Entry entry
        cdef LogCore store = self.store
        if self.store_qid:
            for entry in entries:
                if entry.msg.store_id:
                    store.ack(self.store_qid, entry.msg.store_id)

    cpdef void _handed_out(self, Entry entry, bint no_ack) except *:
        """A stored message went to a client: gone (no_ack), or redelivered after a crash."""
        if no_ack:
            (<LogCore>self.store).ack(self.store_qid, entry.msg.store_id)
        else:
            (<LogCore>self.store).delivered(self.store_qid, entry.msg.store_id)

