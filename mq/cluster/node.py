"""A cluster node's life (B-CLUSTER): join (lease, node key), follow, campaign, lead.

Following: the node's AMQP and HTTP ports relay to the leader (proxy.py), its data
directory is fed by the leader's stream (follower.py), and it watches etcd. When the leader
key is gone and this node is in the in-sync set, it campaigns; the winner closes its relays
and its link, opens the store on the data directory (recovery, as after a crash: every
message redelivered) and serves as a single broker does, streaming every write to the
followers (leader.py).

Stepping down: a leader whose lease etcd reports expired (paused, cut off) or whose leader
key is no longer its own starts again as a fresh process (os.execv, same PID and command
line), which follows: nothing of the old term's state survives in memory, and the data
directory is made equal to the new leader's by the full sync.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import threading
from typing import Any

import anyio

from mq.cluster.etcd import Etcd, EtcdError
from mq.cluster.follower import Link
from mq.cluster.leader import Replicator
from mq.cluster.membership import Addresses, InSync, Leader, Membership, split_address
from mq.cluster.proxy import Proxy
from mq.config import Settings

log = logging.getLogger("mq.cluster")

POLL = 0.25         # seconds between looks at the leader key while following
RETRY = 0.5         # seconds between attempts to reach the leader's replication port
NODES_REFRESH = 1.0


class Following:
    """Follow whoever leads until this node wins an election (run() returns)."""

    def __init__(self, settings: Settings, membership: Membership,
                 proxies: list[tuple[Proxy, str]]) -> None:
        self.settings = settings
        self.membership = membership
        self.proxies = proxies  # (proxy, which address of the leader it relays to)
        self.me = membership.me.name
        self._leader: Leader | None = None
        self._link: asyncio.Task | None = None
        self._said_in_sync = 0
        self._etcd_down = False

    async def run(self) -> None:
        while True:
            try:
                leader = await self.membership.leader()
                isr = await self.membership.in_sync()
            except EtcdError as exc:
                if not self._etcd_down:
                    log.warning("cluster: etcd unreachable: %s", exc)
                    self._etcd_down = True
                await asyncio.sleep(RETRY)
                continue
            if self._etcd_down:
                log.info("cluster: etcd answers again")
                self._etcd_down = False
            if leader is not None and leader.addresses.name != self.me:
                await self._follow(leader, isr)
            else:  # none, or our own from before a restart (its lease runs out soon)
                await self._unfollow()
                if leader is None and self._eligible(isr):
                    if await self._campaign(isr):
                        return
            await asyncio.sleep(POLL)

    def _eligible(self, isr: InSync) -> bool:
        return isr.revision == 0 or self.me in isr.members

    async def _campaign(self, isr: InSync) -> bool:
        try:
            return await self.membership.campaign(isr)
        except EtcdError as exc:
            log.warning("cluster: campaign failed: %s", exc)
            return False

    async def _follow(self, leader: Leader, isr: InSync) -> None:
        current = self._leader
        if current is None or current.epoch != leader.epoch:
            await self.stop()  # the old link's last batch is written before the new one starts
            self._leader = leader
            self._link = asyncio.ensure_future(self._replicate(leader))
            for proxy, which in self.proxies:
                address = getattr(leader.addresses, which)
                proxy.set_target(split_address(address) if address else None)
            log.info("cluster: following %s (epoch %d)", leader.addresses.name, leader.epoch)
        if (self.me in isr.members and isr.leader == leader.addresses.name
                and self._said_in_sync != leader.epoch):
            self._said_in_sync = leader.epoch
            log.info("cluster: in sync with %s", leader.addresses.name)

    async def _unfollow(self) -> None:
        if self._leader is not None:
            log.info("cluster: %s no longer leads", self._leader.addresses.name)
            self._leader = None
            for proxy, _ in self.proxies:
                proxy.set_target(None)
        await self.stop()

    async def stop(self) -> None:
        """End the link and wait until its files are closed."""
        link, self._link = self._link, None
        if link is not None:
            link.cancel()
            await asyncio.gather(link, return_exceptions=True)

    async def _replicate(self, leader: Leader) -> None:
        """Keep a link to this leader; a failure is logged once until a link works."""
        quiet = False
        while True:
            link = Link(self.settings.data_dir, self.me, leader)
            try:
                await link.run()
            except Exception as exc:  # any failure: the link starts over (a full sync)
                (log.debug if quiet and not link.welcomed else log.info)(
                    "cluster: replication link to %s: %s", leader.addresses.name,
                    exc or type(exc).__name__)
                quiet = True
            await asyncio.sleep(RETRY)


class Leading:
    """The leader's part of the cluster, run by the Server (server.cluster)."""

    def __init__(self, settings: Settings, membership: Membership) -> None:
        self.settings = settings
        self.membership = membership
        self.replicator = Replicator(settings.data_dir, membership)
        self.known: dict[str, Addresses] = {membership.me.name: membership.me}
        membership.on_lost = step_down
        membership.on_renewed = self.replicator.advance

    def attach(self, store: Any) -> None:
        store.replication = self.replicator
        self.replicator.release = store.release

    async def run(self) -> None:
        host = self.settings.host
        port = split_address(self.membership.me.replication)[1]
        await self.replicator.serve(host, port)
        log.info("cluster: leading (epoch %d); replication on %s:%d", self.membership.epoch,
                 host, port)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self.replicator.monitor,
                              lambda: step_down("the leader key is no longer ours"))
                tg.start_soon(self._refresh_nodes)
        finally:
            self.replicator.close()

    async def _refresh_nodes(self) -> None:
        while True:
            try:
                self.known = await self.membership.nodes()
            except EtcdError:
                pass
            await asyncio.sleep(NODES_REFRESH)

    def nodes(self) -> list[dict]:
        """Every node etcd knows or the in-sync set names (B-CLUSTER-8)."""
        me = self.membership.me.name
        linked = self.replicator.nodes()
        names = sorted(set(self.known) | set(self.replicator.members) | set(linked) | {me})
        out = []
        for name in names:
            addresses = self.known.get(name)
            entry: dict[str, Any] = {"name": name,
                                     "running": name in self.known or name in linked
                                     or name == me}
            if name == me:
                entry.update(cluster_role="leader", in_sync=True, lag=0)
            elif name in linked:
                entry.update(linked[name])
            else:
                # not connected: its lag is unknown (left out)
                entry.update(cluster_role="joining", in_sync=name in self.replicator.members)
            if addresses is not None:
                entry.update(amqp_address=addresses.amqp,
                             management_address=addresses.management,
                             replication_address=addresses.replication)
            out.append(entry)
        return out


def step_down(reason: str = "the lease expired") -> None:
    """Start over as a fresh process that follows (same PID, same command line)."""
    log.warning("cluster: stepping down (%s); restarting as a follower", reason)
    logging.shutdown()
    os.execv(sys.executable, [sys.executable] + sys.orig_argv[1:])


def _advertised(settings: Settings) -> str:
    if settings.advertise_host:
        return settings.advertise_host
    if settings.host in ("", "0.0.0.0", "::"):
        return socket.gethostname()
    return settings.host


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


async def run_node(settings: Settings) -> None:
    """The whole life of a cluster node, until SIGTERM/SIGINT."""
    from mq.server import Server

    proxies = [(Proxy("amqp"), "amqp")]
    settings.port = await proxies[0][0].start(settings.host, settings.port)
    if settings.management_port >= 0:
        proxies.append((Proxy("http"), "management"))
        settings.management_port = await proxies[-1][0].start(
            settings.management_host or settings.host, settings.management_port)
    host = _advertised(settings)
    amqps = ""
    if settings.tls_cert and settings.tls_key:  # TLS ends at the leader: bytes relayed as is
        proxies.append((Proxy("amqps"), "amqps"))
        settings.tls_port = await proxies[-1][0].start(settings.host, settings.tls_port)
        amqps = f"{host}:{settings.tls_port}"
    if not settings.replication_port:
        settings.replication_port = _free_port(settings.host)
    me = Addresses(settings.node_name, f"{host}:{settings.port}",
                   f"{host}:{settings.management_port}", f"{host}:{settings.replication_port}",
                   amqps)
    etcd = Etcd([u.strip() for u in settings.cluster_etcd.split(",") if u.strip()])
    membership = Membership(etcd, settings.cluster_name, me, settings.cluster_lease_ttl)
    log.info("cluster: node %s of %s joining through %s", me.name, settings.cluster_name,
             ", ".join(etcd.endpoints))
    try:
        async with anyio.create_task_group() as tg:
            await membership.join()
            tg.start_soon(membership.keep_alive)
            following = Following(settings, membership, proxies)
            won = await _until_signal(following.run())
            await following.stop()
            for proxy, _ in proxies:
                await proxy.close()
            if won:
                await Server(settings, cluster=Leading(settings, membership)).serve()
            tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await membership.leave()
            await etcd.close()


async def _until_signal(work: Any) -> bool:
    """Run work; False if SIGTERM/SIGINT came first (then it is cancelled)."""
    task = asyncio.ensure_future(work)
    if threading.current_thread() is not threading.main_thread():
        await task
        return True
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    waiter = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        waiter.cancel()
    if task.done():
        task.result()
        return True
    log.info("cluster: shutting down")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return False
