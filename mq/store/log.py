"""The message store: an append-only log of checksummed records in segment files.

Writers (the event loop) append encoded records to an in-memory batch; one flusher thread
writes each batch and fsyncs it, so many publishes share one fsync (group commit), and then
tells the loop the highest durable sequence number.

Every record is either live (part of the current state) or dead. The index below knows
where each live record is (a location: segment number << 32 | offset) and, per segment, how
many live records and bytes it holds. A segment whose records are all dead is deleted; a
segment with few live ones is compacted: its records are read back, those the index still
points at are copied to the head, and the segment is deleted.
Deleting records is done with tombstones (ACK, DELETE) that stay live only while the record
they cancel still exists in an older segment: the tombstone is "pinned" by that segment.

Recovery replays every segment in order. Replay does not depend on record order for
correctness (ids are never reused, queue order is message-id order), so compaction may copy
records forward freely. The first bad checksum or short record ends the log: that segment
is cut there and later ones are removed, and the log says so.
"""
from __future__ import annotations

import fcntl
import logging
import os
import pickle
import threading
from dataclasses import dataclass, field
from typing import Any

from mq._core import records as R
from mq._core.message import Message

log = logging.getLogger("mq.store")

FORMAT = 1
FORMAT_FILE = "format"
DEFAULT_SEGMENT_SIZE = 32 * 1024 * 1024
# A head segment that is nearly all dead is sealed early (and so compacted), so that a
# drained queue returns to (almost) no disk use without waiting for the segment to fill:
# at this size when the log is idle, at the larger one while records keep coming (fewer
# segment files and copies under load).
ROLL_HEAD_IDLE = 64 * 1024
ROLL_HEAD_BUSY = 4 * 1024 * 1024
ROLL_HEAD_RATIO = 1 / 16
COMPACT_RATIO = 0.25  # compact a sealed segment when less than this share of it is live

MSG, ENQ, DLV, ACK, DELETE = R.MSG, R.ENQ, R.DLV, R.ACK, R.DELETE  # ENQ..ACK: 2..4

# Framed sizes of the fixed-size records.
ENQ_SIZE = R.HEADER_SIZE + 25
REF_SIZE = R.HEADER_SIZE + 17   # DLV, ACK


class StoreError(Exception):
    """The data directory cannot be used (newer format, locked by another broker)."""


class Segment:
    __slots__ = ("number", "path", "fd", "rfd", "size", "flushed", "live_count", "live_bytes",
                 "tombs", "pins", "last_seq", "synced")

    def __init__(self, number: int, path: str, size: int = 0) -> None:
        self.number = number
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.rfd = -1               # opened when a paged-out message is read back
        self.size = size
        self.flushed = size         # bytes the flusher has written (readable with pread)
        self.live_count = 0
        self.live_bytes = 0
        self.tombs: dict[int, tuple[int, Tomb]] = {}  # its live tombstones: offset -> (size, tomb)
        self.pins: list[Tomb] = []  # tombstones elsewhere that cancel dead records here
        self.last_seq = 0           # the append sequence of its last record
        self.synced = size > 0      # its directory entry is durable


class Tomb:
    """A live tombstone (ACK or DELETE record) and where it currently is."""

    __slots__ = ("seg", "off")

    def __init__(self, seg: Segment, off: int) -> None:
        self.seg: Segment | None = seg
        self.off = off


@dataclass
class RecoveredQueue:
    vhost: str
    name: str
    auto_delete: bool
    arguments: dict
    store_qid: int
    # (message, absolute expiry or 0.0, redelivered), in queue order
    messages: list[tuple[Message, float, bool]] = field(default_factory=list)


@dataclass
class Recovered:
    """Durable state as found on disk, for the broker to rebuild itself from."""

    exchanges: list[tuple[str, str, str, bool, bool, dict]] = field(default_factory=list)
    queues: list[RecoveredQueue] = field(default_factory=list)
    # (vhost, source, destination is an exchange, destination, routing key, arguments)
    bindings: list[tuple[str, str, bool, str, str, dict]] = field(default_factory=list)
    damaged: str | None = None  # what was cut off, if anything


def _loc(seg: Segment, off: int) -> int:
    return (seg.number << 32) | off


def _args_bytes(arguments: dict | None) -> bytes:
    return pickle.dumps(dict(sorted((arguments or {}).items())), protocol=4)


class Store:
    """The log in `directory`. Call open() (returns what was recovered), then start(loop)
    for the background flusher, or sync() to flush synchronously (tests, tools)."""

    def __init__(self, directory: str, segment_size: int = DEFAULT_SEGMENT_SIZE,
                 page_budget: int = 0) -> None:
        self.directory = directory
        self.segment_size = segment_size
        # The queues' memory budget: when set, replay leaves bodies on disk and the queues
        # read back those they keep in memory (read_message); 0: bodies come with replay.
        self.page_budget = page_budget
        self.seq = 0           # sequence of the last appended record
        self.durable_seq = 0   # every record up to this one is on disk (fsynced)
        self.failed: BaseException | None = None
        self.waiters: set[Any] = set()  # objects with store_durable(seq) -> still waiting
        self._segments: dict[int, Segment] = {}
        self._head: Segment | None = None
        self._next_id = 1
        # msg id -> location << 32 | record size: one int per message, as a 1M backlog has a
        # million of them; a message in more than one queue also counts them in _shared.
        self._msgs: dict[int, int] = {}
        self._shared: dict[int, int] = {}   # msg id -> queues holding it, when more than 1
        self._queues: dict[int, dict[int, int]] = {}  # qid -> msg id -> its ENQ location
        self._dlvs: dict[int, dict[int, int]] = {}    # qid -> msg id -> its DLV location
        self._topo: dict[int, tuple[int, int, tuple]] = {}  # object id -> (location, size, key)
        self._ids: dict[tuple, int] = {}    # topology key -> object id
        self._dirty: set[Segment] = set()
        self._chunks: list[tuple[Segment, bytearray]] = []
        self._unlinks: list[Segment] = []
        lock = threading.Lock()
        self._cond = threading.Condition(lock)   # the flusher waits here for work
        self._done = threading.Condition(lock)   # topology changes wait here for the disk
        self._written_seq = 0
        self._thread: threading.Thread | None = None
        self._closing = False
        self._loop: Any = None
        self._lock_fd: int | None = None

    # ---- opening ------------------------------------------------------------------------

    def open(self) -> Recovered:
        os.makedirs(self.directory, exist_ok=True)
        self._check_format()
        self._lock()
        seg_dir = os.path.join(self.directory, "log")
        os.makedirs(seg_dir, exist_ok=True)
        numbers = sorted(int(n[:-4]) for n in os.listdir(seg_dir)
                         if n.endswith(".seg") and n[:-4].isdigit())
        recovered = self._replay(numbers)
        last = max(self._segments, default=0)
        if last and self._segments[last].size < self.segment_size:
            self._head = self._segments[last]
        else:
            self._head = self._new_segment(last + 1)
        return recovered

    def _check_format(self) -> None:
        path = os.path.join(self.directory, FORMAT_FILE)
        try:
            with open(path) as fh:
                text = fh.read().strip()
        except FileNotFoundError:
            tmp = path + ".tmp"
            with open(tmp, "w") as fh:
                fh.write(f"mq-data-format {FORMAT}\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
            return
        parts = text.split()
        if len(parts) != 2 or parts[0] != "mq-data-format" or not parts[1].isdigit():
            raise StoreError(f"{path} is not an mq format file (found {text[:40]!r})")
        if int(parts[1]) > FORMAT:
            raise StoreError(f"data directory {self.directory} has format {parts[1]}, written by "
                             f"a newer mq; this mq reads format {FORMAT} and older")

    def _lock(self) -> None:
        self._lock_fd = os.open(os.path.join(self.directory, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise StoreError(f"data directory {self.directory} is in use by another mq") from None

    def _seg_path(self, number: int) -> str:
        return os.path.join(self.directory, "log", f"{number:08d}.seg")

    def _new_segment(self, number: int) -> Segment:
        seg = Segment(number, self._seg_path(number))
        self._segments[number] = seg
        return seg

    # ---- recovery -----------------------------------------------------------------------

    def _replay(self, numbers: list[int]) -> Recovered:
        msgs: dict[int, tuple] = {}      # id -> (seg, off, size, fields)
        enqs: dict[int, dict[int, list]] = {}
        dlvs: dict[tuple[int, int], tuple] = {}
        topo: dict[int, tuple] = {}      # id -> (seg, off, size, fields)
        tombs: list[tuple[Segment, int, int, Segment]] = []  # (seg, off, size, pinned by)
        recovered = Recovered()
        max_id = 0
        for i, number in enumerate(numbers):
            path = self._seg_path(number)
            with open(path, "rb") as fh:
                data = fh.read()
            # With a memory budget, bodies stay on disk: queues get stubs and read them back
            # on delivery, so a big backlog does not fill memory at start.
            entries, end, error = R.scan(data, 0, not self.page_budget)
            length = len(data)
            del data
            seg = Segment(number, path, end)
            self._segments[number] = seg
            for off, size, f in entries:
                rtype = f[0]
                if f[1] > max_id:  # ids are never reused, whatever record names them
                    max_id = f[1]
                if rtype == MSG:
                    msgs[f[1]] = (seg, off, size, f)
                    continue
                if ENQ <= rtype <= ACK and f[2] > max_id:
                    max_id = f[2]
                if rtype == ENQ:
                    enqs.setdefault(f[1], {})[f[2]] = [seg, off, size, f[3]]
                elif rtype == DLV:
                    dlvs[(f[1], f[2])] = (seg, off, size)
                elif rtype == ACK:
                    enq = enqs.get(f[1], {}).pop(f[2], None)
                    if enq is not None and enq[0] is not seg:
                        tombs.append((seg, off, size, enq[0]))
                elif rtype == DELETE:
                    put = topo.pop(f[1], None)
                    if put is not None and put[0] is not seg:
                        tombs.append((seg, off, size, put[0]))
                else:
                    topo[f[1]] = (seg, off, size, f)
            if error is not None:
                cut = length - end
                recovered.damaged = (f"segment {path}: {error} at offset {end}; "
                                     f"cut off {cut} bytes")
                log.warning("store: damaged tail in %s: %s at offset %d; cutting off %d bytes "
                            "and keeping the %d records before it", path, error, end, cut,
                            len(entries))
                os.truncate(path, end)
                for later in numbers[i + 1:]:
                    log.warning("store: removing segment %s after the damage",
                                self._seg_path(later))
                    os.unlink(self._seg_path(later))
                break
        self._next_id = max_id + 1
        # Topology.
        queue_ids: set[int] = set()
        for obj_id, (seg, off, size, f) in sorted(topo.items()):
            rtype, flags, args = f[0], f[2], pickle.loads(f[-1])
            if rtype == R.QUEUE:
                key = ("q", f[3], f[4])
                recovered.queues.append(RecoveredQueue(f[3], f[4], bool(flags & 1), args, obj_id))
                queue_ids.add(obj_id)
                self._queues[obj_id] = {}
            elif rtype == R.EXCHANGE:
                key = ("x", f[3], f[4])
                recovered.exchanges.append((f[3], f[4], f[5], bool(flags & 1), bool(flags & 2),
                                            args))
            else:
                key = ("b", f[3], f[4], bool(flags & 1), f[5], f[6], f[7])
                recovered.bindings.append((f[3], f[4], bool(flags & 1), f[5], f[6], args))
            self._put_topo(obj_id, key, seg, off, size)
        # Messages: each live queue's entries in message-id (= arrival) order.
        objects: dict[int, Message] = {}
        for rq in recovered.queues:
            index = self._queues[rq.store_qid]
            delivered: dict[int, int] = {}
            for mid, (seg, off, size, expires) in sorted(enqs.get(rq.store_qid, {}).items()):
                m = msgs.get(mid)
                if m is None:
                    continue
                msg = objects.get(mid)
                if msg is None:
                    mseg, moff, msize, f = m
                    msg = objects[mid] = Message(f[2], f[3], f[4], f[5])
                    msg.store_id = mid
                    self._live(mseg, msize)
                    self._msgs[mid] = _loc(mseg, moff) << 32 | msize
                else:
                    self._shared[mid] = self._shared.get(mid, 1) + 1
                index[mid] = _loc(seg, off)
                self._live(seg, size)
                dlv = dlvs.get((rq.store_qid, mid))
                if dlv is not None:
                    delivered[mid] = _loc(dlv[0], dlv[1])
                    self._live(dlv[0], dlv[2])
                rq.messages.append((msg, expires, dlv is not None))
            if delivered:
                self._dlvs[rq.store_qid] = delivered
        for seg, off, size, target in tombs:
            tomb = Tomb(seg, off)
            seg.tombs[off] = (size, tomb)
            self._live(seg, size)
            target.pins.append(tomb)
        self._dirty.update(self._segments.values())
        log.info("store: recovered %d exchanges, %d queues, %d bindings, %d messages from %d "
                 "segments in %s", len(recovered.exchanges), len(recovered.queues),
                 len(recovered.bindings), len(objects), len(self._segments), self.directory)
        return recovered

    # ---- the index ----------------------------------------------------------------------

    def _live(self, seg: Segment, size: int) -> None:
        seg.live_count += 1
        seg.live_bytes += size

    def _dead(self, loc: int, size: int) -> None:
        seg = self._segments[loc >> 32]
        seg.live_count -= 1
        seg.live_bytes -= size
        self._dirty.add(seg)

    def _put_topo(self, obj_id: int, key: tuple, seg: Segment, off: int, size: int) -> None:
        self._topo[obj_id] = (_loc(seg, off), size, key)
        self._ids[key] = obj_id
        self._live(seg, size)

    def _tombstone(self, data: bytes, target_loc: int) -> None:
        """Append a record cancelling a dead record at target_loc; it stays live while that
        record's segment exists."""
        seg, off = self._append(data)
        target = self._segments[target_loc >> 32]
        if seg is not target:
            tomb = Tomb(seg, off)
            seg.tombs[off] = (len(data), tomb)
            self._live(seg, len(data))
            target.pins.append(tomb)

    # ---- appending ----------------------------------------------------------------------

    def _append(self, data: bytes) -> tuple[Segment, int]:
        seg = self._head
        if seg.size and seg.size + len(data) > self.segment_size:
            seg = self._head = self._new_segment(seg.number + 1)
        off = seg.size
        seg.size += len(data)
        with self._cond:
            self.seq += 1
            seg.last_seq = self.seq
            chunks = self._chunks
            if chunks and chunks[-1][0] is seg:
                chunks[-1][1].extend(data)
            else:
                chunks.append((seg, bytearray(data)))
                self._cond.notify()
        return seg, off

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    # ---- messages -----------------------------------------------------------------------

    def enqueue(self, qid: int, msg: Message, expires_at: float = 0.0) -> None:
        """A persistent message entered durable queue `qid`. The message itself is written
        once, however many queues it enters."""
        mid = msg.store_id
        if mid and mid in self._msgs:
            self._shared[mid] = self._shared.get(mid, 1) + 1
        else:
            mid = msg.store_id = self._new_id()
            data = R.message_record(mid, msg.exchange, msg.routing_key, msg.props, msg.body)
            seg, off = self._append(data)
            self._live(seg, len(data))
            self._msgs[mid] = _loc(seg, off) << 32 | len(data)
        seg, off = self._append(R.enqueue_record(qid, mid, expires_at))
        self._live(seg, ENQ_SIZE)
        self._queues[qid][mid] = _loc(seg, off)

    def delivered(self, qid: int, mid: int) -> None:
        """Handed to a consumer that must ack: after a crash it comes back redelivered."""
        if mid not in self._queues.get(qid, ()):
            return
        delivered = self._dlvs.setdefault(qid, {})
        if mid not in delivered:
            seg, off = self._append(R.ref_record(R.DLV, qid, mid))
            self._live(seg, REF_SIZE)
            delivered[mid] = _loc(seg, off)

    def ack(self, qid: int, mid: int) -> None:
        """The message left queue `qid` (acked, expired, dropped, dead-lettered)."""
        index = self._queues.get(qid)
        loc = index.pop(mid, None) if index is not None else None
        if loc is None:
            return
        self._drop_entry(qid, mid, loc)
        self._tombstone(R.ref_record(R.ACK, qid, mid), loc)

    def _drop_entry(self, qid: int, mid: int, loc: int) -> None:
        self._dead(loc, ENQ_SIZE)
        delivered = self._dlvs.get(qid)
        if delivered:
            dloc = delivered.pop(mid, None)
            if dloc is not None:
                self._dead(dloc, REF_SIZE)
        holders = self._shared.pop(mid, 1)
        if holders > 2:
            self._shared[mid] = holders - 1
        elif holders == 1:
            m = self._msgs.pop(mid)
            self._dead(m >> 32, m & 0xFFFFFFFF)

    def read_message(self, mid: int) -> Message:
        """A stored message, with its body, read back from the log (for a queue that kept
        only its id in memory)."""
        m = self._msgs[mid]
        loc, size = m >> 32, m & 0xFFFFFFFF
        seg, off = self._segments[loc >> 32], loc & 0xFFFFFFFF
        if off + size > seg.flushed:
            self.wait_durable()  # rare: paged out and wanted before the flusher wrote it
        if seg.rfd < 0:
            seg.rfd = os.open(seg.path, os.O_RDONLY)
        f = R.scan(os.pread(seg.rfd, size, off))[0][0][2]
        full = Message(f[2], f[3], f[4], f[5])
        full.store_id = mid
        return full

    # ---- topology -----------------------------------------------------------------------

    def _declare(self, rtype: int, key: tuple, flags: int, strings: tuple, arguments: Any) -> int:
        self._forget(key)
        obj_id = self._new_id()
        data = R.topology_record(rtype, obj_id, flags, strings, _args_bytes(arguments))
        seg, off = self._append(data)
        self._put_topo(obj_id, key, seg, off, len(data))
        self.wait_durable()
        return obj_id

    def _forget(self, key: tuple) -> None:
        """Delete a topology object (a queue with its messages) if the store has it."""
        obj_id = self._ids.pop(key, None)
        if obj_id is None:
            return
        loc, size, _ = self._topo.pop(obj_id)
        self._dead(loc, size)
        self._tombstone(R.delete_record(obj_id), loc)
        for mid, enq_loc in self._queues.pop(obj_id, {}).items():
            self._drop_entry(obj_id, mid, enq_loc)
        self._dlvs.pop(obj_id, None)
        self.wait_durable()

    def declare_queue(self, vhost: str, name: str, auto_delete: bool, arguments: dict) -> int:
        """Record a durable queue; returns its queue id for enqueue/ack."""
        qid = self._declare(R.QUEUE, ("q", vhost, name), int(auto_delete), (vhost, name),
                            arguments)
        self._queues[qid] = {}
        return qid

    def delete_queue(self, vhost: str, name: str) -> None:
        self._forget(("q", vhost, name))

    def declare_exchange(self, vhost: str, name: str, type_: str, auto_delete: bool,
                         internal: bool, arguments: dict) -> None:
        self._declare(R.EXCHANGE, ("x", vhost, name), int(auto_delete) | int(internal) << 1,
                      (vhost, name, type_), arguments)

    def delete_exchange(self, vhost: str, name: str) -> None:
        self._forget(("x", vhost, name))

    @staticmethod
    def _binding_key(vhost: str, source: str, to_exchange: bool, destination: str,
                     routing_key: str, arguments: dict | None) -> tuple:
        return ("b", vhost, source, to_exchange, destination, routing_key,
                _args_bytes(arguments))

    def bind(self, vhost: str, source: str, to_exchange: bool, destination: str,
             routing_key: str, arguments: dict | None) -> None:
        key = self._binding_key(vhost, source, to_exchange, destination, routing_key, arguments)
        if key not in self._ids:
            self._declare(R.BINDING, key, int(to_exchange),
                          (vhost, source, destination, routing_key), arguments)

    def unbind(self, vhost: str, source: str, to_exchange: bool, destination: str,
               routing_key: str, arguments: dict | None) -> None:
        self._forget(self._binding_key(vhost, source, to_exchange, destination, routing_key,
                                       arguments))

    # ---- flushing -----------------------------------------------------------------------

    def start(self, loop: Any) -> None:
        """Run the flusher thread; completions are reported on `loop`."""
        self._loop = loop
        self._thread = threading.Thread(target=self._flusher, name="mq-store-flusher",
                                        daemon=True)
        self._thread.start()

    def _take(self) -> tuple[list, list, int]:
        chunks, unlinks, seq = self._chunks, self._unlinks, self.seq
        self._chunks, self._unlinks = [], []
        return chunks, unlinks, seq

    def _flusher(self) -> None:
        while True:
            with self._cond:
                while not self._chunks and not self._unlinks and not self._closing:
                    self._cond.wait()
                if self._closing and not self._chunks and not self._unlinks:
                    return
                batch = self._take()
            try:
                self._write(*batch)
            except BaseException as exc:  # disk full, I/O error: stop confirming
                log.exception("store: writing the log failed; nothing more is confirmed")
                with self._cond:
                    self.failed = exc
                    self._done.notify_all()
                return
            with self._cond:
                self._written_seq = batch[2]
                self._done.notify_all()
            self._loop.call_soon_threadsafe(self._flushed, batch[2])

    def _write(self, chunks: list, unlinks: list, seq: int) -> None:
        touched: dict[int, Segment] = {}
        for seg, buf in chunks:
            view = memoryview(buf)
            while view:
                view = view[os.write(seg.fd, view):]
            seg.flushed += len(buf)
            touched[seg.number] = seg
        for seg in touched.values():
            os.fdatasync(seg.fd)
        if any(not seg.synced for seg in touched.values()):
            self._sync_dir()
            for seg in touched.values():
                seg.synced = True
        for seg in unlinks:
            # One at a time, each made durable: a segment's tombstones must never vanish
            # before the older segment whose records they cancel.
            os.close(seg.fd)
            if seg.rfd >= 0:
                os.close(seg.rfd)
            os.unlink(seg.path)
            self._sync_dir()

    def _sync_dir(self) -> None:
        fd = os.open(os.path.join(self.directory, "log"), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def wait_durable(self) -> None:
        """Block until everything appended so far is on disk. Topology changes use it, so
        that declare-ok means durable as in RabbitMQ (they are rare; messages never block)."""
        if self._thread is None:
            self.sync()
            return
        target = self.seq
        with self._cond:
            while self._written_seq < target and self.failed is None:
                self._done.wait()

    def sync(self) -> None:
        """Write and fsync everything appended so far, in the caller's thread (no flusher)."""
        with self._cond:
            batch = self._take()
        self._write(*batch)
        self._flushed(batch[2])

    def _flushed(self, seq: int) -> None:
        """On the loop: records up to seq are durable. Tell waiters, then tidy segments."""
        if seq > self.durable_seq:
            self.durable_seq = seq
        for waiter in list(self.waiters):
            if not waiter.store_durable(seq):
                self.waiters.discard(waiter)
        if self.seq == self.durable_seq and self._head is not None:
            self._dirty.add(self._head)  # idle: a mostly dead head may be sealed now
        self._maintain()

    def close(self) -> None:
        """Flush everything, stop the flusher, release the directory."""
        if self._thread is not None:
            with self._cond:
                self._closing = True
                self._cond.notify()
            self._thread.join()
            self._thread = None
        with self._cond:
            batch = self._take()
        if self.failed is None:
            self._write(*batch)
            self.durable_seq = batch[2]
        for seg in self._segments.values():
            os.close(seg.fd)
            if seg.rfd >= 0:
                os.close(seg.rfd)
        self._segments.clear()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # ---- reclaiming disk ----------------------------------------------------------------

    def _maintain(self) -> None:
        """Remove segments with nothing live; compact sealed ones that are mostly dead."""
        waiting = []
        while self._dirty:
            seg = self._dirty.pop()
            if self._segments.get(seg.number) is not seg:
                continue
            if seg.last_seq > self.durable_seq:
                waiting.append(seg)  # not all on disk yet: look again after the next flush
                continue
            if seg is self._head:
                limit = ROLL_HEAD_IDLE if self.seq == self.durable_seq else ROLL_HEAD_BUSY
                if seg.size < limit or seg.live_bytes > seg.size * ROLL_HEAD_RATIO:
                    continue
                self._head = self._new_segment(seg.number + 1)
            if not seg.live_count:
                self._remove(seg)
            elif seg.live_bytes < seg.size * COMPACT_RATIO:
                self._compact(seg)
        self._dirty.update(waiting)

    def _compact(self, seg: Segment) -> None:
        """Copy the live records of a sealed segment to the head, then remove it. A record
        is live when the index still points at it (or, for a tombstone, lists it)."""
        with open(seg.path, "rb") as fh:
            data = fh.read()
        base = seg.number << 32
        for off, size, f in R.scan(data, 0, False)[0]:
            loc, rtype = base | off, f[0]
            if rtype == R.MSG:
                m = self._msgs.get(f[1])
                if m is not None and m >> 32 == loc:
                    self._msgs[f[1]] = self._copy(data, off, size) << 32 | size
            elif rtype == R.ENQ or rtype == R.DLV:
                index = (self._queues if rtype == R.ENQ else self._dlvs).get(f[1])
                if index is not None and index.get(f[2]) == loc:
                    index[f[2]] = self._copy(data, off, size)
            elif rtype == R.ACK or rtype == R.DELETE:
                live = seg.tombs.get(off)
                if live is not None:
                    new = self._copy(data, off, size)
                    tomb = live[1]
                    tomb.seg, tomb.off = self._segments[new >> 32], new & 0xFFFFFFFF
                    tomb.seg.tombs[tomb.off] = live
            else:
                t = self._topo.get(f[1])
                if t is not None and t[0] == loc:
                    self._topo[f[1]] = (self._copy(data, off, size), t[1], t[2])
        seg.live_count = seg.live_bytes = 0
        seg.tombs.clear()
        self._remove(seg)

    def _copy(self, data: bytes, off: int, size: int) -> int:
        """Append an existing record unchanged (its CRC still holds); returns its location."""
        seg, new_off = self._append(data[off:off + size])
        self._live(seg, size)
        return _loc(seg, new_off)

    def _remove(self, seg: Segment) -> None:
        del self._segments[seg.number]
        self._dirty.discard(seg)
        with self._cond:
            self._unlinks.append(seg)
            self._cond.notify()
        for tomb in seg.pins:
            holder = tomb.seg
            if holder is not None and self._segments.get(holder.number) is holder:
                size = holder.tombs.pop(tomb.off)[0]
                holder.live_count -= 1
                holder.live_bytes -= size
                self._dirty.add(holder)
            tomb.seg = None
        seg.pins = []

    # ---- inspection ---------------------------------------------------------------------

    def disk_usage(self) -> int:
        """Bytes in segment files (as appended; the flusher may still be writing some)."""
        return sum(seg.size for seg in self._segments.values())
