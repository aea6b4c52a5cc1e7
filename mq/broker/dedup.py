"""Deduplication (B-DEDUP), with the interface of RabbitMQ's rabbitmq-message-deduplication
plugin, and LavinMQ's form of it.

A message's identity is its header `x-deduplication-header`; a message without it always
passes.
- Exchange level: an exchange of type `x-message-deduplication` (it routes as fanout does),
  or any exchange with the argument `x-message-deduplication: true` (LavinMQ's form: it keeps
  its own routing), has a cache of the identities it has seen. `x-cache-size` (required)
  bounds it, the oldest going first; `x-cache-ttl` (ms) is how long an identity is kept (for
  ever without it), and a message's own `x-cache-ttl` header overrides it. A message seen
  within its TTL is not routed: it is unroutable (returned if mandatory) and still confirmed.
- Queue level: a queue with `x-message-deduplication: true` drops a message whose identity
  is that of a message still in the queue; once that one has left (acked, or gone another
  way) the identity may come in again. A dropped message is still confirmed.

A durable exchange's cache is saved in the data directory (`dedup/<id>.json`, replicated in
a cluster) within SAVE_DELAY of a change and comes back after a restart, unless
`x-cache-persistence` is "memory". (The plugin keeps it only with "disk"; here a durable
object's cache survives by default, as the behaviour contract asks.) A crash may forget the
identities of the last SAVE_DELAY.
"""
from __future__ import annotations

import hashlib
import struct
import time
from collections import OrderedDict
from typing import Any

from mq._core.message import Message
from mq.broker.errors import PreconditionFailed
from mq.broker.keptfile import KeptFile

HEADER = "x-deduplication-header"
TTL_HEADER = "x-cache-ttl"
# The header's name as a field-table key (length byte, then the name), and the TTL's name:
# looked for in the property bytes before anything is decoded.
_HEADER_KEY = bytes([len(HEADER)]) + HEADER.encode()
_TTL_BYTES = TTL_HEADER.encode()
_U32 = struct.Struct(">I")
ARGUMENT = "x-message-deduplication"
EXCHANGE_TYPE = "x-message-deduplication"
DIRECTORY = "dedup"
SAVE_DELAY = 0.2  # seconds: changes within it are saved together


def identity(msg: Message) -> str | None:
    """The message's deduplication identity (None: it has none). The common string value
    is read straight from the property bytes; another type takes the full header decode."""
    props = msg.props
    at = props.find(_HEADER_KEY)
    if at < 0:
        return None
    at += len(_HEADER_KEY)
    if props[at:at + 1] == b"S":
        size = _U32.unpack_from(props, at + 1)[0]
        return props[at + 5:at + 5 + size].decode(errors="replace")
    value = (msg.headers or {}).get(HEADER)
    if value is None:
        return None
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _ttl_header(msg: Message) -> int | None:
    value = (msg.headers or {}).get(TTL_HEADER) if _TTL_BYTES in msg.props else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 \
        else None


def wants_cache(type_: str, arguments: dict) -> bool:
    return type_ == EXCHANGE_TYPE or arguments.get(ARGUMENT) in (True, "true")


def cache_settings(arguments: dict, where: str) -> tuple[int, int | None, bool]:
    """(size, ttl ms or None, persisted) from an exchange's arguments; 406 when bad."""
    size = arguments.get("x-cache-size")
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise PreconditionFailed(f"invalid arg 'x-cache-size' for {where}: it must be an "
                                 "integer greater than 0")
    ttl = arguments.get("x-cache-ttl")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0):
        raise PreconditionFailed(f"invalid arg 'x-cache-ttl' for {where}: it must be an "
                                 "integer greater than 0")
    persistence = arguments.get("x-cache-persistence", "disk")
    if isinstance(persistence, bytes):
        persistence = persistence.decode(errors="replace")
    if persistence not in ("memory", "disk"):
        raise PreconditionFailed(f"invalid arg 'x-cache-persistence' for {where}: it must be "
                                 "\"memory\" or \"disk\"")
    return size, ttl, persistence == "disk"


class Cache:
    """An exchange's identities: identity -> expiry in ms (0: never), oldest first."""

    def __init__(self, size: int, ttl_ms: int | None) -> None:
        self.size = size
        self.ttl_ms = ttl_ms
        # In insertion order, the oldest first (an OrderedDict: a plain dict's first item is
        # found by skipping what was deleted before it, slow under this churn).
        self.entries: OrderedDict[str, int] = OrderedDict()
        self.on_change: Any = None  # called after a change (the saver)

    def duplicate(self, msg: Message) -> bool:
        """Seen within its TTL: a duplicate. Else it is remembered now."""
        key = identity(msg)
        if key is None:
            return False
        now = int(time.time() * 1000)
        expiry = self.entries.get(key)
        if expiry is not None and (expiry == 0 or expiry > now):
            return True
        ttl = _ttl_header(msg) or self.ttl_ms
        entries = self.entries
        if expiry is not None:
            del entries[key]  # expired: it goes to the back as a new one
        entries[key] = now + ttl if ttl else 0
        if len(entries) > self.size:
            entries.popitem(last=False)
        if self.on_change is not None:
            self.on_change()
        return False

    def __len__(self) -> int:
        return len(self.entries)


def cache_file(store: Any, timers: Any, vhost: str, name: str, cache: Cache) -> KeptFile:
    """Where a durable exchange's cache is kept; what was kept is loaded into it."""
    digest = hashlib.sha1(f"{vhost}\0{name}".encode()).hexdigest()
    kept = KeptFile(store, timers, f"{DIRECTORY}/{digest}.json",
                    lambda: list(cache.entries.items()), SAVE_DELAY)
    now = int(time.time() * 1000)
    for key, expiry in kept.load() or ():
        if expiry == 0 or expiry > now:
            cache.entries[str(key)] = int(expiry)
    cache.on_change = kept.later
    return kept


class QueueIdentities:
    """A queue's identities of the messages in it (queue-level deduplication)."""

    def __init__(self) -> None:
        self.keys: set[str] = set()

    def admit(self, msg: Message) -> bool:
        """False: a message with its identity is in the queue (drop this one)."""
        key = identity(msg)
        if key is None:
            return True
        if key in self.keys:
            return False
        self.keys.add(key)
        return True

    def forget_all(self) -> None:
        self.keys.clear()

    def left(self, msg: Message) -> None:
        key = identity(msg)
        if key is not None:
            self.keys.discard(key)
