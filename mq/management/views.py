"""The broker's objects as JSON, in the shape of RabbitMQ's management API (the fields it
has that mean something here), and the counters behind the rates."""
from __future__ import annotations

import base64
import datetime
import decimal
import hashlib
import json
import os
import platform
import resource
import time
from collections import Counter
from typing import TYPE_CHECKING, Any, Iterator

import mq
from mq.broker.delayed import DelayedExchange
from mq.broker.exchange import Binding, Exchange
from mq.broker.queue import Queue
from mq.broker.stream import StreamQueue
from mq.broker.vhost import VirtualHost
from mq.management.stats import Sampler

if TYPE_CHECKING:
    from mq.amqp.channel import Channel
    from mq.amqp.connection import Connection
    from mq.server import Server

NODE = "mq@" + platform.node()
RABBITMQ_VERSION = "3.10.8"  # the RabbitMQ whose API shape (and definitions) we follow
# Counters kept by the broker, and the message_stats names RabbitMQ gives them.
QUEUE_COUNTERS = ("publish", "deliver", "get", "deliver_get", "ack", "redeliver")
QUEUE_LEVELS = ("messages", "messages_ready", "messages_unacknowledged")


def jsonable(value: Any) -> Any:
    """AMQP field values (bytes, timestamps, decimals, nested tables) as JSON values."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, datetime.datetime):
        return int(value.timestamp())
    if isinstance(value, decimal.Decimal):
        return float(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def with_rates(counts: dict[str, int], rates: dict[str, float]) -> dict[str, Any]:
    """RabbitMQ's pairs: `name: count` and `name_details: {rate: per second}`."""
    out: dict[str, Any] = {}
    for name, value in counts.items():
        out[name] = value
        out[name + "_details"] = {"rate": round(rates.get(name, 0.0), 1)}
    return out


def queue_counters(q: Queue) -> dict[str, int]:
    return {"publish": q.published, "deliver": q.delivered, "get": q.got,
            "deliver_get": q.delivered + q.got, "ack": q.acked, "redeliver": q.redelivered}


def queue_levels(q: Queue) -> dict[str, int]:
    return {"messages": q.message_count + q.unacked, "messages_ready": q.message_count,
            "messages_unacknowledged": q.unacked}


def properties_key(binding: Binding) -> str:
    """How RabbitMQ names a binding in a URL: its key, plus a digest of its arguments."""
    key = binding.routing_key
    if not binding.arguments:
        return key
    digest = hashlib.sha1(json.dumps(jsonable(binding.arguments), sort_keys=True).encode())
    return key + "~" + base64.urlsafe_b64encode(digest.digest()[:9]).decode()


def _rss() -> int:
    """Resident memory in bytes (Linux), else the peak the OS reports."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _open_files() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


def channel_name(ch: Channel) -> str:
    return f"{ch.conn.name} ({ch.number})"


class Views:
    """Reads the server's broker and connections; never changes them."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.broker = server.broker
        self.sampler = Sampler()
        self.started = time.time()

    # ---- what there is ------------------------------------------------------------------

    def vhosts(self, names: set[str] | None = None) -> list[VirtualHost]:
        """All vhosts, or those named (a management user sees only their own)."""
        return [v for n, v in self.broker.vhosts.items() if names is None or n in names]

    def queues(self, names: set[str] | None = None) -> Iterator[Queue]:
        for vhost in self.vhosts(names):
            yield from vhost.queues.values()

    def connections(self) -> list[Connection]:
        return sorted((c for c in self.server.connections if c.vhost is not None),
                      key=lambda c: c.name)

    def channels(self) -> Iterator[Channel]:
        for conn in self.connections():
            for number in sorted(conn.channels):
                yield conn.channels[number]

    # ---- sampling ---------------------------------------------------------------------

    def sample(self) -> None:
        """Feed every counter to the sampler (every SAMPLE_INTERVAL seconds)."""
        now = time.monotonic()

        def objects() -> Iterator[tuple[str, Any, dict[str, int], dict[str, int]]]:
            for q in self.queues():
                yield "queue", q, queue_counters(q), queue_levels(q)
            for conn in self.connections():
                yield "connection", conn, self._octets(conn), {}
                for ch in conn.channels.values():
                    yield "channel", ch, {"publish": ch.published}, {}

        self.sampler.sample(now, list(objects()))
        counters, levels = self.global_counts()
        self.sampler.sample_named(now, "overview", {**counters, **levels})

    def global_counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """Totals over the whole broker, counting queues and channels that are gone.
        `publish` is what clients published (as in RabbitMQ's overview), the rest is what
        queues did."""
        counters = Counter(self.sampler.retired_counts("queue"))
        levels: Counter = Counter({name: 0 for name in QUEUE_LEVELS})
        for q in self.queues():
            counters.update(queue_counters(q))
            levels.update(queue_levels(q))
        counters["publish"] = self.sampler.retired_counts("channel")["publish"] + sum(
            ch.published for ch in self.channels())
        return {k: counters[k] for k in QUEUE_COUNTERS}, dict(levels)

    @staticmethod
    def _octets(conn: Connection) -> dict[str, int]:
        transport = conn.transport
        return {"recv_oct": getattr(transport, "recv_oct", 0),
                "send_oct": getattr(transport, "send_oct", 0)}

    # ---- objects --------------------------------------------------------------------------

    def queue(self, q: Queue) -> dict[str, Any]:
        rates = self.sampler.rates(q)
        view = {
            "name": q.name, "vhost": q.vhost, "durable": q.durable,
            "auto_delete": q.auto_delete, "exclusive": q.exclusive,
            "arguments": jsonable(q.arguments), "node": NODE, "state": "running",
            "type": q.settings.queue_type, "consumers": q.consumer_count,
            "policy": q.policy.name if q.policy else None,
            "effective_policy_definition": q.policy.definition if q.policy else {},
            "message_bytes_ready": q.ready.bytes,
            "exclusive_consumer_tag": next((c.tag for c in q.consumers if c.exclusive), None),
        }
        view.update(with_rates(queue_levels(q), rates))
        view["message_stats"] = with_rates(queue_counters(q), rates)
        if isinstance(q, StreamQueue):
            view.update(q.details())
        return view

    def exchange(self, ex: Exchange) -> dict[str, Any]:
        view = {"name": ex.name, "vhost": ex.vhost, "type": ex.type, "durable": ex.durable,
                "auto_delete": ex.auto_delete, "internal": ex.internal,
                "arguments": jsonable(ex.arguments), "user_who_performed_action": ""}
        if ex.policy is not None:  # RabbitMQ shows the key only when one applies
            view["policy"] = ex.policy.name
        if isinstance(ex, DelayedExchange):  # B-DELAY-4, the plugin's field
            view["messages_delayed"] = ex.messages_delayed
        return view

    def binding(self, vhost: str, b: Binding) -> dict[str, Any]:
        return {"source": b.source.name, "vhost": vhost, "destination": b.destination.name,
                "destination_type": "exchange" if isinstance(b.destination, Exchange)
                else "queue",
                "routing_key": b.routing_key, "arguments": jsonable(b.arguments),
                "properties_key": properties_key(b)}

    @staticmethod
    def default_binding(q: Queue) -> dict[str, Any]:
        """The implicit binding of every queue to the default exchange, by its name."""
        return {"source": "", "vhost": q.vhost, "destination": q.name,
                "destination_type": "queue", "routing_key": q.name, "arguments": {},
                "properties_key": q.name}

    def bindings(self, vhost: VirtualHost) -> list[dict[str, Any]]:
        out = [self.default_binding(q) for q in vhost.queues.values()]
        for ex in vhost.exchanges.values():
            out.extend(self.binding(vhost.name, b) for b in ex.bindings.values())
        return out

    def connection(self, conn: Connection) -> dict[str, Any]:
        transport = conn.transport
        sock = getattr(getattr(transport, "transport", None), "get_extra_info", None)
        local = (sock("sockname") if sock else None) or ("", 0)
        ssl = bool(sock and sock("ssl_object"))
        view = {
            "name": conn.name, "node": NODE, "type": "network", "protocol": "AMQP 0-9-1",
            "state": conn.reading_state() if conn.state == "open" else conn.state,
            "user": conn.user.name, "vhost": conn.vhost.name,
            "peer_host": conn.peer[0], "peer_port": conn.peer[1],
            "host": local[0], "port": local[1], "ssl": ssl,
            "channels": len(conn.channels), "channel_max": conn.channel_max,
            "frame_max": conn.frame_max, "timeout": conn.heartbeat,
            "client_properties": jsonable(conn.client_properties),
            "connected_at": int(getattr(transport, "connected_at", self.started) * 1000),
            "user_who_performed_action": conn.user.name,
        }
        view.update(with_rates(self._octets(conn), self.sampler.rates(conn)))
        return view

    def channel(self, ch: Channel) -> dict[str, Any]:
        conn = ch.conn
        return {
            "name": channel_name(ch), "number": ch.number, "node": NODE,
            "connection_details": {"name": conn.name, "peer_host": conn.peer[0],
                                   "peer_port": conn.peer[1]},
            "user": conn.user.name, "vhost": conn.vhost.name,
            "state": "running" if ch.state == "open" else ch.state,
            "consumer_count": len(ch.consumers),
            "messages_unacknowledged": len(ch.deliveries),
            "messages_unconfirmed": sum(1 for e in ch.unconfirmed if e[1] is None),
            "prefetch_count": ch.prefetch, "global_prefetch_count": ch.global_prefetch,
            "confirm": ch.confirm, "transactional": ch.tx,
            "message_stats": with_rates({"publish": ch.published}, self.sampler.rates(ch)),
        }

    def consumers(self, vhost: VirtualHost) -> list[dict[str, Any]]:
        out = []
        for q in vhost.queues.values():
            for c in q.consumers:
                ch = c.channel
                out.append({
                    "consumer_tag": c.tag, "queue": {"name": q.name, "vhost": q.vhost},
                    "channel_details": {"name": channel_name(ch), "number": ch.number,
                                        "connection_name": ch.conn.name, "node": NODE,
                                        "peer_host": ch.conn.peer[0],
                                        "peer_port": ch.conn.peer[1],
                                        "user": ch.conn.user.name},
                    "ack_required": not c.no_ack, "exclusive": c.exclusive,
                    "prefetch_count": c.prefetch, "arguments": jsonable(c.arguments),
                    "active": True, "activity_status": "up",
                })
        return out

    def vhost(self, vhost: VirtualHost) -> dict[str, Any]:
        """Totals of its queues; rates are the sums of theirs."""
        levels: Counter = Counter({name: 0 for name in QUEUE_LEVELS})
        counters: Counter = Counter({name: 0 for name in QUEUE_COUNTERS})
        rates: Counter = Counter()
        for q in vhost.queues.values():
            levels.update(queue_levels(q))
            counters.update(queue_counters(q))
            rates.update(self.sampler.rates(q))
        view = {"name": vhost.name, "description": "", "tags": [],
                "metadata": {"description": "", "tags": []}, "tracing": False,
                "cluster_state": {NODE: "running"},
                "message_stats": with_rates(dict(counters), rates)}
        view.update(with_rates(dict(levels), rates))
        return view

    def node(self) -> dict[str, Any]:
        """The one node, with what rabbitmqadmin's `list nodes` shows."""
        return {"name": NODE, "type": "disc", "running": True, "os_pid": str(os.getpid()),
                "mem_used": _rss(), "fd_used": _open_files(), "processors": os.cpu_count(),
                "uptime": int((time.time() - self.started) * 1000), "partitions": []}

    def nodes(self) -> list[dict[str, Any]]:
        """/api/nodes (B-CLUSTER-8): every node with its cluster role, whether it is in
        sync and its replication lag (bytes of the stream it has not acknowledged). A single
        node leads itself. In a cluster (`server.cluster`, set by mq.cluster) the local node
        (the leader: followers relay the API to it) has node()'s fields as well; the others
        have their cluster fields and what RabbitMQ's clients of the API expect."""
        settings = self.server.settings
        cluster = getattr(self.server, "cluster", None)
        if cluster is None:
            return [{**self.node(), "cluster_role": "leader", "in_sync": True, "lag": 0,
                     "amqp_address": f"{settings.host}:{self.server.port}",
                     "management_address":
                         f"{settings.management_host or settings.host}:"
                         f"{self.server.management_port}"}]
        entries = [dict(e) for e in cluster.nodes()]
        local = next((e for e in entries if e.get("name") == settings.node_name), None) \
            or next((e for e in entries if e.get("cluster_role") == "leader"), None)
        out = []
        for entry in entries:
            if entry is local:
                out.append({**self.node(), **entry})
            else:
                out.append({"type": "disc", **entry})
        return out

    def overview(self, names: set[str] | None) -> dict[str, Any]:
        counters, levels = self.global_counts()
        rates = self.sampler.named_rates("overview")
        server = self.server
        listeners = [{"node": NODE, "protocol": "amqp", "ip_address": server.settings.host,
                      "port": server.port}]
        if server.settings.tls_cert and server.settings.tls_key:
            listeners.append({"node": NODE, "protocol": "amqp/ssl",
                              "ip_address": server.settings.host, "port": server.tls_port})
        listeners.append({"node": NODE, "protocol": "http", "ip_address":
                          server.settings.management_host or server.settings.host,
                          "port": server.management_port})
        channels = sum(len(c.channels) for c in self.connections())
        return {
            "management_version": mq.__version__, "rates_mode": "basic",
            "product_name": "mq", "product_version": mq.__version__,
            "rabbitmq_version": RABBITMQ_VERSION, "cluster_name": NODE, "node": NODE,
            "python_version": platform.python_version(),
            "exchange_types": [{"name": t, "description": "", "enabled": True}
                               for t in ("direct", "fanout", "headers", "topic",
                                         "x-consistent-hash")],
            "message_stats": with_rates(counters, rates),
            "queue_totals": with_rates(levels, rates),
            "object_totals": {
                "connections": len(self.connections()), "channels": channels,
                "exchanges": sum(len(v.exchanges) for v in self.vhosts(names)),
                "queues": sum(len(v.queues) for v in self.vhosts(names)),
                "consumers": sum(q.consumer_count for q in self.queues(names)),
            },
            "statistics_db_event_queue": 0, "listeners": listeners,
            "contexts": [{"node": NODE, "description": "mq management", "path": "/",
                          "port": str(server.management_port)}],
            "uptime": int((time.time() - self.started) * 1000),
        }
