"""A queue: ready messages (Cython structure), its consumers, and delivery to them, with
TTL, length limits, dead lettering, single active consumer and x-expires."""
from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, Any, Iterable, Protocol

from mq._core.delivery import QueueCore
from mq._core.message import Message
from mq._core.msgqueue import Entry, MessageQueue
from mq._core.dedup import QueueIdentities
from mq.broker.dedup import ARGUMENT as DEDUP_ARGUMENT
from mq.broker.policy import Policy, merge_queue_settings
from mq.broker.queue_args import check_queue_properties, parse_queue_arguments
from mq.broker.rawprops import HeaderStamp
from mq.broker.timers import Timer, Timers
from mq.store.paging import PagedMessages, Pager, StoredEntries

if TYPE_CHECKING:
    from mq.broker.consumer import Consumer


# A durable queue's persistent messages are in the log already: past this much, memory
# keeps only a read-ahead window of them and pages the rest out as references.
STORED_WINDOW = 4 * 1024 * 1024
PAGE_OUT_CHUNK = 10_000  # stored messages paged out at once at recovery (bounds the buffer)


class FlowPublisher(Protocol):
    """A connection held by credit flow: told when the queue has caught up."""

    def flow_off(self, queue: Queue) -> None: ...


class QueueHost(Protocol):
    """What a queue needs from its vhost."""

    name: str
    timers: Timers
    pager: Pager | None  # where messages past the memory budget go (None: kept in memory)

    def remove_queue(self, queue: Queue) -> int: ...

    def dead_letter(self, queue: Queue, entries: list[Entry], reason: str) -> None: ...


def _deadline(msg: Message, queue_ttl: int | None, now: float) -> float:
    """Absolute expiry (0.0 for none): the lower of the queue's TTL and the message's."""
    ttl = queue_ttl
    if msg.expiration is not None:
        own = int(msg.expiration)
        ttl = own if ttl is None or own < ttl else ttl
    return 0.0 if ttl is None else now + ttl / 1000.0


class Queue(QueueCore):
    """Ready messages plus consumers. Messages handed out are the channels' to settle.
    Publishing a plain message and dispatching run in QueueCore (mq._core.delivery)."""

    def __init__(self, host: QueueHost, name: str, durable: bool = False,
                 exclusive_owner: Any = None, auto_delete: bool = False,
                 arguments: dict | None = None) -> None:
        self.host = host
        self.vhost = host.name
        self.name = name
        self.durable = durable
        self.exclusive_owner = exclusive_owner
        self.auto_delete = auto_delete
        self.arguments = dict(arguments or {})
        self.settings = parse_queue_arguments(self.arguments, name, host.name)
        self.policy: Policy | None = None  # set by the vhost (set_policy)
        check_queue_properties(self.settings, {"durable": durable,
                                               "exclusive": exclusive_owner is not None,
                                               "auto_delete": auto_delete}, name, host.name)
        # Quorum queues count returns per message (x-delivery-count, x-delivery-limit).
        self.counts_deliveries = self.settings.queue_type == "quorum"
        if self.arguments.get(DEDUP_ARGUMENT) in (True, "true"):
            self.dedup = QueueIdentities()  # B-DEDUP-2
        self._stamp = HeaderStamp("x-delivery-count")
        self.ready = MessageQueue(self.settings.max_priority)
        self._set_limits()
        # Consumers by priority, highest first; each group rotates for round-robin (the
        # list is QueueCore's: self._groups).
        self._single_active: Consumer | None = None
        # The single active consumer before a cancel, while it still holds unsettled
        # deliveries: the next one waits for them, so that one consumer at a time holds
        # messages and requeued ones come back first.
        self._handing_over: Consumer | None = None
        self._arrivals: list[Consumer] = []  # in subscription order, for single active consumer
        # Plain counters read (and turned into rates) by the management API.
        self.published = self.delivered = self.got = self.acked = self.redelivered = 0
        self.deleted = False
        self.incoming: dict[tuple, Any] = {}  # bindings that lead here, for cleanup on delete
        self._had_consumer = False
        self._expiry_timer: Timer | None = None
        self._unused_timer: Timer | None = None
        # Set for a durable queue when the broker has a store: persistent messages in it
        # are logged (enqueue, delivered, gone).
        self.store: Any = None
        self.store_qid = 0
        # Past the memory budget, newer messages wait on disk (B-FLOW-3): ready holds the
        # oldest of each priority level, paged the rest.
        self.paged: PagedMessages | None = None
        self._budget = host.pager.budget if host.pager is not None else 0  # 0: never page
        self.touch()

    @property
    def exclusive(self) -> bool:
        return self.exclusive_owner is not None

    def _set_limits(self) -> None:
        """What the settings make of the path a message takes: QueueCore publishes a plain
        message itself (no length limit, no TTL)."""
        settings = self.settings
        self._limited = settings.max_length is not None or settings.max_length_bytes is not None
        self._plain = not self._limited and settings.message_ttl is None

    # ---- credit flow (B-FLOW-1; behind() is QueueCore's) -------------------------------

    def consumed_by(self, owner: object) -> bool:
        return any(c.owner is owner for c in self.consumers)

    def _caught_up(self) -> None:
        """Let held publishers go: the backlog is down to half, or nobody consumes."""
        if self.consumer_count and self.backlog_above(2):
            return
        publishers, self.flow_publishers = self.flow_publishers, set()
        for publisher in publishers:
            publisher.flow_off(self)

    # ---- messages in ------------------------------------------------------------------

    def _publish(self, msg: Message) -> bool:
        """Enqueue a routed message that is not plain (QueueCore.publish takes those): with
        a length limit, a TTL, or when memory is full. False when x-overflow refused it."""
        settings = self.settings
        if self._limited and settings.overflow != "drop-head" and self._would_overflow(msg):
            if settings.overflow == "reject-publish-dlx":
                self._dead_letter([Entry(msg, 0, 0, 0.0)], "maxlen")
            return False
        if settings.message_ttl is not None or msg.expiration is not None:
            now = time.time()
            expires_at = _deadline(msg, settings.message_ttl, now)
        else:
            now = expires_at = 0.0  # no clock read on the common path
        if self.store_qid and msg.delivery_mode == 2:
            self.store.enqueue(self.store_qid, msg, expires_at)
        if (self.paged is not None or self._over_budget()) and not 0.0 < expires_at <= now:
            self._page_out(msg, expires_at)
            entry = None
        else:
            entry = self.ready.push(msg, expires_at)
        self.published += 1
        if self.consumer_count:
            self.dispatch(now)
        if expires_at and entry is not None:
            if expires_at <= now:  # TTL 0: only a consumer ready right now could take it
                if not entry.removed:
                    self.ready.remove(entry)
                    self._dead_letter([entry], "expired")
            else:
                self._arm_expiry()
        if self._limited:
            self._drop_over_limit()
        return True

    def _would_overflow(self, msg: Message) -> bool:
        settings = self.settings
        return (settings.max_length is not None and self.message_count + 1 > settings.max_length) \
            or (settings.max_length_bytes is not None
                and self.message_bytes + len(msg.body) > settings.max_length_bytes)

    def _drop_over_limit(self) -> None:
        settings = self.settings
        dropped = []
        while self.message_count and (
                (settings.max_length is not None and self.message_count > settings.max_length)
                or (settings.max_length_bytes is not None
                    and self.message_bytes > settings.max_length_bytes)):
            dropped.append(self._pop())  # the head: in a priority queue, the highest first
        if dropped:
            self._dead_letter(dropped, "maxlen")

    def requeue(self, entries: Iterable[Entry]) -> None:
        """Return delivered-but-unsettled messages to their places, marked redelivered."""
        entries = list(entries)
        if self.deleted or not entries:
            return
        if self.counts_deliveries:
            entries = self._count_returns(entries)
        self.ready.requeue(entries)
        if self._limited and self.settings.overflow == "drop-head":
            self._drop_over_limit()  # requeued at the head, they may be dropped again
        now = time.time()
        expired = self.ready.expire_due(now)
        if expired:
            self._dead_letter(expired, "expired")
        self.dispatch(now)
        self._arm_expiry()

    def _count_returns(self, entries: list[Entry]) -> list[Entry]:
        """Quorum queues: one more return each; past x-delivery-limit a message is dead
        lettered (reason delivery_limit) instead of requeued. Returns those to requeue."""
        limit = self.settings.delivery_limit
        kept, spent = [], []
        for entry in entries:
            entry.delivery_count += 1
            (spent if limit is not None and entry.delivery_count > limit else kept).append(entry)
        if spent:
            self._dead_letter(spent, "delivery_limit")
        return kept

    def delivery_props(self, entry: Entry) -> bytes:
        """The property bytes a delivery carries: as published, plus x-delivery-count for a
        quorum queue (as RabbitMQ adds it)."""
        if not self.counts_deliveries:
            return entry.msg.props
        return self._stamp(entry.msg.props, entry.delivery_count)

    def set_policy(self, policy: Policy | None) -> None:
        """Another policy applies (None: none): the settings become the arguments merged
        with it, taking effect as in RabbitMQ (messages over a new limit dropped from the
        head, the x-expires countdown restarted; queued messages keep their expiry)."""
        self.policy = policy
        self.settings = merge_queue_settings(
            parse_queue_arguments(self.arguments, self.name, self.vhost), self.arguments, policy)
        self._set_limits()
        settings = self.settings
        if self._limited and settings.overflow == "drop-head":
            self._drop_over_limit()
        if self._unused_timer is not None:
            self._unused_timer.cancel()
            self._unused_timer = None
        self.touch()

    # ---- expiry -----------------------------------------------------------------------

    def _arm_expiry(self) -> None:
        deadline = self.ready.next_deadline()
        timer = self._expiry_timer
        if not deadline or (timer is not None and not timer.cancelled and timer.when <= deadline):
            return
        if timer is not None:
            timer.cancel()
        self._expiry_timer = self.host.timers.call_at(deadline, self._expire)

    def _expire(self) -> None:
        self._expiry_timer = None
        if self.deleted:
            return
        now = time.time()
        while True:
            expired = self.ready.expire_due(now)
            if expired:
                self._dead_letter(expired, "expired")
            if not expired or self.paged is None:
                break
            self._page_in()  # those waiting on disk come up to expire in their turn
        self._arm_expiry()

    def touch(self) -> None:
        """Used now (declare, get, consumer gone): restart the x-expires countdown."""
        expires = self.settings.expires
        if expires is None or self.deleted:
            return
        if self._unused_timer is not None:
            self._unused_timer.cancel()
        self._unused_timer = self.host.timers.call_at(time.time() + expires / 1000.0,
                                                      self._unused_expired)

    def _unused_expired(self) -> None:
        self._unused_timer = None
        if self.consumer_count:
            return  # removing the last consumer restarts the countdown
        self.host.remove_queue(self)

    # ---- messages out -----------------------------------------------------------------

    def _pop(self) -> Entry | None:
        """The next ready message off the queue (from disk if it waits there)."""
        if self.paged is not None:
            self._page_in()
        entry = self.ready.pop()
        if self.paged is not None and not self.ready.count:
            self._page_in()  # never all on disk: expiry timers look at memory only
        return entry

    def get(self, no_ack: bool) -> Entry | None:
        self.touch()
        now = time.time()
        while True:
            entry = self._pop()
            if entry is None or not entry.expires_at or entry.expires_at >= now:
                break
            self._dead_letter([entry], "expired")
        if entry is not None and self.store_qid and entry.msg.store_id:
            self._handed_out(entry, no_ack)
        if entry is not None and no_ack:
            self._left((entry,))
        if entry is not None:
            self.got += 1
            self.redelivered += entry.redelivered
        return entry

    def check_consume(self, no_ack: bool, prefetch: int, global_prefetch: int,
                      arguments: dict) -> None:
        """What a consumer of this kind of queue must have (a classic queue: nothing)."""

    def check_negative(self) -> None:
        """Whether basic.nack and basic.reject are allowed (on a classic queue: yes)."""

    def reject(self, entries: list[Entry]) -> None:
        """Delivered messages rejected without requeue: gone, or dead-lettered."""
        if not self.deleted:
            self._dead_letter(entries, "rejected")

    def purge(self) -> int:
        purged = self.ready.purge()
        self._unstore(purged)
        self._left(purged)
        count = len(purged)
        paged = self.paged
        if paged is not None:
            if self.dedup is not None:  # their identities are not known here: forget all
                self.dedup.forget_all()
            count += paged.count
            if self.store_qid:  # it closes paged once it has read their ids back
                self.store.ack_all(self.store_qid, paged.drain_stored_ids())
            else:
                paged.close()
            self.paged = None
        if self.flow_publishers:
            self._caught_up()
        return count

    # ---- memory budget and the store ------------------------------------------------------

    def attach_store(self, store: Any, store_qid: int) -> None:
        """The queue is durable and the broker has a store: its persistent messages are
        logged under store_qid."""
        self.store, self.store_qid = store, store_qid
        if self._budget:
            self._budget = min(self._budget, STORED_WINDOW)

    def recover(self, stored: StoredEntries) -> None:
        """The queue's messages in the store after a restart, in order, as columns (store
        ids, expiries, redelivered flags, priorities, body sizes). The first are read back
        into memory, up to the budget; the rest are paged out as references to the log, in
        bulk (a restart with a big backlog must not take a step per message in Python)."""
        ids, expiries, redelivered = stored[0], stored[1], stored[2]
        read, ready = self.store.read_message, self.ready
        count, i = len(ids), 0
        while i < count and not self._over_budget():
            ready.push(read(ids[i]), expiries[i]).redelivered = bool(redelivered[i])
            i += 1
        if i < count:
            paged = self.paged = self.host.pager.open()
            top = ready.max_priority
            levels = sorted({min(p, top) for p in stored[3][i:]}) if top else [0]
            for start in range(i, count, PAGE_OUT_CHUNK):
                stop = min(start + PAGE_OUT_CHUNK, count)
                for level in levels:
                    paged.put_refs(level, stored, start, stop, top)
        self._arm_expiry()

    def _page_out(self, msg: Message, expires_at: float, redelivered: bool = False) -> None:
        paged = self.paged
        if paged is None:
            paged = self.paged = self.host.pager.open()
        level = 0
        if self.ready.max_priority:
            level = min(msg.priority, self.ready.max_priority)
        paged.put(level, msg, expires_at, redelivered, bool(self.store_qid and msg.store_id))

    def _page_in(self) -> None:
        """Read paged-out messages back, a chunk at a time, while memory is under half its
        budget, and always when a paged level outranks the next message in memory (so that
        priority order holds)."""
        paged, ready = self.paged, self.ready
        while paged.count:
            if ready.count and self._in_memory() >= self._budget // 2:
                if not ready.max_priority:
                    return
                top = paged.top_level()
                if top <= ready.peek().level:
                    return
            else:
                top = paged.top_level()
            stored = self.store.read_messages if self.store_qid else None
            for msg, expires_at, redelivered in paged.take(top, stored):
                ready.push(msg, expires_at).redelivered = redelivered
            if ready.count:
                self._arm_expiry()
                break
        if not paged.count:
            paged.close()
            self.paged = None

    def _dead_letter(self, entries: list[Entry], reason: str) -> None:
        """Messages leave for good (expired, dropped, rejected): forwarded first, so that a
        crash in between leaves a duplicate, never a loss (B-DLX-6)."""
        self.host.dead_letter(self, entries, reason)
        self._unstore(entries)
        self._left(entries)

    # ---- consumers --------------------------------------------------------------------

    @property
    def consumers(self) -> list[Consumer]:
        return [c for _, group in self._groups for c in group]

    def has_exclusive_consumer(self) -> bool:
        return any(c.exclusive for c in self.consumers)

    def add_consumer(self, consumer: Consumer) -> None:
        for priority, group in self._groups:
            if priority == consumer.priority:
                group.append(consumer)
                break
        else:
            self._groups.append((consumer.priority, deque([consumer])))
            self._groups.sort(key=lambda g: -g[0])
        self.consumer_count += 1
        self._arrivals.append(consumer)
        self._had_consumer = True
        if self.settings.single_active_consumer and self._single_active is None:
            self._single_active = consumer
        self.dispatch()

    def remove_consumer(self, consumer: Consumer) -> None:
        for i, (_, group) in enumerate(self._groups):
            if consumer in group:
                group.remove(consumer)
                if not group:
                    del self._groups[i]
                self.consumer_count -= 1
                self._arrivals.remove(consumer)
                break
        if self._single_active is consumer:
            if consumer.unacked:
                self._handing_over = consumer
            # The longest-waiting remaining consumer takes over.
            self._single_active = self._arrivals[0] if self._arrivals else None
            self.dispatch()
        if self.consumer_count == 0:
            if self.flow_publishers:
                self._caught_up()
            if self.auto_delete and self._had_consumer:
                self.host.remove_queue(self)
                return
            self.touch()


    def delete(self) -> int:
        """Drop everything; consumers are told. Returns the count of ready messages lost."""
        self.deleted = True
        for timer in (self._expiry_timer, self._unused_timer):
            if timer is not None:
                timer.cancel()
        count = self.message_count
        self.ready.purge()
        if self.paged is not None:
            self.paged.close()
            self.paged = None
        consumers = self.consumers
        self._groups = []
        self._arrivals = []
        self._single_active = None
        self._handing_over = None
        self.consumer_count = 0
        if self.flow_publishers:
            self._caught_up()
        for consumer in consumers:
            consumer.cancelled_by_broker(self)
        return count
