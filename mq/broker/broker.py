"""The broker: virtual hosts and users. Knows nothing of sockets or frames."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from mq.broker.auth import Permission, UserStore
from mq.broker.errors import PreconditionFailed
from mq.broker.delayed import HOLD_PREFIX, DelayedExchange
from mq.broker.kinds import make_queue
from mq.broker.stream import StreamQueue
from mq.broker.timers import Timers
from mq.broker.vhost import VirtualHost
from mq.logfmt import kv
from mq.store.streams import remove_orphans

if TYPE_CHECKING:
    from mq.store import Recovered, Store
    from mq.store.paging import Pager

log = logging.getLogger("mq.broker")


class Broker:
    def __init__(self, max_message_size: int = 128 * 1024 * 1024,
                 loopback_users: tuple[str, ...] = ("guest",), max_connections: int = 0,
                 max_queues: int = 0) -> None:
        self.max_message_size = max_message_size
        self.loopback_users = loopback_users
        self.max_connections = max_connections  # 0: no limit
        self.open_connections = 0  # past connection.open, maintained by mq.amqp.connection
        self.max_queues = max_queues  # 0: no limit
        self.timers = Timers()
        self.store: Store | None = None  # None: nothing is durable (in-memory broker)
        self.pager: Pager | None = None  # None: queues keep every message in memory
        self.vhosts: dict[str, VirtualHost] = {}
        self.users = UserStore()
        self.add_vhost("/")
        guest = self.users.add("guest", "guest", ["administrator"])
        guest.permissions["/"] = Permission()

    def check_queue_limit(self, vhost: str, name: str) -> None:
        """Before a queue is created by a client: 406 once --max-queues exist (RabbitMQ's
        text for its cluster-wide queue limit)."""
        if self.max_queues and sum(len(v.queues) for v in self.vhosts.values()) >= self.max_queues:
            log.warning("queue refused %s", kv(vhost=vhost, queue=name, reason="queue limit",
                                               limit=self.max_queues))
            raise PreconditionFailed(f"cannot declare queue '{name}': queue limit in cluster "
                                     f"({self.max_queues}) is reached")

    def add_vhost(self, name: str) -> VirtualHost:
        vhost = self.vhosts.get(name)
        if vhost is None:
            vhost = self.vhosts[name] = VirtualHost(name, self.timers)
            vhost.store = self.store
            vhost.pager = self.pager
        return vhost

    def page_to(self, pager: Pager) -> None:
        """Queues past their memory budget page out through pager from now on."""
        self.pager = pager
        for vhost in self.vhosts.values():
            vhost.pager = pager

    def restore(self, store: Store, recovered: Recovered) -> None:
        """Rebuild durable exchanges, queues (with their messages) and bindings from the
        store, then record every durable change in it from now on."""
        for vhost_name, name, type_, auto_delete, internal, arguments in recovered.exchanges:
            self.add_vhost(vhost_name).declare_exchange(name, type_, durable=True,
                                                        auto_delete=auto_delete,
                                                        internal=internal, arguments=arguments)
        holds = []
        for rq in recovered.queues:
            vhost = self.add_vhost(rq.vhost)
            if rq.name.startswith(HOLD_PREFIX):  # a delayed exchange's hold, not a queue
                holds.append((vhost, rq))
                continue
            # Made directly, not declared: server-named queues (amq.gen-*) are durable too.
            queue = vhost.queues[rq.name] = make_queue(vhost, rq.name, durable=True,
                                                       auto_delete=rq.auto_delete,
                                                       arguments=rq.arguments)
            queue.attach_store(store, rq.store_qid)
            queue.recover(rq.stored)
        remove_orphans(store.directory, {q.store_qid for v in self.vhosts.values()
                                          for q in v.queues.values()
                                          if isinstance(q, StreamQueue)})
        for vhost_name, source, to_exchange, destination, key, arguments in recovered.bindings:
            vhost = self.add_vhost(vhost_name)
            dest = (vhost.exchanges if to_exchange else vhost.queues).get(destination)
            if source in vhost.exchanges and dest is not None:
                vhost.bind(vhost.exchanges[source], dest, key, arguments)
        self.store = store
        for vhost in self.vhosts.values():
            vhost.store = store
        for vhost, rq in holds:
            exchange = vhost.exchanges.get(rq.name[len(HOLD_PREFIX):])
            if isinstance(exchange, DelayedExchange):
                vhost.open_hold(exchange, rq.store_qid).recover_held(rq.stored)
            else:  # its exchange is gone: so are its messages
                store.delete_queue(rq.vhost, rq.name)
        for vhost in self.vhosts.values():
            for exchange in vhost.exchanges.values():
                if isinstance(exchange, DelayedExchange):  # a hold never written yet
                    vhost.open_hold(exchange)
                vhost.keep_cache(exchange)  # a deduplication cache comes back
