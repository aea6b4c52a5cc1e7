"""The Celery app the celery driver's worker runs: broker and queue come from the environment."""
from __future__ import annotations

import os

from celery import Celery

app = Celery("interop", broker=os.environ.get("INTEROP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
             backend="rpc://")
app.conf.update(
    task_default_queue=os.environ.get("INTEROP_QUEUE", "interop.celery"),
    task_acks_late=True,             # manual acks after the task ran
    worker_prefetch_multiplier=1,    # basic.qos prefetch = concurrency
    broker_connection_retry_on_startup=True,
    broker_connection_timeout=15,
    result_expires=60,
)


@app.task
def double(x: int) -> int:
    return x * 2


@app.task
def fail() -> None:
    raise ValueError("raised on purpose")
