"""A node's standing in etcd: its lease, its node key, the leader key and the in-sync set.

Keys, under /mq/<cluster>/:
- nodes/<name>: the node's addresses (JSON), bound to its lease: present while it runs.
- leader: the leader's addresses (JSON), bound to its lease. Its create revision is the
  epoch: every term has a new one, higher than any before.
- isr: {"leader": name, "members": [names]}, the in-sync set, not bound to a lease. Only a
  member may campaign, and the campaign checks that isr has not changed since it was read, so
  a node that missed confirmed writes can never lead. The leader writes it (only while the
  leader key is still its own), adding a follower only after gating confirms on it and
  removing one before confirming without it.

The lease is renewed every ttl/4. `valid()` says whether it surely still holds: a renewal
sent at t and answered with ttl means etcd keeps it at least until t + ttl, so the leader
stops confirming at that moment (less a margin) unless a later renewal was answered.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import asdict, dataclass
from typing import Callable

from mq.cluster import etcd as E
from mq.cluster.etcd import Etcd, EtcdError

log = logging.getLogger("mq.cluster")

LEASE_MARGIN = 0.5   # seconds before the lease's end at which the leader stops confirming


@dataclass
class Addresses:
    """How to reach a node: "host:port" of each listener ("" for one it does not have)."""

    name: str
    amqp: str
    management: str
    replication: str
    amqps: str = ""

    def json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def parse(cls, text: str) -> Addresses:
        data = json.loads(text)
        return cls(data["name"], data["amqp"], data.get("management", ""),
                   data["replication"], data.get("amqps", ""))


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


@dataclass
class Leader:
    addresses: Addresses
    epoch: int


@dataclass
class InSync:
    leader: str
    members: list[str]
    revision: int  # mod revision of the isr key (0: there is none yet)

    def json(self) -> str:
        return json.dumps({"leader": self.leader, "members": self.members})


class Membership:
    def __init__(self, etcd: Etcd, cluster: str, me: Addresses, ttl: int) -> None:
        self.etcd = etcd
        self.me = me
        self.ttl = ttl
        self.prefix = f"/mq/{cluster}/"
        self.lease = 0
        self._valid_until = 0.0       # monotonic time the lease surely holds until
        self.on_renewed: Callable[[], None] | None = None  # the lease holds again
        self.on_lost: Callable[[], None] | None = None     # etcd says it has expired
        self.epoch = 0                # our term while we lead
        self.members: list[str] = []  # the in-sync set our campaign wrote

    @property
    def leader_key(self) -> str:
        return self.prefix + "leader"

    @property
    def isr_key(self) -> str:
        return self.prefix + "isr"

    def node_key(self, name: str) -> str:
        return self.prefix + "nodes/" + name

    # ---- the lease ------------------------------------------------------------------------

    async def join(self) -> None:
        """Take a lease and publish the node key; waits (retrying) until etcd answers."""
        while True:
            try:
                sent = time.monotonic()
                self.lease = await self.etcd.grant(self.ttl)
                self._valid_until = sent + self.ttl - LEASE_MARGIN
                await self.etcd.put(self.node_key(self.me.name), self.me.json(), self.lease)
                return
            except EtcdError as exc:
                log.warning("cluster: etcd: %s; retrying", exc)
                await asyncio.sleep(1)

    def valid(self) -> bool:
        return time.monotonic() < self._valid_until

    async def keep_alive(self) -> None:
        """Renew the lease until cancelled. A follower whose lease expired takes a new one;
        a leader's on_lost is called (it must step down)."""
        interval = self.ttl / 4
        while True:
            await asyncio.sleep(interval)
            sent = time.monotonic()
            try:
                ttl = await self.etcd.keepalive(self.lease, timeout=interval)
            except EtcdError as exc:
                if self.valid():
                    log.warning("cluster: cannot renew the lease: %s", exc)
                continue
            if ttl <= 0:
                log.warning("cluster: the lease expired")
                if self.on_lost is not None:
                    self.on_lost()
                    return
                await self.join()
                continue
            was_valid = self.valid()
            self._valid_until = sent + ttl - LEASE_MARGIN
            if not was_valid and self.on_renewed is not None:
                self.on_renewed()

    async def leave(self) -> None:
        """Give the lease back (a clean stop: the others need not wait for it to expire)."""
        if self.lease:
            try:
                await self.etcd.revoke(self.lease)
            except EtcdError:
                pass

    # ---- reading the cluster's state --------------------------------------------------------

    async def leader(self) -> Leader | None:
        kv = await self.etcd.get(self.leader_key)
        return None if kv is None else Leader(Addresses.parse(kv.value), kv.create_revision)

    async def in_sync(self) -> InSync:
        kv = await self.etcd.get(self.isr_key)
        if kv is None:
            return InSync("", [], 0)
        data = json.loads(kv.value)
        return InSync(data.get("leader", ""), list(data.get("members", [])), kv.mod_revision)

    async def nodes(self) -> dict[str, Addresses]:
        kvs = await self.etcd.get_prefix(self.prefix + "nodes/")
        return {a.name: a for a in (Addresses.parse(kv.value) for kv in kvs)}

    # ---- leading --------------------------------------------------------------------------

    async def campaign(self, isr: InSync) -> bool:
        """Take the leader key if it is free and the in-sync set is still `isr` (which must
        name us, or be empty: a new cluster). The new in-sync set keeps the members except
        the last leader, which must catch up again."""
        members = [self.me.name] + [m for m in isr.members
                                    if m not in (self.me.name, isr.leader)]
        new = InSync(self.me.name, members, 0)
        ok, revision, _ = await self.etcd.txn(
            [E.created(self.leader_key, 0), E.modified(self.isr_key, isr.revision)],
            [E.put(self.leader_key, self.me.json(), self.lease), E.put(self.isr_key, new.json())])
        if ok:
            self.epoch, self.members = revision, members
        return ok

    async def write_in_sync(self, members: list[str]) -> bool:
        """Record the in-sync set, only while we still lead this term (False: we don't)."""
        value = InSync(self.me.name, members, 0).json()
        ok, _, _ = await self.etcd.txn([E.created(self.leader_key, self.epoch)],
                                       [E.put(self.isr_key, value)])
        return ok
