"""Policies (RabbitMQ 3.10's `rabbitmqctl set_policy`, /api/policies, `policies` in
definitions): validation with RabbitMQ's messages, matching, and merging with arguments.

At most one policy applies to a queue or exchange: among those of its vhost whose apply-to
covers its kind and whose pattern is found in its name, the highest priority; on a tie, the
lowest name (what RabbitMQ 3.10 picks: rabbit_policy sorts stably on priority a list that
comes out ordered by name). Operator policies are not implemented.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Callable

from mq.broker.queue_args import OVERFLOW_MODES, QUEUE_MODES, QueueSettings

APPLY_TO = ("queues", "exchanges", "all")
Check = Callable[[Any], "str | None"]  # a value's error message, None when it is fine


class InvalidPolicy(ValueError):
    """A policy RabbitMQ would refuse; the text is RabbitMQ's (without its
    "Validation failed" wrapper)."""


def _erl(value: Any) -> str:
    """A JSON value as Erlang's ~p prints its decoded term, as RabbitMQ's messages show it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '<<"' + value.replace("\\", "\\\\").replace('"', '\\"') + '">>'
    if isinstance(value, list):
        return "[" + ",".join(_erl(v) for v in value) + "]"
    if isinstance(value, dict):
        return "#{" + ",".join(f"{_erl(k)} => {_erl(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _integer(minimum: int, what: str) -> Check:
    def check(value: Any) -> str | None:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
        return None if ok else f"{_erl(value)} is not a valid {what}"
    return check


def _string(what: str) -> Check:
    return lambda value: None if isinstance(value, str) else f"{_erl(value)} is not a valid {what}"


def _one_of(allowed: tuple, what: str) -> Check:
    def check(value: Any) -> str | None:  # as Erlang matches: 1 is not true, nor 1.0
        ok = any(type(value) is type(a) and value == a for a in allowed)
        return None if ok else f"{_erl(value)} is not a valid {what}"
    return check


def _max_age(value: Any) -> str | None:
    ok = isinstance(value, str) and re.fullmatch(r"[0-9]+[YMDhms]", value) is not None
    return None if ok else f"{_erl(value)} is not a valid max age"


def _mirroring(definition: dict) -> str | None:
    """Classic mirroring's keys, checked together (rabbit_mirror_queue_misc)."""
    get = definition.get
    if "ha-mode" not in definition:
        if any(key in definition for key in MIRRORING_KEYS):
            return ("ha-mode must be specified to specify ha-params, ha-sync-mode or "
                    "ha-promote-on-shutdown")
        return None
    mode, params = get("ha-mode"), get("ha-params")
    given = "none" if "ha-params" not in definition else _erl(params)
    if mode == "all" and "ha-params" in definition:
        return 'ha-mode="all" does not take parameters'
    if mode == "exactly" and not (isinstance(params, int) and not isinstance(params, bool)
                                  and params > 0):
        return f'ha-mode="exactly" takes an integer, {given} given'
    if mode == "nodes" and not (isinstance(params, list) and params
                                and all(isinstance(n, str) for n in params)):
        return f'ha-mode="nodes" takes a list, {given} given'
    if mode not in ("all", "exactly", "nodes"):
        return f"{_erl(mode)} is not a valid ha-mode value"
    if get("ha-sync-mode", "manual") not in ("manual", "automatic"):
        return f'ha-sync-mode must be "manual" or "automatic", got {_erl(get("ha-sync-mode"))}'
    size = get("ha-sync-batch-size", 1)
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        return f"ha-sync-batch-size takes an integer greater than 0, {_erl(size)} given"
    for key in ("ha-promote-on-shutdown", "ha-promote-on-failure"):
        if get(key, "always") not in ("always", "when-synced"):
            return f'{key} must be "always" or "when-synced", got {_erl(get(key))}'
    return None


MIRRORING_KEYS = ("ha-mode", "ha-params", "ha-sync-mode", "ha-sync-batch-size",
                  "ha-promote-on-shutdown", "ha-promote-on-failure")
# The policy keys RabbitMQ 3.10 recognises (rabbit_policies, rabbit_mirror_queue_misc,
# rabbit_queue_location_validator) and their checks, with RabbitMQ's messages. Those for
# features mq does not have (mirroring, streams, in-memory limits, locators, queue
# version) are checked and accepted so that existing definitions load, without effect.
VALIDATORS: dict[str, Check] = {
    "alternate-exchange": _string("alternate exchange name"),
    "dead-letter-exchange": _string("dead letter exchange name"),
    "dead-letter-routing-key": _string("dead letter routing key"),
    "message-ttl": _integer(0, "message TTL"),
    "expires": _integer(1, "queue expiry"),
    "max-length": _integer(0, "maximum length"),
    "max-length-bytes": _integer(0, "maximum length in bytes"),
    "overflow": _one_of(OVERFLOW_MODES, "overflow value"),
    "queue-mode": _one_of(QUEUE_MODES, "queue-mode value"),
    "delivery-limit": _integer(0, "delivery limit"),
    "max-in-memory-length": _integer(0, "maximum memory in bytes"),
    "max-in-memory-bytes": _integer(0, "maximum memory in bytes"),
    "queue-version": _one_of((1, 2), "queue-version value"),
    "dead-letter-strategy": _one_of(("at-most-once", "at-least-once"), "dead letter strategy"),
    "max-age": _max_age,
    "stream-max-segment-size-bytes": _integer(0, "segment size"),
    "initial-cluster-size": _integer(0, "cluster size"),
    "queue-leader-locator": _one_of(("client-local", "balanced", "random", "least-leaders"),
                                    "queue leader locator value"),
    "queue-master-locator": lambda value: None if value in (
        "min-masters", "client-local", "random") else
    f"{_erl(value)} invalid queue-master-locator value",
    **{key: lambda value: None for key in MIRRORING_KEYS},  # checked together: _mirroring
}

# Queue settings a policy can give: the lower of argument and policy wins for these
# (rabbit_queue_type_util:args_policy_lookup with min) ...
_LOWER_WINS = {"message-ttl": "message_ttl", "expires": "expires", "max-length": "max_length",
               "max-length-bytes": "max_length_bytes", "delivery-limit": "delivery_limit"}
# ... and the queue's own argument wins for these.
_ARGUMENT_WINS = {"dead-letter-exchange": "dead_letter_exchange",
                  "dead-letter-routing-key": "dead_letter_routing_key", "overflow": "overflow"}


@dataclass(frozen=True)
class Policy:
    vhost: str
    name: str
    pattern: str
    apply_to: str
    priority: int
    definition: dict
    regex: re.Pattern = dataclasses.field(compare=False, repr=False)

    def applies(self, kind: str, name: str) -> bool:
        """kind: "queues" or "exchanges"; the pattern is searched in the name (re:run)."""
        return self.apply_to in (kind, "all") and self.regex.search(name) is not None

    def as_json(self) -> dict:
        """RabbitMQ's shape (definitions files, /api/policies)."""
        return {"vhost": self.vhost, "name": self.name, "pattern": self.pattern,
                "apply-to": self.apply_to, "definition": dict(self.definition),
                "priority": self.priority}


def validate_definition(definition: Any) -> dict:
    """Known keys are checked in sorted order (as RabbitMQ sees them), then any unknown
    ones are refused together."""
    if not isinstance(definition, dict):
        raise InvalidPolicy(f"definition must be a dictionary: {_erl(definition)}")
    if not definition:
        raise InvalidPolicy("no policy provided")
    for key in sorted(definition):
        check = VALIDATORS.get(key)
        error = check(definition[key]) if check is not None else None
        if error is not None:
            raise InvalidPolicy(error)
    error = _mirroring(definition)
    if error is not None:
        raise InvalidPolicy(error)
    unknown = [f"{{{_erl(k)},{_erl(definition[k])}}}" for k in sorted(definition)
               if k not in VALIDATORS]
    if unknown:
        raise InvalidPolicy(f"[{','.join(unknown)}] are not recognised policy settings")
    return dict(definition)


def make_policy(vhost: str, name: str, pattern: Any, definition: Any, priority: Any = 0,
                apply_to: Any = "all") -> Policy:
    """A validated policy, or InvalidPolicy with RabbitMQ's message."""
    if isinstance(priority, bool) or not isinstance(priority, (int, float)):
        raise InvalidPolicy(f"priority should be a number, actually was {_erl(priority)}")
    if not isinstance(pattern, str):
        raise InvalidPolicy(f"pattern should be regular expression but is invalid: "
                            f"{_erl(pattern)}")
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise InvalidPolicy(f"pattern should be regular expression but is invalid: "
                            f"{{\"{exc.msg}\",{exc.pos}}}") from None
    if apply_to not in APPLY_TO:
        raise InvalidPolicy(f"apply-to '{apply_to}' unrecognised; should be 'queues', "
                            "'exchanges' or 'all'")
    return Policy(vhost, name, pattern, apply_to, int(priority),
                  validate_definition(definition), regex)


def policy_from_json(vhost: str, name: str, body: Any) -> Policy:
    """{"pattern", "definition", "priority", "apply-to"} as the API and definitions give it."""
    if not isinstance(body, dict):
        raise InvalidPolicy(f"policy must be a dictionary: {_erl(body)}")
    for key in ("pattern", "definition"):
        if key not in body:
            raise InvalidPolicy(f'Key "{key}" not found in policy')
    return make_policy(vhost, name, body["pattern"], body["definition"],
                       body.get("priority", 0), body.get("apply-to", "all"))


def select(policies: dict[str, Policy], kind: str, name: str) -> Policy | None:
    """The one policy that applies to an object: highest priority, then lowest name."""
    best = None
    for policy in policies.values():
        if policy.applies(kind, name) and (
                best is None or policy.priority > best.priority
                or (policy.priority == best.priority and policy.name < best.name)):
            best = policy
    return best


def merge_queue_settings(settings: QueueSettings, arguments: dict,
                         policy: Policy | None) -> QueueSettings:
    """A queue's effective settings: its arguments' settings with the policy's merged in,
    key by key, as rabbit_amqqueue_process does (a dead-letter routing key from the policy
    joins a dead-letter exchange from the arguments)."""
    if policy is None:
        return settings
    changes: dict[str, Any] = {}
    for key, field in _LOWER_WINS.items():
        if key in policy.definition:
            own = getattr(settings, field)
            value = policy.definition[key]
            changes[field] = value if own is None else min(own, value)
    for key, field in _ARGUMENT_WINS.items():
        if key in policy.definition and "x-" + key not in arguments:
            changes[field] = policy.definition[key]
    return dataclasses.replace(settings, **changes)


def exchange_alternate(argument: str | None, policy: Policy | None) -> str | None:
    """The alternate exchange: the `alternate-exchange` argument, else the policy's."""
    if argument is not None or policy is None:
        return argument
    return policy.definition.get("alternate-exchange") or None
