"""A small etcd v3 client over etcd's JSON gateway (POST /v3/..., keys and values base64).

etcd 3.4 serves the gateway on its client port; aiohttp, which mq has for its management
API, is all it needs (the grpc clients pull in grpcio and protobuf; etcd3 0.12 breaks with
protobuf 4). Only what the cluster uses: leases, range, txn and delete. Each request goes to
the first endpoint that answers, within `timeout` seconds; EtcdError when none does.
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import aiohttp


class EtcdError(Exception):
    """etcd could not be reached, or refused the request."""


@dataclass
class KeyValue:
    key: str
    value: str
    create_revision: int
    mod_revision: int
    lease: int


def _b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def _kv(item: dict) -> KeyValue:
    return KeyValue(base64.b64decode(item["key"]).decode(),
                    base64.b64decode(item.get("value", "")).decode(),
                    int(item.get("create_revision", 0)), int(item.get("mod_revision", 0)),
                    int(item.get("lease", 0)))


def prefix_end(prefix: str) -> str:
    """The range end that selects every key starting with prefix."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return _b64(bytes(raw))


# Comparisons and operations of a transaction, in the gateway's JSON.
def created(key: str, revision: int) -> dict:
    """The key's create revision is `revision` (0: the key does not exist)."""
    return {"key": _b64(key), "result": "EQUAL", "target": "CREATE",
            "create_revision": str(revision)}


def modified(key: str, revision: int) -> dict:
    """The key was last modified at `revision` (0: it does not exist)."""
    return {"key": _b64(key), "result": "EQUAL", "target": "MOD", "mod_revision": str(revision)}


def put(key: str, value: str, lease: int = 0) -> dict:
    request: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
    if lease:
        request["lease"] = str(lease)
    return {"request_put": request}


class Etcd:
    def __init__(self, endpoints: list[str], timeout: float = 2.0) -> None:
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def call(self, path: str, body: dict, timeout: float | None = None) -> dict:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        limit = aiohttp.ClientTimeout(total=timeout or self.timeout)
        errors = []
        for i, endpoint in enumerate(self.endpoints):
            try:
                async with self._session.post(endpoint + path, data=json.dumps(body),
                                              timeout=limit) as resp:
                    reply = await resp.json(content_type=None)
                    if resp.status != 200:
                        raise EtcdError(f"{path}: {reply.get('message') or resp.status}")
                    if i:  # answer from the one that works first next time
                        self.endpoints.insert(0, self.endpoints.pop(i))
                    return reply
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                errors.append(f"{endpoint}: {exc or type(exc).__name__}")
        raise EtcdError("etcd unreachable (" + "; ".join(errors) + ")")

    async def grant(self, ttl: int) -> int:
        return int((await self.call("/v3/lease/grant", {"TTL": str(ttl)}))["ID"])

    async def keepalive(self, lease: int, timeout: float | None = None) -> int:
        """The lease's remaining TTL after renewing it (0: it has expired)."""
        reply = await self.call("/v3/lease/keepalive", {"ID": str(lease)}, timeout)
        return int(reply.get("result", {}).get("TTL", 0))

    async def revoke(self, lease: int) -> None:
        await self.call("/v3/lease/revoke", {"ID": str(lease)})

    async def get(self, key: str) -> KeyValue | None:
        kvs = (await self.call("/v3/kv/range", {"key": _b64(key)})).get("kvs", [])
        return _kv(kvs[0]) if kvs else None

    async def get_prefix(self, prefix: str) -> list[KeyValue]:
        reply = await self.call("/v3/kv/range", {"key": _b64(prefix),
                                                 "range_end": prefix_end(prefix)})
        return [_kv(item) for item in reply.get("kvs", [])]

    async def put(self, key: str, value: str, lease: int = 0) -> int:
        """Returns the revision of the write."""
        reply = await self.call("/v3/kv/put", put(key, value, lease)["request_put"])
        return int(reply["header"]["revision"])

    async def txn(self, compare: list[dict], success: list[dict],
                  failure: list[dict] | None = None) -> tuple[bool, int, list[dict]]:
        """(succeeded, revision, responses)."""
        reply = await self.call("/v3/kv/txn", {"compare": compare, "success": success,
                                               "failure": failure or []})
        return (bool(reply.get("succeeded")), int(reply["header"]["revision"]),
                reply.get("responses", []))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

