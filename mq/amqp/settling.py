"""Settling deliveries on a channel: ack, nack, reject, recover, and transactions (which
defer publishes and settles to commit). Mixed into Channel: what is unsettled is the
channel's Deliveries and the transaction flag ChannelCore's (mq/_core/channel.pxd); its own
state is the transaction's deferred work (_tx_publishes, _tx_settles, set by Channel)."""
from __future__ import annotations

from typing import Any, Iterable

from pamqp import commands as spec

from mq._core.msgqueue import Entry
from mq.broker.durability import failing, refuse_while_failing
from mq.broker.errors import NotImplemented_, PreconditionFailed
from mq.broker.queue import Queue


class Settling:
    """basic.ack/nack/reject/recover and tx.select/commit/rollback, for Channel. What is
    unsettled, and the prefetch counts, are the channel's Deliveries (mq._core.delivery)."""

    def _taken(self, tag: int, multiple: bool) -> list[tuple]:
        """Take out the (tag, entry, queue, consumer) records an ack/nack/reject names
        (still counted against prefetch); 406 if the tag is unknown."""
        tag &= 0xFFFFFFFFFFFFFFFF  # pamqp reads the tag as signed: a tag past 2**63 < 0
        taken = self.deliveries.take(tag, multiple)
        if taken is None:
            raise PreconditionFailed(f"unknown delivery tag {tag}")
        return taken

    def _release_taken(self, taken: list[tuple]) -> list[tuple]:
        """Settled records no longer count against their consumer's and channel's prefetch."""
        self.deliveries.release(taken)
        return taken

    def _ack(self, tag: int, multiple: bool) -> None:
        """What ChannelCore.ack_assembled (every basic.ack) leaves: an ack in a
        transaction, or one naming an unknown tag (406)."""
        if not self.tx:
            raise PreconditionFailed(f"unknown delivery tag {tag}")
        self._tx_defer(tag, multiple, None)

    def _reject(self, m: Any) -> None:
        if self.tx:
            self._tx_defer(m.delivery_tag, False, m.requeue)
            return
        self._settle_negative(self._release_taken(self._taken(m.delivery_tag, False)),
                              m.requeue)

    def _nack(self, m: Any) -> None:
        if self.tx:
            self._tx_defer(m.delivery_tag, m.multiple, m.requeue)
            return
        self._settle_negative(self._release_taken(self._taken(m.delivery_tag, m.multiple)),
                              m.requeue)

    def _settle_negative(self, taken: list[tuple], requeue: bool) -> None:
        for queue in _by_queue(taken):
            queue.check_negative()  # a stream refuses (540, as RabbitMQ 3.10)
        if requeue:
            self._requeue_entries(taken)
        else:
            for queue, entries in _by_queue(taken).items():
                queue.reject(entries)
        self._refill(taken)

    def _recover(self, m: Any) -> None:
        if not m.requeue:
            raise NotImplemented_("requeue=false")
        # Deliveries whose settle waits in a transaction still count against prefetch.
        self._requeue_entries(self._release_taken(self.deliveries.take_all()))
        if m.name == "Basic.Recover":
            self.send(spec.Basic.RecoverOk())

    def _requeue_entries(self, taken: list[tuple]) -> None:
        for queue, entries in _by_queue(taken).items():
            queue.requeue(entries)

    def _refill(self, taken: list[tuple]) -> None:
        """Room was freed: let the queues of the affected consumers deliver again."""
        if self.deliveries.limit:
            self.resume_deliveries()
            return
        pending = self.conn.pending_dispatch
        for _, _, _, consumer in taken:
            if consumer is not None:
                pending[consumer.queue] = None

    # ---- transactions -------------------------------------------------------------------

    def _tx_select(self, m: Any) -> None:
        if self.confirm:
            raise PreconditionFailed("cannot switch from confirm to tx mode")
        self.tx = True
        self.send(spec.Tx.SelectOk())

    def _tx_defer(self, tag: int, multiple: bool, requeue: bool | None) -> None:
        """In tx mode an ack/nack/reject takes its deliveries out of unacked now (settling
        one twice is 406, as in RabbitMQ) and applies at commit."""
        self._tx_settles.append((self._taken(tag, multiple), requeue))

    def _tx_commit(self, m: Any) -> None:
        """commit-ok once the transaction's persistent work is on disk, as in RabbitMQ
        (B-DUR-8): while the store's writes fail, a commit with persistent work fails with
        541 and the disk error and changes nothing (the channel closes: its publishes are
        dropped, its settles requeued); if a write fails while the commit waits, it fails
        the same way, but what it did stays done (an unknown outcome, as any failed commit:
        its messages may still be delivered)."""
        if not self.tx:
            raise PreconditionFailed("channel is not transactional")
        store = self.store
        logged_before = refuse_while_failing(store, failing(store) and self._tx_writes_store())
        publishes, settles = self._tx_publishes, self._tx_settles
        self._tx_publishes, self._tx_settles = [], []
        for exchange, msg, mandatory in publishes:
            self._route(exchange, msg, mandatory)
        for taken, requeue in settles:
            self._release_taken(taken)
            if requeue is None:
                for queue, entries in _by_queue(taken).items():
                    queue.settle(entries)
                self._refill(taken)
            else:
                self._settle_negative(taken, requeue)
        self._answer_durable(logged_before, False, lambda: self.send(spec.Tx.CommitOk()))

    def _tx_writes_store(self) -> bool:
        """The transaction holds a persistent publish or settles a stored message."""
        if any(msg.delivery_mode == 2 for _, msg, _ in self._tx_publishes):
            return True
        return any(entry.msg.store_id and queue.store_qid
                   for taken, _ in self._tx_settles for _, entry, queue, _ in taken)

    def _tx_rollback(self, m: Any) -> None:
        if not self.tx:
            raise PreconditionFailed("channel is not transactional")
        for taken, _ in self._tx_settles:
            self.deliveries.restore(taken)  # rolled back settles leave them unsettled
        self._tx_publishes, self._tx_settles = [], []
        self.send(spec.Tx.RollbackOk())


def _by_queue(taken: Iterable[tuple]) -> dict[Queue, list[Entry]]:
    """(tag, entry, queue, consumer) records -> each queue's entries, in tag order."""
    grouped: dict[Queue, list[Entry]] = {}
    for _, entry, queue, _ in taken:
        grouped.setdefault(queue, []).append(entry)
    return grouped
