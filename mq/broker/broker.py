"""The broker: virtual hosts and users. Knows nothing of sockets or frames."""
from __future__ import annotations

from typing import TYPE_CHECKING

from mq.broker.auth import Permission, UserStore
from mq.broker.timers import Timers
from mq.broker.vhost import VirtualHost

if TYPE_CHECKING:
    from mq.store import Recovered, Store


class Broker:
    def __init__(self, max_message_size: int = 128 * 1024 * 1024,
                 loopback_users: tuple[str, ...] = ("guest",)) -> None:
        self.max_message_size = max_message_size
        self.loopback_users = loopback_users
        self.timers = Timers()
        self.store: Store | None = None  # None: nothing is durable (in-memory broker)
        self.vhosts: dict[str, VirtualHost] = {}
        self.users = UserStore()
        self.add_vhost("/")
        guest = self.users.add("guest", "guest", ["administrator"])
        guest.permissions["/"] = Permission()

    def add_vhost(self, name: str) -> VirtualHost:
        vhost = self.vhosts.get(name)
        if vhost is None:
            vhost = self.vhosts[name] = VirtualHost(name, self.timers)
            vhost.store = self.store
        return vhost

    def restore(self, store: Store, recovered: Recovered) -> None:
        """Rebuild durable exchanges, queues (with their messages) and bindings from the
        store, then record every durable change in it from now on."""
        for vhost_name, name, type_, auto_delete, internal, arguments in recovered.exchanges:
            self.add_vhost(vhost_name).declare_exchange(name, type_, durable=True,
                                                        auto_delete=auto_delete,
                                                        internal=internal, arguments=arguments)
        for rq in recovered.queues:
            queue = self.add_vhost(rq.vhost).declare_queue(rq.name, durable=True,
                                                           auto_delete=rq.auto_delete,
                                                           arguments=rq.arguments)
            queue.store, queue.store_qid = store, rq.store_qid
            queue.recover(rq.messages)
        for vhost_name, source, to_exchange, destination, key, arguments in recovered.bindings:
            vhost = self.add_vhost(vhost_name)
            dest = (vhost.exchanges if to_exchange else vhost.queues).get(destination)
            if source in vhost.exchanges and dest is not None:
                vhost.bind(vhost.exchanges[source], dest, key, arguments)
        self.store = store
        for vhost in self.vhosts.values():
            vhost.store = store
