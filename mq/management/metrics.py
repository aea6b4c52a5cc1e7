"""Prometheus metrics (text exposition format 0.0.4) with the names of RabbitMQ's
rabbitmq_prometheus plugin for what mq has."""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from mq.management.views import Views

# global counter name -> (Prometheus name, help)
GLOBAL_COUNTERS = {
    "publish": ("rabbitmq_global_messages_received_total",
                "Total number of messages received from publishers"),
    "deliver": ("rabbitmq_global_messages_delivered_consume_total",
                "Total number of messages delivered to consumers"),
    "get": ("rabbitmq_global_messages_delivered_get_total",
            "Total number of messages fetched with basic.get"),
    "deliver_get": ("rabbitmq_global_messages_delivered_total",
                    "Total number of messages delivered to consumers and basic.get"),
    "ack": ("rabbitmq_global_messages_acknowledged_total",
            "Total number of messages acknowledged by consumers"),
    "redeliver": ("rabbitmq_global_messages_redelivered_total",
                  "Total number of messages redelivered to consumers"),
}
QUEUE_GAUGES = {
    "messages_ready": ("rabbitmq_queue_messages_ready", "Messages ready to be delivered"),
    "messages_unacknowledged": ("rabbitmq_queue_messages_unacked",
                                "Messages delivered but not yet acknowledged"),
    "messages": ("rabbitmq_queue_messages", "Sum of ready and unacknowledged messages"),
}


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _family(name: str, kind: str, help_: str, samples: Iterable[tuple[str, int]]) -> list[str]:
    lines = [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]
    lines += [f"{name}{labels} {value}" for labels, value in samples]
    return lines


def render_metrics(views: Views) -> str:
    """Every metric, computed now from the broker's counters (no sampling needed)."""
    from mq.management.views import queue_counters, queue_levels

    connections = views.connections()
    queues = sorted(views.queues(), key=lambda q: (q.vhost, q.name))
    lines = []
    lines += _family("rabbitmq_connections", "gauge", "Connections currently open",
                     [("", len(connections))])
    lines += _family("rabbitmq_channels", "gauge", "Channels currently open",
                     [("", sum(len(c.channels) for c in connections))])
    lines += _family("rabbitmq_queues", "gauge", "Queues available", [("", len(queues))])
    lines += _family("rabbitmq_consumers", "gauge", "Consumers currently connected",
                     [("", sum(q.consumer_count for q in queues))])
    counters, _ = views.global_counts()
    for key, (name, help_) in GLOBAL_COUNTERS.items():
        lines += _family(name, "counter", help_, [("", counters[key])])
    labelled = [(f'{{vhost="{_label(q.vhost)}",queue="{_label(q.name)}"}}', q) for q in queues]
    levels = {id(q): queue_levels(q) for q in queues}
    for key, (name, help_) in QUEUE_GAUGES.items():
        lines += _family(name, "gauge", help_, [(lb, levels[id(q)][key]) for lb, q in labelled])
    lines += _family("rabbitmq_queue_consumers", "gauge", "Consumers on a queue",
                     [(lb, q.consumer_count) for lb, q in labelled])
    lines += _family("rabbitmq_queue_messages_published_total", "counter",
                     "Messages published into a queue",
                     [(lb, queue_counters(q)["publish"]) for lb, q in labelled])
    return "\n".join(lines) + "\n"
