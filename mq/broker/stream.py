"""A stream (x-queue-type: stream, B-STREAM): an append-only log that consumers read by
offset without removing anything, one queue kind beside the classic queue.

Every message a stream takes is appended to its log (mq.store.streams) and confirmed once
durable, whatever its delivery mode. Each consumer has its own cursor, set by the consume
argument `x-stream-offset`; deliveries carry the header `x-stream-offset`; acks only give
credit (prefetch). Offsets can be kept by the server (LavinMQ's automatic offset tracking):
a consumer with a tag of its own and `x-stream-offset` given as null, or with
`x-stream-automatic-offset-tracking: true`, resumes after the last offset it acked, across
reconnects and restarts. An absent `x-stream-offset` means "next", as in RabbitMQ.
"""
from __future__ import annotations

import datetime
import os
import time
from typing import Any

from mq._core.message import Message
from mq._core.msgqueue import Entry
from mq.broker.errors import NotImplemented_, PreconditionFailed
from mq.broker.keptfile import KeptFile
from mq.broker.queue import Queue
from mq.broker.queue_args import interval_ms
from mq.broker.rawprops import HeaderStamp
from mq.store.streams import OFFSETS_FILE, Cursor, StreamLog

OFFSETS_SAVE_DELAY = 0.5        # seconds: acks within it are saved together
AGE_CHECK = 10.0                # seconds between x-max-age checks at most


class StreamQueue(Queue):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.counts_deliveries = True  # delivery_props adds x-stream-offset
        self.log: StreamLog | None = None
        self.readers: dict[Any, Cursor] = {}
        self.tracking: dict[Any, str] = {}   # consumers whose offsets are kept: their tags
        self.tracked: dict[str, int] = {}    # consumer tag -> the offset after its last ack
        self._inflight: dict[Entry, Any] = {}  # unacked deliveries of tracking consumers
        self._reached: dict[str, int] = {}     # tracking key -> the offset after the last
        #                                        delivered under it (since start)
        self._age_timer: Any = None
        self._offsets: KeptFile | None = None  # where tracked offsets are kept
        self._stamp = HeaderStamp("x-stream-offset")

    # ---- the log --------------------------------------------------------------------------

    def attach_store(self, store: Any, store_qid: int) -> None:
        self.store, self.store_qid = store, store_qid
        directory = os.path.join(store.directory, "streams", str(store_qid))
        s = self.settings
        self.log = StreamLog(store, directory, s.stream_segment_bytes, s.max_length_bytes,
                             s.max_age_ms)
        self.log.open()
        self.log.on_commit = self.dispatch
        store.watch(self.log)
        self._offsets = KeptFile(store, self.host.timers,
                                 os.path.relpath(os.path.join(directory, OFFSETS_FILE),
                                                 store.directory),
                                 lambda: self.tracked, OFFSETS_SAVE_DELAY)
        saved = self._offsets.load()
        self.tracked = {str(k): v for k, v in (saved or {}).items() if isinstance(v, int)}
        if s.max_age_ms:
            self._arm_age_check()

    def _arm_age_check(self) -> None:
        interval = min(AGE_CHECK, max(self.settings.max_age_ms / 10000, 0.1))
        self._age_timer = self.host.timers.call_at(time.time() + interval, self._age_check)

    def _age_check(self) -> None:
        if self.deleted or self.log is None:
            return
        self.log.retain()
        self._arm_age_check()

    @property
    def message_count(self) -> int:
        log = self.log
        return 0 if log is None else max(0, log.committed + 1 - log.first_offset)

    @property
    def message_bytes(self) -> int:
        return 0 if self.log is None else self.log.size

    def publish(self, msg: Message) -> bool:
        """Append to the log (the channel waits for the store before confirming)."""
        if self.log is None:
            return False
        self.log.append(msg.exchange, msg.routing_key, msg.props, msg.body)
        self.published += 1
        return True

    _publish = publish

    # ---- consumers ------------------------------------------------------------------------

    def check_consume(self, no_ack: bool, prefetch: int, global_prefetch: int,
                      arguments: dict) -> None:
        """What a stream consumer must have (RabbitMQ 3.10's refusals and texts)."""
        if no_ack:
            raise self._not_supported("automatic acknowledgement")
        if not prefetch:
            raise PreconditionFailed("consumer prefetch count is not set for 'queue "
                                     f"'{self.name}' in vhost '{self.vhost}''")
        if "x-priority" in arguments:
            raise PreconditionFailed(f"invalid arg 'x-priority' for queue '{self.name}' in "
                                     f"vhost '{self.vhost}' of queue type rabbit_stream_queue")
        if "x-stream-offset" in arguments:
            self._start_of(arguments["x-stream-offset"])

    def _not_supported(self, what: str) -> NotImplemented_:
        return NotImplemented_(f"{what} not supported by stream queues queue '{self.name}' "
                               f"in vhost '{self.vhost}'")

    def add_consumer(self, consumer: Any) -> None:
        arguments = consumer.arguments
        given = "x-stream-offset" in arguments
        spec = arguments.get("x-stream-offset") if given else "next"
        track = arguments.get("x-stream-automatic-offset-tracking") in (True, "true") \
            or (given and spec is None)
        self._reader(consumer, consumer.tag if track else None, spec)
        super().add_consumer(consumer)

    def remove_consumer(self, consumer: Any) -> None:
        self.detach_reader(consumer)
        super().remove_consumer(consumer)

    def attach_reader(self, consumer: Any, key: str, spec: Any) -> None:
        """A consumer reads this stream for a consumer group (mq.broker.superstream): its
        offsets are tracked under the group's name."""
        self._reader(consumer, key, spec)
        self.dispatch()

    def detach_reader(self, consumer: Any) -> None:
        self.readers.pop(consumer, None)
        if self.tracking.pop(consumer, None) is not None and self._offsets is not None \
                and self._offsets.pending:
            self._offsets.save()  # it goes: its offset is saved now, not in a moment

    def _reader(self, consumer: Any, key: str | None, spec: Any) -> None:
        """A cursor for consumer: after the last offset acked under key, if there is one,
        else where spec (x-stream-offset) says."""
        assert self.log is not None
        start = self.tracked.get(key) if key is not None else None
        if key is not None:
            self.tracking[consumer] = key
        self.readers[consumer] = Cursor(self.log, self._start_of(spec) if start is None
                                        else start)

    def _start_of(self, spec: Any) -> int:
        """The offset a consumer starts at, from x-stream-offset (406 for a bad one)."""
        log = self.log
        assert log is not None
        if spec is None or spec == "first":
            return log.first_offset
        if spec == "next":
            return log.next_offset
        if spec == "last":
            return max(log.first_offset, min(log.last_chunk, log.next_offset))
        if isinstance(spec, int) and not isinstance(spec, bool):
            return max(spec, log.first_offset)  # past the end: waits for it
        if isinstance(spec, datetime.datetime):
            if spec.tzinfo is None:
                spec = spec.replace(tzinfo=datetime.timezone.utc)
            return log.offset_at(int(spec.timestamp() * 1000))
        ago = interval_ms(spec) if isinstance(spec, str) else None
        if ago is not None:
            return log.offset_at(int(time.time() * 1000) - ago)
        kind = "longstr" if isinstance(spec, str) else type(spec).__name__
        raise PreconditionFailed(f"invalid arg 'x-stream-offset' for queue '{self.name}' in "
                                 f"vhost '{self.vhost}': {{invalid_stream_offset_arg,"
                                 f'{{{kind},<<"{spec}">>}}}}')

    def dispatch(self, now: float = 0.0) -> None:
        """Each consumer with room gets the next committed records after its offset."""
        inflight, reached = self._inflight, self._reached
        for consumer, cursor in list(self.readers.items()):
            key = self.tracking.get(consumer)
            while consumer.has_room():
                record = cursor.next()
                if record is None:
                    break
                entry = Entry(Message(record.exchange, record.routing_key, record.props,
                                      record.body), record.offset, 0, 0.0)
                if key is not None:
                    inflight[entry] = consumer
                    # Delivered under this key before (to another member, not acked):
                    # redelivered, as a requeued message is.
                    entry.redelivered = record.offset < reached.get(key, 0)
                    reached[key] = max(reached.get(key, 0), record.offset + 1)
                consumer.hand(entry, self)
                self.delivered += 1

    def delivery_props(self, entry: Entry) -> bytes:
        return self._stamp(entry.msg.props, entry.seq)

    def details(self) -> dict[str, Any]:
        """For the management API (LavinMQ's names where it has them): the log's extent and
        size, and where each consumer and each tracked consumer tag is."""
        log = self.log
        if log is None:
            return {}
        last = log.committed
        readers = {c.tag: cursor.offset for c, cursor in self.readers.items()}
        return {
            "first_offset": log.first_offset, "last_offset": last,
            "stream_last_offset": last, "stream_bytesize": log.size,
            "segments": len(log.segments),
            "consumer_reading_positions": readers,
            "consumer_offsets": [{"consumer_tag": tag, "offset": offset,
                                  "lag": max(0, last + 1 - offset)}
                                 for tag, offset in sorted(readers.items())],
            "tracked_offsets": [{"consumer_tag": tag, "offset": offset,
                                 "lag": max(0, last + 1 - offset)}
                                for tag, offset in sorted(self.tracked.items())],
        }

    # ---- settling: acks give credit and move tracked offsets -------------------------------

    def settle(self, entries: list[Entry]) -> None:
        self.acked += len(entries)
        inflight = self._inflight
        if not inflight:
            return
        for entry in entries:
            consumer = inflight.pop(entry, None)
            tag = self.tracking.get(consumer) if consumer is not None else None
            if tag is not None and entry.seq + 1 > self.tracked.get(tag, 0):
                self.tracked[tag] = entry.seq + 1
                self._offsets.later()

    def requeue(self, entries: Any) -> None:
        """A closed channel's unacked deliveries: the consumer is gone with its cursor."""
        for entry in entries:
            self._inflight.pop(entry, None)

    def check_negative(self) -> None:
        raise self._not_supported("basic.nack and basic.reject")

    def get(self, no_ack: bool) -> Entry | None:
        raise self._not_supported("basic.get")

    def purge(self) -> int:
        raise self._not_supported("queue.purge")

    def delete(self) -> int:
        count = self.message_count
        if self._age_timer is not None:
            self._age_timer.cancel()
        self.readers.clear()
        self.tracking.clear()
        self._inflight.clear()
        if self.log is not None:
            self.store.unwatch(self.log)
            self.log.delete()
            self.log = None
            self._offsets.remove()
        super().delete()
        return count
