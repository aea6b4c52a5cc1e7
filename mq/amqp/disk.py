"""The error a client gets when its change could not be written to disk (B-DUR-8)."""
from __future__ import annotations

from mq.broker.errors import AMQPError


class DiskWriteFailed(AMQPError):
    """B-DUR-8: what a method's answer needed on disk could not be written (disk full, I/O
    error). 541 INTERNAL_ERROR as RabbitMQ names a failure of its own, but on the channel
    only: the connection's other channels go on."""

    reply_code, name = 541, "INTERNAL_ERROR"


def disk_error(exc: BaseException) -> DiskWriteFailed:
    return DiskWriteFailed(f"disk write failed: {exc}")
