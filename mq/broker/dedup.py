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
a cluster) within SAVE_DELAY of a change (longer for a big busy cache: mq.broker.keptfile)
and comes back after a restart, unless `x-cache-persistence` is "memory". (The plugin keeps
it only with "disk"; here a durable object's cache survives by default, as the behaviour
contract asks.) A crash may forget the identities of the last interval.
"""
from __future__ import annotations

import hashlib
import time
from typing import Any

from mq._core.dedup import Cache
from mq.broker.errors import PreconditionFailed
from mq.broker.keptfile import KeptFile

ARGUMENT = "x-message-deduplication"
EXCHANGE_TYPE = "x-message-deduplication"
DIRECTORY = "dedup"
SAVE_DELAY = 0.2  # seconds: changes within it are saved together


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


def cache_file(store: Any, timers: Any, vhost: str, name: str, cache: Cache) -> KeptFile:
    """Where a durable exchange's cache is kept; what was kept is loaded into it."""
    digest = hashlib.sha1(f"{vhost}\0{name}".encode()).hexdigest()
    kept = KeptFile(store, timers, f"{DIRECTORY}/{digest}.json",
                    lambda: [[key.decode("utf-8", "surrogateescape"), expiry]
                             for key, expiry in cache.items()], SAVE_DELAY)
    now = int(time.time() * 1000)
    for key, expiry in kept.load() or ():
        if expiry == 0 or expiry > now:
            cache.restore(str(key).encode("utf-8", "surrogateescape"), int(expiry))
    cache.on_change = kept.later
    return kept
