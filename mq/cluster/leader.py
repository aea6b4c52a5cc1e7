"""The leader's side of replication: followers connect to the replication port; each gets a
full sync of the data directory (by CRC-32 of what it has), then the stream of actions: the
store's writes (as the flusher writes them, before its fsync, so that the follower's fsync
runs alongside), segment deletions and access.json replacements.

What may be confirmed (B-CLUSTER-3): a record is confirmed once the leader has fsynced it
and every follower in the gate has acked it, and only while the lease surely holds. The gate
is the in-sync set as far as confirms go: a follower joins it as soon as it has caught up
(before etcd records it: waiting for one more is always safe), and leaves it only after
etcd records it gone. A follower silent for SILENCE seconds, or whose connection dropped, is
removed.
"""
from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import logging
import os
import time
from collections import deque
from typing import Any, Callable

from mq.cluster import protocol as P
from mq.cluster.membership import Membership

log = logging.getLogger("mq.cluster")

SILENCE = 2.0               # seconds without an ack before a follower is dropped from the gate
MAX_BUFFERED = 256 << 20    # a follower this far behind in unsent stream is disconnected
MONITOR_INTERVAL = 0.2


class FollowerSession:
    """One connected follower, as the leader sees it."""

    def __init__(self, name: str, writer: asyncio.StreamWriter, registered: int) -> None:
        self.name = name
        self.writer = writer
        self.acked = registered      # last action it applied and fsynced
        self.synced = False          # its full sync is on its disk
        self.heard = time.monotonic()
        # (action, cumulative stream bytes, monotonic time sent) of unacked actions
        self.sent: deque[tuple[int, int, float]] = deque()
        self.acked_bytes = 0
        self.plan: list[tuple[str, int, int]] = []  # full sync: (file, from, to)
        self.mark = registered       # the last action sent at the previous monitor tick
        self.needed = 0              # in the gate: in sync once it has acked this action

    def send(self, data: bytes) -> None:
        self.writer.write(data)


class Replicator:
    def __init__(self, data_dir: str, membership: Membership) -> None:
        self.data_dir = data_dir
        self.membership = membership
        self.name = membership.me.name
        self.sessions: dict[str, FollowerSession] = {}
        # The in-sync set as etcd has it (from our campaign on), and the followers whose
        # acks confirms wait for: every member, and those about to become one.
        self.members: list[str] = list(membership.members) or [self.name]
        self.gate: set[str] = set(self.members) - {self.name}
        self.action = 0                 # number of the last action sent
        self.stream_bytes = 0           # bytes of actions sent so far
        self._seq_by_action: deque[tuple[int, int]] = deque()  # (action, store seq) of writes
        self.replicated_seq = 0         # every record up to it is on every gate follower
        self._floor = 0                 # last action every gate follower acked
        self._action_waits: list[tuple[int, int, Callable[[], None]]] = []
        self._wait_ids = itertools.count()
        self.release: Callable[[], None] = lambda: None  # the store re-checks what is durable
        self.lead_start = time.monotonic()
        self.server: asyncio.AbstractServer | None = None

    # ---- what the store asks --------------------------------------------------------------

    def confirmable(self, local_seq: int) -> int:
        """How far confirms may go: what is fsynced here and on every gate follower, while
        the lease holds (else nothing more)."""
        if not self.membership.valid():
            return 0
        return min(local_seq, self.replicated_seq)

    def when_replicated(self, action: int, callback: Callable[[], None]) -> None:
        if action <= self._floor and self.membership.valid():
            callback()
        else:
            heapq.heappush(self._action_waits, (action, next(self._wait_ids), callback))

    # ---- actions (called on the loop) -------------------------------------------------------

    def written(self, chunks: list[tuple[str, int, Any]], seq: int) -> None:
        """The flusher wrote these (path, offset, bytes) of segments; seq is the store
        sequence they complete."""
        for path, off, data in chunks:
            self._emit(P.WRITE, os.path.relpath(path, self.data_dir),
                       P.OFFSET.pack(off) + bytes(data))
        self._seq_by_action.append((self.action, seq))
        self.advance()

    def deleted(self, path: str) -> None:
        self._emit(P.DELETE, os.path.relpath(path, self.data_dir), b"")

    def replaced(self, relpath: str, data: bytes) -> int:
        """A small file written anew (access.json); returns its action number."""
        self._emit(P.REPLACE, relpath, data)
        self.advance()
        return self.action

    def _emit(self, kind: int, rel: str, payload: bytes) -> None:
        self.action += 1
        frame = P.encode(kind, self.action, rel, payload)
        self.stream_bytes += len(frame)
        now = time.monotonic()
        for session in list(self.sessions.values()):
            session.sent.append((self.action, self.stream_bytes, now))
            session.send(frame)
            if session.writer.transport.get_write_buffer_size() > MAX_BUFFERED:
                log.warning("cluster: follower %s is too far behind; disconnecting it",
                            session.name)
                session.writer.close()

    # ---- the gate -------------------------------------------------------------------------

    def advance(self) -> None:
        """Recompute what every gate follower has; wake what waits on it."""
        floor = self.action
        for name in self.gate:
            session = self.sessions.get(name)
            if session is None or not session.synced:
                floor = 0
            else:
                floor = min(floor, session.acked)
        queue = self._seq_by_action
        while queue and queue[0][0] <= floor:
            self.replicated_seq = max(self.replicated_seq, queue.popleft()[1])
        self._floor = max(self._floor, floor)
        if not self.membership.valid():
            return
        waits = self._action_waits
        while waits and waits[0][0] <= self._floor:
            heapq.heappop(waits)[2]()
        self.release()

    # ---- followers' connections ---------------------------------------------------------------

    async def serve(self, host: str, port: int) -> int:
        self.server = await asyncio.start_server(self._follower, host, port,
                                                 reuse_address=True)
        return self.server.sockets[0].getsockname()[1]

    async def _follower(self, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
        name = "?"
        try:
            kind, _, _, payload = await P.read_message(reader)
            if kind != P.HELLO:
                raise P.ProtocolError("expected HELLO")
            hello = json.loads(payload)
            name = hello["node"]
            if hello.get("epoch") != self.membership.epoch:
                log.warning("cluster: %s expects epoch %s, this leader's is %d; refused",
                            name, hello.get("epoch"), self.membership.epoch)
                return
            writer.write(P.encode_json(P.WELCOME, {"leader": self.name,
                                                   "epoch": self.membership.epoch}))
            theirs = hello.get("files", {})
            prefixes = await asyncio.to_thread(self._matching_prefixes, theirs)
            session = self._register(name, writer, theirs, prefixes)
            sync = asyncio.ensure_future(self._transfer(session))
            sync.add_done_callback(lambda task: _end_if_failed(task, session))
            try:
                await self._read_acks(session, reader)
            finally:
                sync.cancel()
        except (OSError, asyncio.IncompleteReadError, P.ProtocolError, ValueError,
                KeyError) as exc:
            log.info("cluster: replication link to %s ended: %s", name, exc or type(exc).__name__)
        finally:
            session_now = self.sessions.get(name)
            if session_now is not None and session_now.writer is writer:
                del self.sessions[name]
            writer.close()

    def _matching_prefixes(self, theirs: dict) -> dict[str, int]:
        """For each segment the follower has: how much of it, in whole blocks, equals ours
        (a segment's written bytes never change, so this holds while it grows)."""
        out = {}
        for rel, (size, crcs) in theirs.items():
            if not P.is_segment(rel):
                continue
            ours = P.block_crcs(os.path.join(self.data_dir, rel), size)
            same = 0
            while same < len(crcs) and same < len(ours) and crcs[same] == ours[same]:
                same += 1
            out[rel] = min(size, same * P.SYNC_CHUNK)
        return out

    def _register(self, name: str, writer: asyncio.StreamWriter, theirs: dict,
                  prefixes: dict[str, int]) -> FollowerSession:
        """From now on the follower gets every action. The full sync's plan goes first
        (see protocol.py for why it is safe while the follower is in sync): its files we
        lack, what to cut, the small files whole; the segments' data follows (_transfer)."""
        old = self.sessions.pop(name, None)
        if old is not None:
            old.writer.close()
        session = FollowerSession(name, writer, self.action)
        session.acked_bytes = self.stream_bytes
        ours = P.data_files(self.data_dir)
        doomed = [rel for rel in theirs if rel not in ours and P.replicated(rel)]
        writer.write(P.encode_json(P.DOOMED, doomed))
        for rel in ours:
            path = os.path.join(self.data_dir, rel)
            try:
                if not P.is_segment(rel):
                    with open(path, "rb") as fh:
                        writer.write(P.encode(P.REPLACE, 0, rel, fh.read()))
                    continue
                size = os.path.getsize(path)
            except FileNotFoundError:
                continue
            if theirs.get(rel, [0])[0] > size:
                writer.write(P.encode(P.TRUNCATE, size, rel))
            session.plan.append((rel, min(prefixes.get(rel, 0), size), size))
        self.sessions[name] = session
        log.info("cluster: follower %s connected; syncing %d files", name, len(session.plan))
        return session

    async def _transfer(self, session: FollowerSession) -> None:
        """Send what the follower lacks of each segment as it was at registration (what was
        written later comes as actions), then SYNC_DONE."""
        writer = session.writer
        for rel, start, end in session.plan:
            path = os.path.join(self.data_dir, rel)
            pos = start
            while pos < end:
                size = min(P.SYNC_CHUNK, end - pos)
                try:
                    data = await asyncio.to_thread(_pread, path, size, pos)
                except FileNotFoundError:
                    break  # deleted meanwhile: its DELETE is in the stream
                if not data:
                    break
                writer.write(P.encode(P.SYNC_DATA, pos, rel, data))
                pos += len(data)
                await writer.drain()
        writer.write(P.encode(P.SYNC_DONE, self.action))
        await writer.drain()

    async def _read_acks(self, session: FollowerSession, reader: asyncio.StreamReader) -> None:
        while True:
            kind, number, path, _ = await P.read_message(reader)
            if kind != P.ACK:
                raise P.ProtocolError(f"unexpected message {kind}")
            session.heard = time.monotonic()
            if number > session.acked:
                session.acked = number
            while session.sent and session.sent[0][0] <= session.acked:
                session.acked_bytes = session.sent.popleft()[1]
            if path == "synced" and not session.synced:
                session.synced = True
                log.info("cluster: follower %s has the full sync", session.name)
            self.advance()

    # ---- keeping the in-sync set --------------------------------------------------------

    async def monitor(self, on_deposed: Callable[[], None]) -> None:
        """Keep the gate and the in-sync set. A synced follower that has acked what was sent
        by the previous tick joins the gate (confirms wait for it from now on), and etcd's
        in-sync set once it has acked everything sent when it joined the gate: then it holds
        every confirmed record. A silent one leaves etcd's set first, then the gate.
        on_deposed() when etcd says we no longer lead."""
        while True:
            await asyncio.sleep(MONITOR_INTERVAL)
            now = time.monotonic()
            for s in self.sessions.values():
                if s.name not in self.gate and s.synced and s.acked >= s.mark:
                    self.gate.add(s.name)
                    s.needed = self.action
                s.mark = self.action
            drop = {name for name in self.gate if self._silent(name, now)}
            not_yet = {name for name in drop if name not in self.members}
            if not_yet:  # not in etcd's set: nothing to record first
                self.gate -= not_yet
                self.advance()
            keep = {name for name in self.gate - drop
                    if name in self.members or self._has_all(name)}
            members = [self.name] + sorted(keep)
            if members == self.members:
                continue
            try:
                ok = await self.membership.write_in_sync(members)
            except Exception as exc:  # etcd unreachable: confirms wait meanwhile
                log.warning("cluster: cannot record the in-sync set: %s", exc)
                continue
            if not ok:
                log.warning("cluster: the leader key is no longer ours")
                on_deposed()
                return
            for name in set(members) - set(self.members):
                log.info("cluster: %s is in sync", name)
            for name in set(self.members) - set(members):
                log.warning("cluster: %s dropped from the in-sync set", name)
            self.members = members
            self.gate -= drop
            self.advance()

    def _has_all(self, name: str) -> bool:
        session = self.sessions.get(name)
        return session is not None and session.synced and session.acked >= session.needed

    def _silent(self, name: str, now: float) -> bool:
        session = self.sessions.get(name)
        if session is None:  # gone, or not back since we lead
            return now - self.lead_start > SILENCE
        if now - session.heard > SILENCE:
            return True
        return bool(session.sent) and now - session.sent[0][2] > SILENCE

    def nodes(self) -> dict[str, dict]:
        """Each connected follower: in sync or joining, and its lag in stream bytes."""
        out = {}
        for name, s in self.sessions.items():
            out[name] = {"cluster_role": "follower" if name in self.members else "joining",
                         "in_sync": name in self.members,
                         "lag": max(0, self.stream_bytes - s.acked_bytes)
                         if s.sent else 0}
        return out

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for session in self.sessions.values():
            session.writer.close()


def _end_if_failed(sync: asyncio.Future, session: FollowerSession) -> None:
    """A full sync that failed (a file unreadable) ends the link; the follower retries."""
    if not sync.cancelled() and sync.exception() is not None:
        log.warning("cluster: full sync to %s failed: %s", session.name, sync.exception())
        session.writer.close()


def _pread(path: str, size: int, off: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, size, off)
    finally:
        os.close(fd)
