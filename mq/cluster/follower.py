"""The follower's side of replication: connect to the leader, say what we have, apply the
full sync and the stream to the data directory, fsync, ack.

Messages are read as they come and applied in batches in a worker thread (writes, then one
fdatasync per file touched and one fsync per directory changed); the ack after a batch names
the last action in it, and says "synced" once SYNC_DONE has been applied. A file deleted or
replaced by the stream during the full sync takes no more full-sync data (that data is
older). The link's files are closed when it ends, so the node can open the store on them.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any

from mq.cluster import protocol as P
from mq.cluster.membership import Leader, split_address
from mq.store.segments import sync_dir, write_atomic
from mq.store.shutdown import MARKER

log = logging.getLogger("mq.cluster")

MAX_PENDING = 64 << 20  # bytes of messages read and not yet applied before reading pauses


class Files:
    """The data directory as the stream changes it (used from the worker thread)."""

    def __init__(self, data_dir: str) -> None:
        self.data_dir = data_dir
        self.fds: dict[str, int] = {}
        self.superseded: set[str] = set()  # deleted or replaced since the sync began
        self.doomed: set[str] = set()      # ours, not the leader's: deleted at SYNC_DONE
        self.touched: set[int] = set()
        self.dirs_changed: set[str] = set()  # directories with files created or removed

    def _fd(self, rel: str) -> int:
        fd = self.fds.get(rel)
        if fd is None:
            path = P.safe_path(self.data_dir, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if not os.path.exists(path):
                self.dirs_changed.add(os.path.dirname(path))
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
            self.fds[rel] = fd
        return fd

    def _forget(self, rel: str) -> None:
        fd = self.fds.pop(rel, None)
        if fd is not None:
            self.touched.discard(fd)
            os.close(fd)
        self.superseded.add(rel)
        self.dirs_changed.add(os.path.dirname(P.safe_path(self.data_dir, rel)))

    def apply(self, messages: list[tuple[int, int, str, bytes]]) -> tuple[int, bool]:
        """Apply and fsync; returns (last action applied, whether SYNC_DONE was among them)."""
        last, done = 0, False
        for kind, number, rel, payload in messages:
            if kind == P.WRITE:
                off, = P.OFFSET.unpack_from(payload)
                fd = self._fd(rel)
                if rel in self.doomed:  # a new file of the leader's: our old one goes
                    self.doomed.discard(rel)
                    os.ftruncate(fd, 0)
                _pwrite(fd, memoryview(payload)[P.OFFSET.size:], off)
                self.touched.add(fd)
                last = number
            elif kind == P.SYNC_DATA:
                if rel not in self.superseded:
                    fd = self._fd(rel)
                    _pwrite(fd, payload, number)
                    self.touched.add(fd)
            elif kind == P.TRUNCATE:
                fd = self._fd(rel)
                os.ftruncate(fd, number)
                self.touched.add(fd)
            elif kind == P.DELETE:
                self._delete(rel)
                last = number
            elif kind == P.REPLACE:
                self._forget(rel)
                write_atomic(P.safe_path(self.data_dir, rel), payload)
                last = number or last
            elif kind == P.DOOMED:
                self.doomed = {rel for rel in json.loads(payload) if P.replicated(rel)}
            elif kind == P.SYNC_DONE:
                for doomed in sorted(self.doomed):
                    self._delete(doomed)
                self.doomed.clear()
                done = True
            else:
                raise P.ProtocolError(f"unexpected message {kind}")
        self._sync_touched()
        for path in self.dirs_changed:
            sync_dir(path)
        self.dirs_changed.clear()
        return last, done

    def _delete(self, rel: str) -> None:
        path = P.safe_path(self.data_dir, rel)
        self._sync_touched()  # what compaction copied is on disk before the original goes
        self._forget(rel)
        self.doomed.discard(rel)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def _sync_touched(self) -> None:
        for fd in self.touched:
            os.fdatasync(fd)
        self.touched.clear()

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


class Link:
    """One connection to one leader (one epoch); run() until it fails or is cancelled."""

    def __init__(self, data_dir: str, name: str, leader: Leader) -> None:
        self.data_dir = data_dir
        self.name = name
        self.leader = leader
        self.welcomed = False  # the leader took us
        self.synced = False

    async def run(self) -> None:
        prepare(self.data_dir)
        host, port = split_address(self.leader.addresses.replication)
        reader, writer = await asyncio.open_connection(host, port)
        files = Files(self.data_dir)
        try:
            have = await asyncio.to_thread(P.manifest, self.data_dir)
            writer.write(P.encode_json(P.HELLO, {"node": self.name, "epoch": self.leader.epoch,
                                                 "files": have}))
            kind, _, _, payload = await P.read_message(reader)
            welcome = json.loads(payload)
            if kind != P.WELCOME or welcome.get("epoch") != self.leader.epoch:
                raise P.ProtocolError(f"leader answered {kind} {payload[:100]!r}")
            self.welcomed = True
            await self._stream(reader, writer, files)
        finally:
            writer.close()
            files.close()

    async def _stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      files: Files) -> None:
        pending: list[tuple[int, int, str, bytes]] = []
        arrived = asyncio.Event()
        room = asyncio.Event()
        room.set()
        size = [0]

        async def read() -> None:
            buf = bytearray()
            while True:
                await room.wait()
                data = await reader.read(1 << 20)
                if not data:
                    raise ConnectionError("the leader closed the link")
                buf += data
                for message in P.decode_all(buf):
                    pending.append(message)
                    size[0] += len(message[3])
                if size[0] > MAX_PENDING:
                    room.clear()
                arrived.set()

        reading = asyncio.ensure_future(read())
        acked = 0
        try:
            while True:
                try:
                    await asyncio.wait_for(_either(arrived, reading), P.ACK_INTERVAL)
                except asyncio.TimeoutError:
                    pass
                if reading.done():
                    reading.result()  # raises what ended it
                batch, pending[:] = pending[:], []
                arrived.clear()
                size[0] = 0
                room.set()
                if batch:
                    job = asyncio.get_running_loop().run_in_executor(None, files.apply, batch)
                    try:
                        last, done = await asyncio.shield(job)
                    except asyncio.CancelledError:
                        await asyncio.wait([job])  # the files are closed only after it
                        raise
                    acked = max(acked, last)
                    if done and not self.synced:
                        self.synced = True
                writer.write(P.encode(P.ACK, acked, "synced" if self.synced else ""))
        finally:
            reading.cancel()


def prepare(data_dir: str) -> None:
    """A follower's copy is never a clean close: if it leads one day, its recovery must
    treat every message as possibly delivered (B-CLUSTER-4: redelivered=true)."""
    os.makedirs(os.path.join(data_dir, "log"), exist_ok=True)
    try:
        os.unlink(os.path.join(data_dir, MARKER))
        sync_dir(data_dir)
    except FileNotFoundError:
        pass


async def _either(event: asyncio.Event, task: Any) -> None:
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait([waiter, task], return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()


def _pwrite(fd: int, data: Any, off: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, off)
        view, off = view[n:], off + n
