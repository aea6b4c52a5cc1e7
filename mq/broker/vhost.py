"""A virtual host: its exchanges, queues and bindings, and routing between them."""
from __future__ import annotations

import base64
import logging
import os
from typing import Any

from mq._core.message import Message
from mq._core.msgqueue import Entry
from mq._core.publish import Topology
from mq.broker.args import (EXCHANGE_EQUIVALENCE_ARGS, QUEUE_EQUIVALENCE_ARGS,
                            STREAM_EQUIVALENCE_ARGS, check_equivalent)
from mq.broker.durability import durable_binding
from mq.broker.errors import AccessRefused, CommandInvalid, NotFound, PreconditionFailed, ResourceLocked
from mq.broker.exchange import EXCHANGE_TYPES, Binding, DefaultExchange, Exchange
from mq._core.dedup import Cache
from mq.broker.dedup import cache_file, cache_settings, wants_cache
from mq.broker.delayed import DELAYED_TYPE, DelayedExchange, DelayHold
from mq.broker.deadletter import dead_lettered, is_cycle, routing_keys
from mq.broker.policy import Policy, select
from mq.broker.kinds import make_queue
from mq.broker.queue import Queue
from mq.broker.stream import StreamQueue
from mq.broker.superstream import SuperStream, is_super_stream
from mq.broker.timers import Timers
from mq.logfmt import kv

log = logging.getLogger("mq.broker")

# (name, type, internal) as RabbitMQ predeclares them in every vhost.
PREDECLARED_EXCHANGES = (
    ("amq.direct", "direct", False),
    ("amq.fanout", "fanout", False),
    ("amq.topic", "topic", False),
    ("amq.headers", "headers", False),
    ("amq.match", "headers", False),
    ("amq.rabbitmq.trace", "topic", True),
)


def _check_not_default(*names: str | None) -> None:
    """The default exchange can't be declared, deleted, bound or unbound (403)."""
    if "" in names:
        raise AccessRefused("operation not permitted on the default exchange")


def server_named_queue() -> str:
    return "amq.gen-" + base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")


# Exchange types whose routing looks at the routing key only.
KEY_ROUTED = frozenset(("direct", "fanout", "topic", "x-message-deduplication"))


def _by_one_exchange(exchange: Exchange, msg: Message) -> bool:
    """The message is routed by this exchange alone, by its own routing key: no bindings
    to other exchanges, no alternate exchange, no CC/BCC keys."""
    return not exchange.has_exchange_destinations and exchange.alternate is None \
        and b"CC" not in msg.props and msg.bcc is None


class VirtualHost:
    def __init__(self, name: str, timers: Timers | None = None) -> None:
        self.name = name
        self.timers = timers or Timers()
        # Bumped by every change that can change where a message goes (queues, exchanges,
        # bindings, policies): the channels' route caches (mq._core.publish) check it.
        self.topology = Topology()
        self.store: Any = None  # set by the broker when it has one: durable changes go there
        self.pager: Any = None  # set by the broker: where queues page out past their budget
        self.queues: dict[str, Queue] = {}
        self.super_streams: dict[str, SuperStream] = {}  # consumed as groups, by name
        self.reply_queues: dict[str, Queue] = {}  # direct reply-to pseudo-queues
        self.policies: dict[str, Policy] = {}  # by name
        self.exchanges: dict[str, Exchange] = {
            "": DefaultExchange(name, self.queues, self.reply_queues)}
        for ex_name, ex_type, internal in PREDECLARED_EXCHANGES:
            self.exchanges[ex_name] = EXCHANGE_TYPES[ex_type](name, ex_name, durable=True,
                                                             internal=internal)

    def _where(self, kind: str, name: str) -> str:
        return f"{kind} '{name}' in vhost '{self.name}'"

    # ---- exchanges --------------------------------------------------------------------

    def get_exchange(self, name: str) -> Exchange:
        exchange = self.exchanges.get(name)
        if exchange is None:
            raise NotFound(f"no {self._where('exchange', name)}")
        return exchange

    def declare_exchange(self, name: str, type_: str, passive: bool = False, durable: bool = False,
                         auto_delete: bool = False, internal: bool = False,
                         arguments: dict | None = None) -> Exchange:
        _check_not_default(name)
        if passive:
            return self.get_exchange(name)
        # RabbitMQ's order: the type first, then equivalence with an existing exchange (so
        # `amq.direct` may be redeclared as it is), and the reserved prefix only for new names.
        cls = DelayedExchange if type_ == DELAYED_TYPE else EXCHANGE_TYPES.get(type_)
        if cls is None:
            raise CommandInvalid(f"unknown exchange type '{type_}'")
        arguments = arguments or {}
        existing = self.exchanges.get(name)
        if existing is not None:
            check_equivalent("exchange", name, self.name, {
                "type": (type_, existing.type), "durable": (durable, existing.durable),
                "auto_delete": (auto_delete, existing.auto_delete),
                "internal": (internal, existing.internal),
            }, arguments, existing.arguments, EXCHANGE_EQUIVALENCE_ARGS)
            return existing
        if name.startswith("amq."):
            raise AccessRefused(f"exchange name '{name}' contains reserved prefix 'amq.*'")
        dedup = cache_settings(arguments, self._where("exchange", name)) \
            if wants_cache(type_, arguments) else None
        exchange = cls(self.name, name, durable, auto_delete, internal, arguments)
        if dedup is not None:
            exchange.dedup = Cache(dedup[0], dedup[1])
        self.exchanges[name] = exchange
        self.topology.version += 1
        self._apply_policy(exchange, "exchanges")
        if durable and self.store is not None:
            self.store.declare_exchange(self.name, name, type_, auto_delete, internal, arguments)
        if isinstance(exchange, DelayedExchange):
            self.open_hold(exchange)
        self.keep_cache(exchange)
        return exchange

    def keep_cache(self, exchange: Exchange) -> None:
        """A durable exchange's deduplication cache is kept in the store's directory (and
        what was kept is loaded), unless x-cache-persistence is "memory"."""
        if exchange.dedup is None or exchange.dedup_file is not None or not exchange.durable \
                or self.store is None:
            return
        if cache_settings(exchange.arguments, self._where("exchange", exchange.name))[2]:
            exchange.dedup_file = cache_file(self.store, self.timers, self.name,
                                             exchange.name, exchange.dedup)

    def open_hold(self, exchange: DelayedExchange, store_qid: int = 0) -> DelayHold:
        """A delayed exchange's hold; a durable one's is a queue of the store (store_qid
        when it is recovered, else declared now)."""
        hold = exchange.hold = exchange.hold or DelayHold(self, exchange)
        if exchange.durable and self.store is not None and not hold.store_qid:
            hold.attach_store(self.store, store_qid or self.store.declare_queue(
                self.name, hold.name, False, {}))
        return hold

    def delete_exchange(self, name: str, if_unused: bool = False) -> None:
        _check_not_default(name)
        if name.startswith("amq."):
            raise AccessRefused(f"deletion of system exchange '{name}' in vhost '{self.name}' not allowed")
        exchange = self.exchanges.get(name)
        if exchange is None:
            return
        if if_unused and exchange.bindings:
            raise PreconditionFailed(f"{self._where('exchange', name)} in use")
        self._remove_exchange(exchange)

    def _remove_exchange(self, exchange: Exchange) -> None:
        del self.exchanges[exchange.name]
        self.topology.version += 1
        if exchange.durable and self.store is not None:
            self.store.delete_exchange(self.name, exchange.name)
        if exchange.dedup_file is not None:
            exchange.dedup_file.remove()
        if isinstance(exchange, DelayedExchange) and exchange.hold is not None:
            exchange.hold.drop_all()
            if exchange.hold.store_qid:
                self.store.delete_queue(self.name, exchange.hold.name)
        for binding in list(exchange.bindings.values()):
            self._drop_binding(binding, cascade=False)
        for binding in list(exchange.incoming.values()):
            self._drop_binding(binding)

    # ---- queues -----------------------------------------------------------------------

    def get_queue(self, name: str, owner: Any = None) -> Queue:
        queue = self.queues.get(name)
        if queue is None:
            raise NotFound(f"no {self._where('queue', name)}")
        self.check_exclusive(queue, owner)
        return queue

    def consumable(self, name: str, owner: Any = None) -> Any:
        """What basic.consume reads: the queue of that name, or a super stream (consumer
        groups, mq.broker.superstream)."""
        if name not in self.queues and is_super_stream(self.exchanges.get(name)):
            stream = self.super_streams.get(name)
            if stream is None or stream.exchange is not self.exchanges[name]:
                stream = self.super_streams[name] = SuperStream(self, self.exchanges[name])
            return stream
        return self.get_queue(name, owner)

    def check_exclusive(self, queue: Queue, owner: Any, strict: bool = False) -> None:
        """405 when another connection owns the queue; strict (redeclare) also when the
        exclusive flag differs from the queue's."""
        if queue.exclusive_owner is not owner and (strict or queue.exclusive_owner is not None):
            raise ResourceLocked(
                f"cannot obtain exclusive access to locked {self._where('queue', queue.name)}. "
                "It could be originally declared on another connection or the exclusive "
                "property value does not match that of the original declaration.")

    def declare_queue(self, name: str, passive: bool = False, durable: bool = False,
                      exclusive: bool = False, auto_delete: bool = False,
                      arguments: dict | None = None, owner: Any = None) -> Queue:
        if passive:
            queue = self.get_queue(name, owner)
            queue.touch()  # RabbitMQ counts a passive declare as use (x-expires restarts)
            return queue
        if not name:
            name = server_named_queue()
        elif name.startswith("amq."):
            raise AccessRefused(f"queue name '{name}' contains reserved prefix 'amq.*'")
        arguments = arguments or {}
        existing = self.queues.get(name)
        if existing is not None:
            self.check_exclusive(existing, owner if exclusive else None, strict=True)
            check_equivalent("queue", name, self.name, {
                "durable": (durable, existing.durable),
                "auto_delete": (auto_delete, existing.auto_delete),
            }, arguments, existing.arguments, QUEUE_EQUIVALENCE_ARGS
                + (STREAM_EQUIVALENCE_ARGS if isinstance(existing, StreamQueue) else ()))
            existing.touch()
            return existing
        queue = make_queue(self, name, durable, owner if exclusive else None, auto_delete,
                           arguments)
        self.queues[name] = queue
        self.topology.version += 1
        self._apply_policy(queue, "queues")
        if durable and not exclusive and self.store is not None:
            queue.attach_store(self.store,
                               self.store.declare_queue(self.name, name, auto_delete, arguments))
        log.info("queue created %s", kv(vhost=self.name, queue=name, durable=durable,
                                          exclusive=exclusive, auto_delete=auto_delete))
        return queue

    def delete_queue(self, name: str, if_unused: bool = False, if_empty: bool = False,
                     owner: Any = None) -> int:
        queue = self.queues.get(name)
        if queue is None:
            return 0
        self.check_exclusive(queue, owner)
        if if_unused and queue.consumer_count:
            raise PreconditionFailed(f"{self._where('queue', name)} in use")
        if if_empty and queue.message_count:
            raise PreconditionFailed(f"{self._where('queue', name)} not empty")
        return self.remove_queue(queue)

    def open_reply_queue(self, owner: Any) -> Queue:
        """A direct reply-to pseudo-queue: routable by name from the default exchange, never
        listed, gone with its consumer."""
        name = "amq.rabbitmq.reply-to." + server_named_queue()[len("amq.gen-"):]
        queue = Queue(self, name, exclusive_owner=owner, auto_delete=True)
        self.reply_queues[name] = queue
        self.topology.version += 1
        return queue

    def remove_queue(self, queue: Queue) -> int:
        self.topology.version += 1
        if self.reply_queues.get(queue.name) is queue:
            del self.reply_queues[queue.name]
            return queue.delete()
        if self.queues.get(queue.name) is not queue:
            return 0
        del self.queues[queue.name]
        for binding in list(queue.incoming.values()):
            self._drop_binding(binding)
        if queue.store_qid:
            self.store.delete_queue(self.name, queue.name)
        log.info("queue deleted %s", kv(vhost=self.name, queue=queue.name))
        return queue.delete()

    # ---- policies ---------------------------------------------------------------------

    def set_policy(self, *policies: Policy) -> None:
        """Add or replace policies; every queue and exchange is matched again, once (a
        definitions import sets them all in one call)."""
        for policy in policies:
            self.policies[policy.name] = policy
        self._apply_policies()

    def clear_policy(self, name: str) -> bool:
        """False when there was no such policy."""
        if self.policies.pop(name, None) is None:
            return False
        self._apply_policies()
        return True

    def _apply_policies(self) -> None:
        self.topology.version += 1
        for queue in list(self.queues.values()):
            self._apply_policy(queue, "queues")
        for exchange in list(self.exchanges.values()):
            self._apply_policy(exchange, "exchanges")

    def _apply_policy(self, obj: Queue | Exchange, kind: str) -> None:
        """Give an object the policy that applies to it, if that changed (the default
        exchange routes by queue name only: no policy)."""
        if not obj.name or (not self.policies and obj.policy is None):
            return
        policy = select(self.policies, kind, obj.name)
        if policy != obj.policy:
            obj.set_policy(policy)

    # ---- bindings ---------------------------------------------------------------------

    def bind_names(self, source_name: str, destination_name: str, to_queue: bool,
                   routing_key: str, arguments: dict | None, owner: Any) -> None:
        """queue.bind / exchange.bind: 403 for the default exchange, then 404 for a missing
        source or destination, in RabbitMQ's order."""
        _check_not_default(source_name, None if to_queue else destination_name)
        source = self.get_exchange(source_name)
        destination = (self.get_queue(destination_name, owner) if to_queue
                       else self.get_exchange(destination_name))
        self.bind(source, destination, routing_key, arguments)

    def unbind_names(self, source_name: str, destination_name: str, to_queue: bool,
                     routing_key: str, arguments: dict | None, owner: Any) -> None:
        """queue.unbind / exchange.unbind: idempotent as in RabbitMQ, so a missing source,
        destination or binding is fine; only an existing binding checks exclusivity."""
        _check_not_default(source_name, None if to_queue else destination_name)
        source = self.exchanges.get(source_name)
        destination = (self.queues if to_queue else self.exchanges).get(destination_name)
        if source is None or destination is None:
            return
        if to_queue and source.find_binding(destination, routing_key, arguments or {}) is not None:
            self.check_exclusive(destination, owner)
        self.unbind(source, destination, routing_key, arguments)

    def bind(self, source: Exchange, destination: Any, routing_key: str,
             arguments: dict | None = None) -> None:
        _check_not_default(source.name)
        binding = source.bind(destination, routing_key, arguments or {})
        self.topology.version += 1
        if binding is not None:
            destination.incoming[(id(source),) + binding.key] = binding
            self._store_binding(binding, True)

    def unbind(self, source: Exchange, destination: Any, routing_key: str,
               arguments: dict | None = None) -> None:
        _check_not_default(source.name)
        binding = source.unbind(destination, routing_key, arguments or {})
        self.topology.version += 1
        if binding is not None:
            destination.incoming.pop((id(source),) + binding.key, None)
            self._store_binding(binding, False)
            self._auto_delete(source)

    def _drop_binding(self, binding: Binding, cascade: bool = True) -> None:
        source = binding.source
        source.unbind(binding.destination, binding.routing_key, binding.arguments)
        self.topology.version += 1
        binding.destination.incoming.pop((id(source),) + binding.key, None)
        self._store_binding(binding, False)
        if cascade:
            self._auto_delete(source)

    def _store_binding(self, binding: Binding, added: bool) -> None:
        """A binding is durable when both its ends are (a durable, non-exclusive queue)."""
        dest = binding.destination
        if self.store is None or not durable_binding(binding.source, dest):
            return
        record = self.store.bind if added else self.store.unbind
        record(self.name, binding.source.name, isinstance(dest, Exchange), dest.name,
               binding.routing_key, binding.arguments)

    def _auto_delete(self, exchange: Exchange) -> None:
        if exchange.auto_delete and not exchange.bindings \
                and self.exchanges.get(exchange.name) is exchange:
            self._remove_exchange(exchange)

    # ---- routing ----------------------------------------------------------------------

    def routes_by_key(self, exchange: Exchange, msg: Message) -> bool:
        """Where the message goes depends on its exchange and routing key alone (not on its
        headers, CC/BCC keys or other exchanges), so the route may be cached until the
        version changes. A delayed exchange's hold is such a route for delayed messages
        (the cache checks x-delay again: mq._core.publish)."""
        if not _by_one_exchange(exchange, msg):
            return False
        if exchange.type in KEY_ROUTED:
            return True
        return exchange.delays and exchange.holds(msg)

    def route(self, exchange: Exchange, msg: Message) -> list[Queue]:
        """Every queue the message reaches, each once: by its routing key and CC/BCC keys,
        through exchange-to-exchange bindings and alternate exchanges."""
        if _by_one_exchange(exchange, msg):
            return list(exchange.route(msg, msg.routing_key))
        keys = routing_keys(msg)
        queues: dict[Queue, None] = {}
        seen: set[int] = set()
        pending = [exchange]
        while pending:
            current = pending.pop()
            if id(current) in seen:
                continue
            seen.add(id(current))
            reached = False
            for key in keys:
                for dest in current.route(msg, key):
                    reached = True
                    if isinstance(dest, Exchange):
                        pending.append(dest)
                    else:
                        queues[dest] = None
            if not reached and current.alternate is not None:
                alternate = self.exchanges.get(current.alternate)
                if alternate is not None:
                    pending.append(alternate)
        return list(queues)

    def dead_letter(self, queue: Queue, entries: list[Entry], reason: str) -> None:
        """Forward messages a queue let go of to its dead-letter exchange, if it has one."""
        settings = queue.settings
        if settings.dead_letter_exchange is None:
            return
        exchange = self.exchanges.get(settings.dead_letter_exchange)
        if exchange is None:
            log.warning("dead letters dropped %s", kv(
                vhost=self.name, queue=queue.name, exchange=settings.dead_letter_exchange,
                messages=len(entries), reason="dead-letter exchange does not exist"))
            return
        for entry in entries:
            msg = dead_lettered(entry.msg, queue.name, reason, exchange.name,
                                settings.dead_letter_routing_key)
            for target in self.route(exchange, msg):
                if is_cycle(msg, target.name, reason):
                    log.info("dead letter dropped %s", kv(vhost=self.name, queue=queue.name,
                                                          target=target.name,
                                                          reason="dead-letter cycle"))
                    continue
                target.publish(msg)

    def connection_closed(self, owner: Any) -> None:
        """Exclusive queues go with the connection that declared them."""
        for queue in [q for q in self.queues.values() if q.exclusive_owner is owner]:
            self.remove_queue(queue)
