"""Which kind of queue a declaration makes: a stream for x-queue-type "stream", else the
classic queue (quorum queues are classic queues that count deliveries)."""
from __future__ import annotations

from typing import Any

from mq.broker.queue import Queue, QueueHost
from mq.broker.stream import StreamQueue


def make_queue(host: QueueHost, name: str, durable: bool = False, exclusive_owner: Any = None,
               auto_delete: bool = False, arguments: dict | None = None) -> Queue:
    kind = StreamQueue if (arguments or {}).get("x-queue-type") == "stream" else Queue
    return kind(host, name, durable, exclusive_owner, auto_delete, arguments)
