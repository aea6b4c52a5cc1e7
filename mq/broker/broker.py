"""The broker: virtual hosts and users. Knows nothing of sockets or frames."""
from __future__ import annotations

from mq.broker.auth import Permission, UserStore
from mq.broker.timers import Timers
from mq.broker.vhost import VirtualHost


class Broker:
    def __init__(self, max_message_size: int = 128 * 1024 * 1024,
                 loopback_users: tuple[str, ...] = ("guest",)) -> None:
        self.max_message_size = max_message_size
        self.loopback_users = loopback_users
        self.timers = Timers()
        self.vhosts: dict[str, VirtualHost] = {}
        self.users = UserStore()
        self.add_vhost("/")
        guest = self.users.add("guest", "guest", ["administrator"])
        guest.permissions["/"] = Permission()

    def add_vhost(self, name: str) -> VirtualHost:
        vhost = self.vhosts.get(name)
        if vhost is None:
            vhost = self.vhosts[name] = VirtualHost(name, self.timers)
        return vhost
