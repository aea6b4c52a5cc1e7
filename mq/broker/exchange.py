"""Exchanges and their routing tables (the tables themselves live in the Cython core)."""
from __future__ import annotations

import re
from typing import Any, Iterable

from mq._core.headers import HeadersMatcher
from mq._core.hashring import MAX_WEIGHT, HashRing
from mq._core.message import Message
from mq._core.topic import TopicTable
from mq.broker.args import _fmt, _type_name, freeze
from mq.broker.errors import PreconditionFailed
from mq.broker.policy import Policy, exchange_alternate


class Binding:
    """source --routing_key/arguments--> destination (a queue or an exchange)."""

    __slots__ = ("source", "destination", "routing_key", "arguments", "key")

    def __init__(self, source: Exchange, destination: Any, routing_key: str, arguments: dict) -> None:
        self.source = source
        self.destination = destination
        self.routing_key = routing_key
        self.arguments = arguments
        self.key = (id(destination), routing_key, freeze(arguments))


class Exchange:
    """Common state and binding bookkeeping; subclasses keep a table fit for their type."""

    type = ""
    # Holds delayed messages back (mq.broker.delayed): a route cached for a key holds only
    # for messages with a positive x-delay.
    delays = False

    def __init__(self, vhost: str, name: str, durable: bool = False, auto_delete: bool = False,
                 internal: bool = False, arguments: dict | None = None) -> None:
        self.vhost = vhost
        self.name = name
        self.durable = durable
        self.auto_delete = auto_delete
        self.internal = internal
        self.arguments = dict(arguments or {})
        self.bindings: dict[tuple, Binding] = {}
        # The exchange named by the `alternate-exchange` argument (looked up when routing).
        self.alternate: str | None = _alternate_name(self.arguments, name, vhost)
        self.policy: Policy | None = None  # set by the vhost (set_policy)
        self.has_exchange_destinations = 0
        self.incoming: dict[tuple, Binding] = {}  # exchange-to-exchange bindings leading here
        # Deduplication (mq.broker.dedup): the identities seen, and where they are kept.
        self.dedup: Any = None
        self.dedup_file: Any = None

    def set_policy(self, policy: Policy | None) -> None:
        """Another policy applies (None: none): its alternate-exchange counts when the
        arguments name none."""
        self.policy = policy
        self.alternate = exchange_alternate(_alternate_name(self.arguments, self.name,
                                                            self.vhost), policy)

    def bind(self, destination: Any, routing_key: str, arguments: dict) -> Binding | None:
        """Add a binding; None if it already existed."""
        binding = Binding(self, destination, routing_key, arguments)
        if binding.key in self.bindings:
            return None
        self._add(binding)
        self.bindings[binding.key] = binding
        if isinstance(destination, Exchange):
            self.has_exchange_destinations += 1
        return binding

    def find_binding(self, destination: Any, routing_key: str, arguments: dict) -> Binding | None:
        return self.bindings.get((id(destination), routing_key, freeze(arguments)))

    def unbind(self, destination: Any, routing_key: str, arguments: dict) -> Binding | None:
        """Remove a binding; None if there was none."""
        binding = self.find_binding(destination, routing_key, arguments)
        if binding is not None:
            del self.bindings[binding.key]
            self._remove(binding)
            if isinstance(destination, Exchange):
                self.has_exchange_destinations -= 1
        return binding

    def bindings_to(self, destination: Any) -> list[Binding]:
        return [b for b in self.bindings.values() if b.destination is destination]

    def route(self, msg: Message, key: str) -> Iterable[Any]:
        """The destinations a message reaches directly by one of its routing keys."""
        raise NotImplementedError

    def _add(self, binding: Binding) -> None:
        raise NotImplementedError

    def _remove(self, binding: Binding) -> None:
        raise NotImplementedError


def _alternate_name(arguments: dict, name: str, vhost: str) -> str | None:
    """The `alternate-exchange` argument, which must be a string (406 as in RabbitMQ)."""
    value = arguments.get("alternate-exchange")
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "surrogateescape")
    if not isinstance(value, str):
        raise PreconditionFailed(f"invalid type '{_type_name(value)}' for arg 'alternate-exchange' "
                                 f"in exchange '{name}' in vhost '{vhost}'")
    return value or None


class DirectExchange(Exchange):
    type = "direct"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._table: dict[str, dict[Any, None]] = {}

    def _add(self, binding: Binding) -> None:
        dests = self._table.setdefault(binding.routing_key, {})
        dests[binding.destination] = None

    def _remove(self, binding: Binding) -> None:
        dests = self._table[binding.routing_key]
        # Another binding with the same key and other arguments may still point there.
        if not any(b.destination is binding.destination and b.routing_key == binding.routing_key
                   for b in self.bindings.values()):
            dests.pop(binding.destination, None)
        if not dests:
            del self._table[binding.routing_key]

    def route(self, msg: Message, key: str) -> Iterable[Any]:
        return self._table.get(key, ())


class DefaultExchange(DirectExchange):
    """The nameless exchange: every queue is bound to it by its own name, implicitly."""

    def __init__(self, vhost: str, queues: dict[str, Any], replies: dict[str, Any]) -> None:
        super().__init__(vhost, "", durable=True)
        self._queues = queues
        self._replies = replies  # direct reply-to pseudo-queues, by their generated names

    def route(self, msg: Message, key: str) -> Iterable[Any]:
        queue = self._queues.get(key)
        if queue is None:
            queue = self._replies.get(key)
        return () if queue is None else (queue,)


class FanoutExchange(Exchange):
    type = "fanout"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._dests: dict[Any, int] = {}

    def _add(self, binding: Binding) -> None:
        self._dests[binding.destination] = self._dests.get(binding.destination, 0) + 1

    def _remove(self, binding: Binding) -> None:
        left = self._dests[binding.destination] - 1
        if left:
            self._dests[binding.destination] = left
        else:
            del self._dests[binding.destination]

    def route(self, msg: Message, key: str) -> Iterable[Any]:
        return self._dests


class TopicExchange(Exchange):
    type = "topic"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._table = TopicTable()

    def _add(self, binding: Binding) -> None:
        self._table.bind(binding.routing_key, binding.destination)

    def _remove(self, binding: Binding) -> None:
        if not any(b.destination is binding.destination and b.routing_key == binding.routing_key
                   for b in self.bindings.values()):
            self._table.unbind(binding.routing_key, binding.destination)

    def route(self, msg: Message, key: str) -> Iterable[Any]:
        return self._table.match(key)


class HeadersExchange(Exchange):
    type = "headers"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._matchers: dict[tuple, tuple[HeadersMatcher, Any]] = {}

    def bind(self, destination: Any, routing_key: str, arguments: dict) -> Binding | None:
        try:
            HeadersMatcher(arguments)
        except ValueError:
            raise PreconditionFailed(_x_match_error(arguments.get("x-match"))) from None
        return super().bind(destination, routing_key, arguments)

    def _add(self, binding: Binding) -> None:
        self._matchers[binding.key] = (HeadersMatcher(binding.arguments), binding.destination)

    def _remove(self, binding: Binding) -> None:
        del self._matchers[binding.key]

    def route(self, msg: Message, key: str) -> Iterable[Any]:
        headers = msg.headers
        return {dest: None for matcher, dest in self._matchers.values() if matcher.matches(headers)}


def _x_match_error(x_match: Any) -> str:
    """RabbitMQ's wording (Erlang terms included) for an x-match the matcher refused."""
    if isinstance(x_match, str):
        return (f"Invalid x-match field value <<\"{x_match}\">>; expected all, any, "
                "all-with-x, or any-with-x")
    return f"Invalid x-match field type {_type_name(x_match)} (value {_fmt(x_match)}); expected longstr"


# What RabbitMQ's consistent-hash exchange can hash instead of the routing key.
HASH_PROPERTIES = ("correlation_id", "message_id", "timestamp")
_INTEGER = re.compile(r"[+-]?[0-9]+")  # what Erlang's list_to_integer accepts


class ConsistentHashExchange(Exchange):
    """x-consistent-hash: the binding key is a weight; a hash of the routing key (or of the
    header / property named by `hash-header` / `hash-property`) picks one queue."""

    type = "x-consistent-hash"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ring = HashRing()
        self._hash_header = self.arguments.get("hash-header")
        self._hash_property = self.arguments.get("hash-property")
        if self._hash_header is not None and self._hash_property is not None:
            raise PreconditionFailed(
                "hash-header and hash-property are mutually exclusive on exchange "
                f"'{self.name}' in vhost '{self.vhost}'")
        if self._hash_property is not None and self._hash_property not in HASH_PROPERTIES:
            raise PreconditionFailed(f"Unsupported property: {self._hash_property}")

    def bind(self, destination: Any, routing_key: str, arguments: dict) -> Binding | None:
        # RabbitMQ's texts; the upper bound is ours (the ring refuses more: MAX_WEIGHT).
        if not _INTEGER.fullmatch(routing_key):
            raise PreconditionFailed(f'The binding key must be an integer: <<"{routing_key}">>')
        weight = int(routing_key)
        if weight < 1:
            raise PreconditionFailed("The binding key must be greater than 0")
        if weight > MAX_WEIGHT:
            raise PreconditionFailed(f"The binding key must be at most {MAX_WEIGHT}")
        if any(b.destination is destination for b in self.bindings.values()):
            return None  # one ring entry per destination, as RabbitMQ keeps
        return super().bind(destination, routing_key, arguments)

    def _add(self, binding: Binding) -> None:
        self._ring.add(binding.destination, _dest_name(binding.destination), int(binding.routing_key))

    def _remove(self, binding: Binding) -> None:
        self._ring.remove(binding.destination)

    def _hash_key(self, msg: Message, key: str) -> str:
        # Without the header / property every message hashes alike: RabbitMQ documents that
        # they all go to one (arbitrary) queue.
        if self._hash_header is not None:
            value = (msg.headers or {}).get(self._hash_header)
            return "" if value is None else str(value)
        if self._hash_property is not None:
            from mq.broker.properties import property_value
            value = property_value(msg, self._hash_property)
            return "" if value is None else str(value)
        return key

    def route(self, msg: Message, key: str) -> Iterable[Any]:
        dest = self._ring.pick(self._hash_key(msg, key))
        return () if dest is None else (dest,)


def _dest_name(destination: Any) -> str:
    kind = "exchange" if isinstance(destination, Exchange) else "queue"
    return f"{kind}:{destination.name}"


class DeduplicationExchange(FanoutExchange):
    """The rabbitmq-message-deduplication plugin's exchange: fanout routing of what its
    cache does not hold already (the cache is mq.broker.dedup's)."""

    type = "x-message-deduplication"


EXCHANGE_TYPES: dict[str, type[Exchange]] = {
    cls.type: cls for cls in (DirectExchange, FanoutExchange, TopicExchange, HeadersExchange,
                              ConsistentHashExchange, DeduplicationExchange)
}
