"""The replication stream on its own (B-CLUSTER-3, B-CLUSTER-7): a leader's Replicator and a
follower's Link over real TCP on loopback, in one event loop, each with its own data
directory. No etcd: the membership is a stand-in that always holds its lease."""
from __future__ import annotations

import asyncio
import os
import random

import pytest

from mq.cluster import protocol as P
from mq.cluster.follower import Link
from mq.cluster.leader import Replicator
from mq.cluster.membership import Addresses, Leader

EPOCH = 7


class Lease:
    """Membership as the Replicator uses it: our name, the epoch, a lease that holds."""

    def __init__(self) -> None:
        self.me = Addresses("leader", "", "", "")
        self.epoch = EPOCH
        self.members: list[str] = []

    def valid(self) -> bool:
        return True

    async def write_in_sync(self, members: list[str]) -> bool:
        return True


def _write(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)


def _tree(root: str) -> dict[str, bytes]:
    out = {}
    for rel in P.data_files(root):
        with open(os.path.join(root, rel), "rb") as fh:
            out[rel] = fh.read()
    return out


async def _until(check, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.01)


async def _sync(leader_dir: str, follower_dir: str, during=None) -> Replicator:
    rep = Replicator(leader_dir, Lease())
    port = await rep.serve("127.0.0.1", 0)
    link = Link(follower_dir, "f1", Leader(Addresses("leader", "", "", f"127.0.0.1:{port}"),
                                          EPOCH))
    task = asyncio.ensure_future(link.run())
    try:
        await _until(lambda: "f1" in rep.sessions)
        if during is not None:
            await during(rep)
        await _until(lambda: rep.sessions["f1"].synced
                     and rep.sessions["f1"].acked >= rep.action)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        rep.close()
    return rep


def test_full_sync_makes_a_diverged_copy_equal(tmp_path) -> None:
    """B-CLUSTER-7: a follower whose copy diverged (another history's tail, a file the
    leader never had, a segment the leader removed, an old access.json) ends equal to the
    leader's, and the clean-shutdown marker is gone (its copy is never a clean close)."""
    rnd = random.Random(5)
    lead, fol = str(tmp_path / "lead"), str(tmp_path / "fol")
    common = rnd.randbytes(3 * P.SYNC_CHUNK + 1000)
    _write(f"{lead}/log/00000001.seg", common + b"leader's tail" * 100)
    _write(f"{fol}/log/00000001.seg", common + b"other history" * 300)
    _write(f"{lead}/log/00000002.seg", rnd.randbytes(5000))
    _write(f"{fol}/log/00000003.seg", b"never on the leader")
    _write(f"{lead}/access.json", b'{"users": ["new"]}')
    _write(f"{fol}/access.json", b'{"users": ["old"]}')
    _write(f"{lead}/format", b"2\n")
    _write(f"{fol}/clean-shutdown", b"")
    asyncio.run(_sync(lead, fol))
    assert _tree(fol) == _tree(lead)
    assert not os.path.exists(f"{fol}/clean-shutdown")


def test_writes_during_the_sync_land_once_in_place(tmp_path) -> None:
    """B-CLUSTER-3: writes the leader makes while a follower's full sync is running (into
    a segment being sent, a new segment, and a removal) come out right in either order."""
    rnd = random.Random(6)
    lead, fol = str(tmp_path / "lead"), str(tmp_path / "fol")
    _write(f"{lead}/log/00000001.seg", rnd.randbytes(4 * P.SYNC_CHUNK))
    _write(f"{lead}/log/00000002.seg", rnd.randbytes(1000))

    async def during(rep: Replicator) -> None:
        for n in range(50):
            path = f"{lead}/log/00000001.seg"
            data = rnd.randbytes(777)
            off = os.path.getsize(path)
            with open(path, "ab") as fh:
                fh.write(data)
            rep.written([(path, off, data)], n + 1)
            await asyncio.sleep(0)
        new = f"{lead}/log/00000003.seg"
        _write(new, b"fresh")
        rep.written([(new, 0, b"fresh")], 99)
        os.unlink(f"{lead}/log/00000002.seg")
        rep.deleted(f"{lead}/log/00000002.seg")
        rep.replaced("access.json", b"{}")
        _write(f"{lead}/access.json", b"{}")

    rep = asyncio.run(_sync(lead, fol, during))
    assert _tree(fol) == _tree(lead)
    assert rep.replicated_seq == 99


def test_a_follower_from_an_older_epoch_is_refused(tmp_path) -> None:
    """B-CLUSTER-5: the leader serves only followers that read its epoch from etcd."""
    lead, fol = str(tmp_path / "lead"), str(tmp_path / "fol")
    _write(f"{lead}/log/00000001.seg", b"x" * 100)

    async def attempt() -> None:
        rep = Replicator(lead, Lease())
        port = await rep.serve("127.0.0.1", 0)
        link = Link(fol, "f1", Leader(Addresses("leader", "", "", f"127.0.0.1:{port}"),
                                      EPOCH - 1))
        try:
            with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
                await asyncio.wait_for(link.run(), 5)
        finally:
            rep.close()

    asyncio.run(attempt())
    assert not os.path.exists(f"{fol}/log/00000001.seg")
