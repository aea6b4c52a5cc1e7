"""Definitions export/import in the JSON shape of RabbitMQ's (users, vhosts, permissions,
policies, exchanges, queues, bindings), so files move between the two brokers."""
from __future__ import annotations

import contextlib
import json
import logging
import os
from typing import Any

import mq
from mq.broker.auth import Permission, TopicPermission, User, check_pattern, hash_password
from mq.broker.errors import AMQPError, NotFound
from mq.broker.policy import policy_from_json

HASHING = "rabbit_password_hashing_sha256"

log = logging.getLogger("mq.broker")


def export_definitions(broker: Any) -> dict:
    """Users, vhosts, permissions and the durable topology, as RabbitMQ exports them."""
    users, permissions, topic_permissions = [], [], []
    for user in broker.users.users.values():
        users.append({"name": user.name, "password_hash": user.password_hash,
                      "hashing_algorithm": HASHING, "tags": list(user.tags), "limits": {}})
        for vhost, perm in user.permissions.items():
            permissions.append({"user": user.name, "vhost": vhost, "configure": perm.configure,
                                "write": perm.write, "read": perm.read})
        topic_permissions.extend(topic_permission_json(user, vhost, exchange, perm)
                                 for (vhost, exchange), perm in user.topic_permissions.items())
    exchanges, queues, bindings = [], [], []
    for vhost in broker.vhosts.values():
        for ex in vhost.exchanges.values():
            if ex.durable and ex.name and not ex.name.startswith("amq."):
                exchanges.append({"name": ex.name, "vhost": vhost.name, "type": ex.type,
                                  "durable": True, "auto_delete": ex.auto_delete,
                                  "internal": ex.internal, "arguments": dict(ex.arguments)})
            for b in ex.bindings.values():
                if ex.name and ex.durable and b.destination.durable:
                    bindings.append({
                        "source": ex.name, "vhost": vhost.name,
                        "destination": b.destination.name,
                        "destination_type": "queue" if hasattr(b.destination, "ready")
                        else "exchange",
                        "routing_key": b.routing_key, "arguments": dict(b.arguments)})
        for q in vhost.queues.values():
            if q.durable and not q.exclusive:
                queues.append({"name": q.name, "vhost": vhost.name, "durable": True,
                               "auto_delete": q.auto_delete, "arguments": dict(q.arguments)})
    return {
        "rabbit_version": "3.10.8", "rabbitmq_version": "3.10.8",
        "product_name": "mq", "product_version": mq.__version__,
        "users": users,
        "vhosts": [{"name": v, "limits": [], "metadata": {"description": "", "tags": []}}
                   for v in broker.vhosts],
        "permissions": permissions, "topic_permissions": topic_permissions, "parameters": [],
        "global_parameters": [],
        "policies": [p.as_json() for v in broker.vhosts.values() for p in v.policies.values()],
        "queues": queues, "exchanges": exchanges, "bindings": bindings,
    }


def topic_permission_json(user: User, vhost: str, exchange: str,
                          perm: TopicPermission) -> dict[str, str]:
    """RabbitMQ's shape of one topic permission (definitions and management API)."""
    return {"user": user.name, "vhost": vhost, "exchange": exchange, "write": perm.write,
            "read": perm.read}


def topic_permission_from_json(body: dict) -> TopicPermission:
    """B-AUTH-1: write/read patterns from a definitions entry or an API body; ValueError
    when one is not a regular expression."""
    return TopicPermission(check_pattern(str(body.get("write", ""))),
                           check_pattern(str(body.get("read", ""))))


def import_definitions(broker: Any, data: dict) -> None:
    """Create what the file names; existing objects are kept (declares are idempotent)."""
    for v in data.get("vhosts", []):
        broker.add_vhost(v["name"])
    for u in data.get("users", []):
        tags = u.get("tags", [])
        if isinstance(tags, str):  # older RabbitMQ files: comma-separated
            tags = [t for t in tags.split(",") if t]
        password_hash = u.get("password_hash") or hash_password(u.get("password", ""))
        old = broker.users.users.get(u["name"])
        broker.users.users[u["name"]] = User(u["name"], password_hash, list(tags),
                                             old.permissions if old else {},
                                             old.topic_permissions if old else {})
    for p in data.get("permissions", []):
        user = broker.users.users.get(p["user"])
        if user is None:
            raise NotFound(f"no user '{p['user']}' for permissions in the definitions")
        user.permissions[p["vhost"]] = Permission(p.get("configure", ""), p.get("write", ""),
                                                  p.get("read", ""))
    for p in data.get("topic_permissions", []):
        user = broker.users.users.get(p["user"])
        if user is None:
            raise NotFound(f"no user '{p['user']}' for topic permissions in the definitions")
        user.topic_permissions[(p["vhost"], p["exchange"])] = topic_permission_from_json(p)
    policies: dict[str, list] = {}  # by vhost, to match each object once per vhost
    for p in data.get("policies", []):  # InvalidPolicy for one RabbitMQ would refuse
        policies.setdefault(p["vhost"], []).append(policy_from_json(p["vhost"], p["name"], p))
    for vhost_name, vhost_policies in policies.items():
        broker.add_vhost(vhost_name).set_policy(*vhost_policies)
    for x in data.get("exchanges", []):
        broker.add_vhost(x["vhost"]).declare_exchange(
            x["name"], x.get("type", "direct"), durable=x.get("durable", True),
            auto_delete=x.get("auto_delete", False), internal=x.get("internal", False),
            arguments=x.get("arguments") or {})
    for q in data.get("queues", []):
        broker.add_vhost(q["vhost"]).declare_queue(
            q["name"], durable=q.get("durable", True), auto_delete=q.get("auto_delete", False),
            arguments=q.get("arguments") or {})
    for b in data.get("bindings", []):
        vhost = broker.add_vhost(b["vhost"])
        source = vhost.get_exchange(b["source"])
        if b.get("destination_type", "queue") == "queue":
            destination = vhost.get_queue(b["destination"])
        else:
            destination = vhost.get_exchange(b["destination"])
        vhost.bind(source, destination, b.get("routing_key", ""), b.get("arguments") or {})


ACCESS_FILE = "access.json"  # in the data dir: users, vhosts, (topic) permissions, policies
_ACCESS_KEYS = ("users", "vhosts", "permissions", "topic_permissions", "policies")


class AccessFileError(SystemExit):
    """access.json exists but cannot be used. A SystemExit, so that the broker stops at start
    with this one line (as for a bad --definitions file) rather than a traceback, and never
    falls back to the default guest user in place of what the operator saved."""


def _sync_dir(path: str) -> None:
    """Make the directory's entries (a rename) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_access(broker: Any, data_dir: str) -> None:
    """B-DUR-1: users, vhosts, permissions and policies as they are now (the definitions
    format), kept in the data dir so that changes made at run time survive a restart or a
    crash. Crash-safe: the new content is written to access.json.tmp and fsynced, renamed
    over access.json, and the directory is fsynced, so a crash at any point leaves either
    the old or the new complete file (a leftover .tmp is removed at start); when this
    returns, the change is on disk. In two steps for a caller on the event loop (B-DUR-9):
    access_content() there, write_access() (the disk) in a worker thread."""
    write_access(access_content(broker), data_dir)


def access_content(broker: Any) -> bytes:
    """What save_access writes: the broker's access state as it is now."""
    exported = export_definitions(broker)
    return json.dumps({key: exported[key] for key in _ACCESS_KEYS}).encode()


def write_access(data: bytes, data_dir: str) -> None:
    """save_access's disk part: data to access.json, crash-safe, fsynced. Callers keep
    their writes one at a time (they share access.json.tmp)."""
    path = os.path.join(data_dir, ACCESS_FILE)
    tmp = path + ".tmp"
    try:
        # 0600: it holds password hashes.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # access.json itself is untouched: the old state stays
        raise
    _sync_dir(data_dir)


def load_access(broker: Any, data_dir: str) -> bool:
    """At start: the saved users and permissions replace the defaults (a deleted guest
    stays deleted). False when nothing was saved (first start: the defaults stay). A
    leftover access.json.tmp (a crash during a save, before its rename) is removed: the
    access.json beside it is the last complete save. A file that is there but unreadable
    or malformed stops the start with AccessFileError, saying what is wrong."""
    path = os.path.join(data_dir, ACCESS_FILE)
    tmp = path + ".tmp"
    if os.path.lexists(tmp):
        log.warning("removing %s left by an interrupted save; %s is the last complete one",
                    tmp, ACCESS_FILE)
        os.unlink(tmp)
    try:
        with open(path, "rb") as fh:
            text = fh.read()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise _access_error(path, f"cannot be read: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise _access_error(path, f"is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(key, []), list)
                                             for key in _ACCESS_KEYS):
        raise _access_error(path, "is not a definitions object (users, vhosts, permissions, "
                                  "topic_permissions and policies lists)")
    broker.users.users.clear()
    try:
        import_definitions(broker, data)
    except AMQPError as exc:
        raise _access_error(path, exc.text) from None
    except KeyError as exc:
        raise _access_error(path, f"has an entry without {exc}") from None
    except (ValueError, TypeError, AttributeError) as exc:  # bad policy, wrong types
        raise _access_error(path, str(exc)) from None
    return True


def _access_error(path: str, reason: str) -> AccessFileError:
    text = (f"{path} {reason}; it holds the users, vhosts, permissions and policies saved "
            f"at run time: repair it, or move it away to start with the default guest user")
    log.error("cannot start: %s", text)
    return AccessFileError(f"mq: {text}")
