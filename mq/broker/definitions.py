"""Definitions export/import in the JSON shape of RabbitMQ's (users, vhosts, permissions,
policies, exchanges, queues, bindings), so files move between the two brokers."""
from __future__ import annotations

import json
import os
from typing import Any

import mq
from mq.broker.auth import Permission, TopicPermission, User, check_pattern, hash_password
from mq.broker.errors import NotFound
from mq.broker.policy import policy_from_json

HASHING = "rabbit_password_hashing_sha256"


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


def save_access(broker: Any, data_dir: str) -> None:
    """Users, vhosts, permissions and policies as they are now (the definitions format),
    replaced atomically in the data dir, so changes made at run time survive a restart."""
    exported = export_definitions(broker)
    path = os.path.join(data_dir, ACCESS_FILE)
    with open(path + ".tmp", "w") as fh:
        json.dump({key: exported[key] for key in ("users", "vhosts", "permissions",
                                                  "topic_permissions", "policies")}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(path + ".tmp", path)


def load_access(broker: Any, data_dir: str) -> bool:
    """At start: the saved users and permissions replace the defaults (a deleted guest
    stays deleted). False when nothing was saved."""
    path = os.path.join(data_dir, ACCESS_FILE)
    if not os.path.exists(path):
        return False
    with open(path) as fh:
        data = json.load(fh)
    broker.users.users.clear()
    import_definitions(broker, data)
    return True

