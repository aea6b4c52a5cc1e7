"""The replication stream's messages, both ways over one TCP connection per follower.

Every message is a header (kind, payload length, path length, offset or number) followed by
the path (UTF-8) and the payload. Writes name their file and offset, so applying one twice,
or a write and a full-sync transfer of the same range in either order, leaves the same
bytes: a follower can take the stream while its full sync is still arriving.

Follower -> leader: HELLO (JSON: node name, the epoch it read from etcd, its files with size
and the CRC-32 of each SYNC_CHUNK block), then ACK (number of the last action applied and fsynced; `path` "synced" once
the full sync is on its disk too), at least every ACK_INTERVAL.

Leader -> follower: WELCOME (JSON: leader name and epoch), the full sync (DOOMED, TRUNCATE,
REPLACE, SYNC_DATA, SYNC_DONE), and from the moment the follower was registered the actions, each
numbered by the leader (the number field): WRITE (bytes at an offset: the payload starts
with the offset), REPLACE (a whole small file, written atomically), DELETE. In the full sync the number field is the size
(TRUNCATE) or the offset (SYNC_DATA).

The full sync never takes a confirmed byte away from the follower, which may be in the
in-sync set (and so may have to lead) while it runs. Every confirmed byte is on the leader
at the same offset of the same file, so: a segment is overwritten in place from its first
differing block (the bytes before the divergence get their own value again); only what lies
past the leader's end of the file is cut (TRUNCATE), and that was never confirmed; the
follower's files that the leader lacks (DOOMED: their live records, if any, were copied
forward into files the sync sends) are deleted only at SYNC_DONE, or emptied when the
leader starts writing a new file of the same name; small files come whole and atomically
(REPLACE with number 0).
"""
from __future__ import annotations

import asyncio
import json
import os
import struct
import zlib

from mq.store.streams import OFFSETS_FILE
from typing import Any

HEADER = struct.Struct("!BIHQ")  # kind, payload length, path length, offset/number
OFFSET = struct.Struct("!Q")  # where in its file a WRITE's bytes go (the payload's start)

HELLO, WELCOME, ACK = 1, 2, 3
TRUNCATE, SYNC_DATA, SYNC_DONE, DOOMED = 10, 11, 12, 13
WRITE, REPLACE, DELETE = 20, 21, 22

ACK_INTERVAL = 0.5     # a follower acks at least this often (it is alive)
SYNC_CHUNK = 1 << 20   # full-sync transfers are read and sent this much at a time
MAX_PAYLOAD = 1 << 30


class ProtocolError(Exception):
    """The peer sent something that is not a replication message."""


def encode(kind: int, number: int = 0, path: str = "", payload: bytes | memoryview = b"") -> bytes:
    raw = path.encode()
    return b"".join((HEADER.pack(kind, len(payload), len(raw), number), raw, payload))


def encode_json(kind: int, body: Any) -> bytes:
    return encode(kind, payload=json.dumps(body).encode())


def decode_all(buf: bytearray) -> list[tuple[int, int, str, bytes]]:
    """Cut every whole message out of buf (what remains is an unfinished one)."""
    out = []
    pos, end = 0, len(buf)
    while end - pos >= HEADER.size:
        kind, size, plen, number = HEADER.unpack_from(buf, pos)
        if size > MAX_PAYLOAD:
            raise ProtocolError(f"message of {size} bytes")
        stop = pos + HEADER.size + plen + size
        if stop > end:
            break
        start = pos + HEADER.size
        out.append((kind, number, bytes(buf[start:start + plen]).decode(),
                    bytes(buf[start + plen:stop])))
        pos = stop
    del buf[:pos]
    return out


# Which files of a data directory are replicated: the log's segments, the streams' segments
# and tracked offsets, deduplication caches, the users, vhosts, permissions and policies (access.json) and the
# directory's format. Not the lock, the clean-shutdown marker (a follower's copy is never a
# clean close), paging scratch or logs.
TOP_FILES = ("format", "access.json")


def replicated(relpath: str) -> bool:
    if relpath in TOP_FILES:
        return True
    parts = relpath.split("/")
    if parts[0] == "log":
        return len(parts) == 2 and _segment_name(parts[1])
    if parts[0] == "dedup":  # an exchange's deduplication cache
        return len(parts) == 2 and parts[1].endswith(".json")
    if parts[0] == "streams":  # streams/<queue id>/<first offset>.seg, and its offsets
        return len(parts) == 3 and parts[1].isdigit() and \
            (_segment_name(parts[2]) or parts[2] == OFFSETS_FILE)
    return False


def _segment_name(name: str) -> bool:
    return name.endswith(".seg") and name[:-4].isdigit()


def is_segment(relpath: str) -> bool:
    """A replicated file that only grows (sent by blocks); the others are small and are
    sent whole."""
    return replicated(relpath) and relpath.endswith(".seg")


def data_files(data_dir: str) -> list[str]:
    """The replicated files in data_dir, relative paths."""
    files = [name for name in TOP_FILES if os.path.isfile(os.path.join(data_dir, name))]
    for top in ("log", "streams", "dedup"):
        base = os.path.join(data_dir, top)
        for root, _, names in os.walk(base):
            rel_root = os.path.relpath(root, data_dir)
            files += sorted(f"{rel_root}/{n}" for n in names if replicated(f"{rel_root}/{n}"))
    return files


def safe_path(data_dir: str, relpath: str) -> str:
    """The absolute path of a replicated file; ProtocolError for anything else."""
    if not replicated(relpath):
        raise ProtocolError(f"not a replicated file: {relpath!r}")
    return os.path.join(data_dir, relpath)


def block_crcs(path: str, size: int) -> list[int]:
    """CRC-32 of each SYNC_CHUNK block of a file's first size bytes (the last one may be
    short); fewer blocks if the file is shorter or gone."""
    out: list[int] = []
    try:
        with open(path, "rb") as fh:
            left = size
            while left > 0:
                chunk = fh.read(min(left, SYNC_CHUNK))
                if not chunk:
                    break
                out.append(zlib.crc32(chunk))
                left -= len(chunk)
    except FileNotFoundError:
        pass
    return out


def manifest(data_dir: str) -> dict[str, list]:
    """Each replicated file of data_dir: [size, block CRCs] (what a follower has)."""
    out = {}
    for rel in data_files(data_dir):
        path = os.path.join(data_dir, rel)
        try:
            size = os.path.getsize(path)
        except FileNotFoundError:
            continue
        out[rel] = [size, block_crcs(path, size)]
    return out


async def read_message(reader: asyncio.StreamReader) -> tuple[int, int, str, bytes]:
    """One whole message from a stream: (kind, number, path, payload)."""
    head = await reader.readexactly(HEADER.size)
    kind, size, plen, number = HEADER.unpack(head)
    if size > MAX_PAYLOAD:
        raise ProtocolError(f"message of {size} bytes")
    body = await reader.readexactly(plen + size)
    return kind, number, body[:plen].decode(), body[plen:]
