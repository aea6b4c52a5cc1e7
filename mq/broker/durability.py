"""Durable changes and the disk (B-DUR-8, B-DUR-9), the same for every front end that makes
them (AMQP methods in mq.amqp, the management API in mq.management): a durable declare,
delete, bind or unbind is answered only once what it wrote to the store is on disk; while
the store's writes fail, such a change is refused before anything changes; a write that
fails while the answer waits makes the answer the disk error. How a front end waits is its
own (an AMQP connection is held, an HTTP handler awaits), never on the event loop: it asks
when_durable() for the sequence seq_to_wait() gives.

The calls go in this order around a change:

    before = refuse_while_failing(store, durable)   # DiskWriteFailed: nothing changed
    ... the change (vhost methods write the store records) ...
    seq = seq_to_wait(store, before, durable)        # 0: answer now
    ... when_durable(store, callback, seq), answer from the callback ...

Front ends ask these functions (and mq.broker.publish.route() for a publish's confirm),
never the store's own counters: what is durable when is the broker's and the store's.
"""
from __future__ import annotations

from typing import Any

from mq.broker.errors import AMQPError
from mq.broker.exchange import Exchange


class DiskWriteFailed(AMQPError):
    """B-DUR-8: what a method's answer needed on disk could not be written (disk full, I/O
    error). Over AMQP 541 INTERNAL_ERROR as RabbitMQ names a failure of its own, but on the
    channel only: the connection's other channels go on. Over HTTP 500."""

    reply_code, name = 541, "INTERNAL_ERROR"


def disk_error(exc: BaseException) -> DiskWriteFailed:
    """The error a client gets, naming the disk's: 'disk write failed: [Errno 28] No space
    left on device'."""
    return DiskWriteFailed(f"disk write failed: {exc}")


def refuse_while_failing(store: Any, durable: bool) -> int:
    """Before a change: refuse a durable one (DiskWriteFailed) while the store's writes
    fail, so that nothing is changed. Returns the store's sequence now, for seq_to_wait()
    (0 without a store)."""
    if store is None:
        return 0
    if durable and store.failed is not None:
        raise disk_error(store.failed)
    return store.seq


def seq_to_wait(store: Any, before: int, durable: bool) -> int:
    """After a change: the store sequence its answer waits for, 0 when it may be answered
    now (it wrote nothing that is not on disk yet). A change that wrote nothing but names a
    durable object (a redeclare) waits for the last topology record, which may be its own,
    as RabbitMQ's declare-ok means. DiskWriteFailed when it would wait while writes fail."""
    if store is None:
        return 0
    target = store.seq if store.seq != before else store.topo_seq if durable else 0
    if target <= store.durable_seq:
        return 0
    if store.failed is not None:
        raise disk_error(store.failed)
    return target


def failing(store: Any) -> bool:
    """Whether the store's writes fail now (B-DUR-8)."""
    return store is not None and store.failed is not None


def when_durable(store: Any, callback: Any, seq: int) -> None:
    """callback(None) once the store's records up to seq are on disk, callback(error) if a
    write fails first (Store.when_durable); at once without a store."""
    if store is None:
        callback(None)
    else:
        store.when_durable(callback, seq)


def durable_binding(source: Any, destination: Any) -> bool:
    """Whether a binding from exchange source to destination is kept in the store: both
    ends are durable (a queue: one the store keeps, durable and not exclusive)."""
    if not source.durable:
        return False
    if isinstance(destination, Exchange):
        return destination.durable
    return bool(destination.store_qid)
