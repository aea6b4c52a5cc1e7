"""`mq ctl`: the operator's command line, a client of the management HTTP API (urllib only).

    mq ctl list queues
    mq ctl declare-queue orders --arg x-max-length=1000
    mq ctl --url http://broker:15672 --user admin --password s3cret export defs.json
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from mq import ctl_policies

# Columns of `list` tables (dotted names reach into nested objects).
COLUMNS = {
    "queues": ("vhost", "name", "messages", "messages_ready", "messages_unacknowledged",
               "consumers", "durable"),
    "exchanges": ("vhost", "name", "type", "durable", "auto_delete", "internal"),
    "bindings": ("vhost", "source", "destination", "destination_type", "routing_key"),
    "connections": ("name", "user", "vhost", "peer_host", "peer_port", "channels", "state"),
    "channels": ("name", "user", "vhost", "consumer_count", "messages_unacknowledged",
                 "prefetch_count"),
    "consumers": ("queue.vhost", "queue.name", "consumer_tag", "ack_required", "exclusive",
                  "prefetch_count"),
    "users": ("name", "tags"),
    "vhosts": ("name", "messages"),
    "permissions": ("user", "vhost", "configure", "write", "read"),
    "topic-permissions": ("user", "vhost", "exchange", "write", "read"),
    "policies": ctl_policies.COLUMNS,
}
# `cluster-status`: column, and the /api/nodes field it shows (B-CLUSTER-8).
CLUSTER_COLUMNS = (("name", "name"), ("role", "cluster_role"), ("in_sync", "in_sync"),
                   ("lag", "lag"), ("running", "running"), ("amqp_address", "amqp_address"))
VHOST_SCOPED = ("queues", "exchanges", "bindings", "consumers", "policies")


class ApiError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status}: {reason}")
        self.status, self.reason = status, reason


class ApiClient:
    """A small client of the management API: JSON in, JSON out, errors as ApiError."""

    def __init__(self, url: str = "http://127.0.0.1:15672", user: str = "guest",
                 password: str = "guest", timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.timeout = timeout

    def call(self, method: str, path: str, body: Any = None,
             headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """(HTTP status, decoded body); errors raise ApiError with RabbitMQ's reason."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Authorization": self.auth,
                                              "Content-Type": "application/json",
                                              **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                reason = json.loads(raw).get("reason", exc.reason)
            except ValueError:
                reason = exc.reason
            raise ApiError(exc.code, reason) from None
        if not raw:
            return status, None
        return status, json.loads(raw) if raw[:1] in (b"{", b"[") else raw.decode()

    def request(self, method: str, path: str, body: Any = None,
                headers: dict[str, str] | None = None) -> Any:
        return self.call(method, path, body, headers)[1]

    def get(self, path: str) -> Any:
        return self.request("GET", path)


def quote(name: str) -> str:
    """A path segment: vhost '/' is %2F, as the API wants."""
    return urllib.parse.quote(name, safe="")


def _cell(row: dict, column: str) -> str:
    value: Any = row
    for part in column.split("."):
        value = value.get(part, "") if isinstance(value, dict) else ""
    if isinstance(value, list):
        return ",".join(map(str, value))
    if isinstance(value, dict):  # a policy's definition
        return json.dumps(value)
    return "" if value is None else str(value)


def format_table(rows: list[dict], columns: tuple[str, ...]) -> str:
    cells = [list(columns)] + [[_cell(r, c) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip()
                     for row in cells)


def cluster_table(nodes: list[dict]) -> str:
    """`cluster-status`: one row per node (a field a broker does not give is blank)."""
    rows = [{column: node.get(field) for column, field in CLUSTER_COLUMNS} for node in nodes]
    return format_table(rows, tuple(column for column, _ in CLUSTER_COLUMNS))


def _arguments(pairs: list[str]) -> dict[str, Any]:
    """--arg k=v, the value read as JSON when it is (numbers, true), else as a string."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"mq ctl: --arg wants key=value, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mq ctl", description="Manage a running mq broker "
                                "through its management HTTP API.")
    p.add_argument("--url", default=os.environ.get("MQ_CTL_URL", "http://127.0.0.1:15672"),
                   help="management API URL (env MQ_CTL_URL)")
    # Own dests: subcommands have positionals named user and password.
    p.add_argument("--user", dest="api_user", default=os.environ.get("MQ_CTL_USER", "guest"),
                   help="user with the administrator tag (env MQ_CTL_USER)")
    p.add_argument("--password", dest="api_password",
                   default=os.environ.get("MQ_CTL_PASSWORD", "guest"),
                   help="env MQ_CTL_PASSWORD")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(name: str, help_: str, vhost: bool = True,
            aliases: list[str] | None = None) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help_, aliases=aliases or [])
        if vhost:
            c.add_argument("--vhost", default="/", help="virtual host (default /)")
        return c

    cmd("overview", "broker totals and message rates", vhost=False)
    cmd("cluster-status", "the cluster's nodes: role, in sync, replication lag (bytes)",
        vhost=False)
    c = cmd("list", "list objects", vhost=False)
    c.add_argument("what", choices=sorted(COLUMNS))
    c.add_argument("--vhost", help="only this vhost (queues, exchanges, bindings, consumers, "
                   "policies)")
    c = cmd("declare-queue", "declare a queue")
    c.add_argument("name")
    c.add_argument("--transient", action="store_true", help="not durable")
    c.add_argument("--auto-delete", action="store_true")
    c.add_argument("--arg", action="append", metavar="KEY=VALUE", help="x-arguments")
    c = cmd("add-super-stream", "a super stream: exchange NAME, partition streams NAME-<key>")
    c.add_argument("name")
    keys = c.add_mutually_exclusive_group(required=True)
    keys.add_argument("--partitions", type=int, help="partitions with keys 0..N-1")
    keys.add_argument("--routing-keys", help="comma-separated keys, one partition each")
    c.add_argument("--arg", action="append", metavar="KEY=VALUE",
                   help="x-arguments of the partition streams (x-max-age=7D, ...)")
    c = cmd("delete-queue", "delete a queue")
    c.add_argument("name")
    c.add_argument("--if-empty", action="store_true")
    c.add_argument("--if-unused", action="store_true")
    cmd("purge-queue", "drop a queue's ready messages").add_argument("name")
    c = cmd("declare-exchange", "declare an exchange")
    c.add_argument("name")
    c.add_argument("type", choices=("direct", "fanout", "topic", "headers",
                                    "x-consistent-hash"))
    c.add_argument("--transient", action="store_true", help="not durable")
    c.add_argument("--auto-delete", action="store_true")
    c.add_argument("--internal", action="store_true")
    c.add_argument("--arg", action="append", metavar="KEY=VALUE")
    c = cmd("delete-exchange", "delete an exchange")
    c.add_argument("name")
    c.add_argument("--if-unused", action="store_true")
    for name, help_ in (("bind", "bind a queue (or exchange) to an exchange"),
                        ("unbind", "remove a binding")):
        c = cmd(name, help_)
        c.add_argument("source", help="exchange")
        c.add_argument("destination", help="queue, or exchange with --to-exchange")
        c.add_argument("--routing-key", default="")
        c.add_argument("--to-exchange", action="store_true")
        c.add_argument("--arg", action="append", metavar="KEY=VALUE")
    c = cmd("publish", "publish a message (text payload)")
    c.add_argument("exchange", help="'' or amq.default for the default exchange")
    c.add_argument("routing_key")
    c.add_argument("payload")
    c = cmd("get", "fetch messages from a queue (requeued unless --ack)")
    c.add_argument("queue")
    c.add_argument("--count", type=int, default=1)
    c.add_argument("--ack", action="store_true", help="remove them from the queue")
    c = cmd("add-user", "create or update a user", vhost=False)
    c.add_argument("name")
    c.add_argument("password")
    c.add_argument("--tags", default="", help="comma-separated, e.g. administrator")
    cmd("delete-user", "delete a user", vhost=False).add_argument("name")
    cmd("add-vhost", "create a virtual host", vhost=False).add_argument("name")
    cmd("delete-vhost", "delete a virtual host and all in it", vhost=False).add_argument("name")
    c = cmd("set-permissions", "set a user's permissions on a vhost")
    c.add_argument("user")
    c.add_argument("--configure", default=".*")
    c.add_argument("--write", default=".*")
    c.add_argument("--read", default=".*")
    cmd("clear-permissions", "remove a user's permissions on a vhost").add_argument("user")
    c = cmd("set-topic-permissions", "set a user's routing key patterns on a topic exchange")
    c.add_argument("user")
    c.add_argument("exchange")
    c.add_argument("--write", default=".*", help="pattern for publishing (default .*)")
    c.add_argument("--read", default=".*", help="pattern for binding (default .*)")
    cmd("clear-topic-permissions", "remove a user's topic permissions on a vhost"
        ).add_argument("user")
    c = cmd("list-topic-permissions", "list topic permissions", vhost=False)
    c.add_argument("--vhost", help="only this vhost")
    c.set_defaults(what="topic-permissions")
    c = cmd("close-connection", "close a client connection (320 CONNECTION_FORCED)",
            vhost=False)
    c.add_argument("name", help="as `list connections` shows it")
    c.add_argument("--reason", default="Closed via mq ctl")
    cmd("export", "write the definitions (RabbitMQ's JSON) to a file, - for stdout",
        vhost=False).add_argument("file")
    cmd("import", "load definitions from a file, - for stdin", vhost=False).add_argument("file")
    ctl_policies.add_commands(cmd)
    return p


# Commands that are one request without a body: method, path, what to say when done.
_BODILESS = {
    "delete-user": ("DELETE", "/api/users/{name}", "user {name} deleted"),
    "add-vhost": ("PUT", "/api/vhosts/{name}", "vhost {name} added"),
    "delete-vhost": ("DELETE", "/api/vhosts/{name}", "vhost {name} deleted"),
    "clear-permissions": ("DELETE", "/api/permissions/{vhost}/{user}",
                          "permissions of {user} cleared"),
    "clear-topic-permissions": ("DELETE", "/api/topic-permissions/{vhost}/{user}",
                                "topic permissions of {user} cleared"),
}


def _add_super_stream(args: argparse.Namespace, client: ApiClient, vhost: str) -> str:
    """RabbitMQ's layout (rabbitmq-streams add_super_stream): a durable direct exchange
    with x-super-stream, a stream NAME-<key> per key, bound by the key with
    x-stream-partition-order."""
    keys = ([str(i) for i in range(args.partitions)] if args.partitions is not None
            else [k.strip() for k in args.routing_keys.split(",") if k.strip()])
    if not keys:
        raise ApiError(400, "a super stream needs at least one partition")
    client.request("PUT", f"/api/exchanges/{vhost}/{quote(args.name)}", {
        "type": "direct", "durable": True, "auto_delete": False, "internal": False,
        "arguments": {"x-super-stream": True}})
    arguments = {**_arguments(args.arg), "x-queue-type": "stream"}
    for order, key in enumerate(keys):
        partition = f"{args.name}-{key}"
        client.request("PUT", f"/api/queues/{vhost}/{quote(partition)}", {
            "durable": True, "auto_delete": False, "arguments": arguments})
        client.request("POST", f"/api/bindings/{vhost}/e/{quote(args.name)}/q/"
                       f"{quote(partition)}", {"routing_key": key,
                                               "arguments": {"x-stream-partition-order": order}})
    return f"super stream {args.name} added with {len(keys)} partitions"


def run(args: argparse.Namespace, client: ApiClient) -> Any:
    """Do the command; returns what to print (rows for lists, a dict, text or None)."""
    command = args.command
    vhost = quote(getattr(args, "vhost", None) or "/")
    if command == "overview":
        return client.get("/api/overview")
    if command == "cluster-status":
        return client.get("/api/nodes")
    if ctl_policies.is_policy_command(command):
        return ctl_policies.run(args, client, vhost)
    if command == "list":
        path = f"/api/{args.what}"
        if args.vhost and args.what in VHOST_SCOPED:
            path += "/" + quote(args.vhost)
        return client.get(path)
    if command == "declare-queue":
        client.request("PUT", f"/api/queues/{vhost}/{quote(args.name)}", {
            "durable": not args.transient, "auto_delete": args.auto_delete,
            "arguments": _arguments(args.arg)})
        return f"queue {args.name} declared"
    if command == "add-super-stream":
        return _add_super_stream(args, client, vhost)
    if command == "delete-queue":
        query = urllib.parse.urlencode({k: "true" for k, v in (
            ("if-empty", args.if_empty), ("if-unused", args.if_unused)) if v})
        client.request("DELETE", f"/api/queues/{vhost}/{quote(args.name)}"
                       + (f"?{query}" if query else ""))
        return f"queue {args.name} deleted"
    if command == "purge-queue":
        client.request("DELETE", f"/api/queues/{vhost}/{quote(args.name)}/contents")
        return f"queue {args.name} purged"
    if command == "declare-exchange":
        client.request("PUT", f"/api/exchanges/{vhost}/{quote(args.name)}", {
            "type": args.type, "durable": not args.transient,
            "auto_delete": args.auto_delete, "internal": args.internal,
            "arguments": _arguments(args.arg)})
        return f"exchange {args.name} declared"
    if command == "delete-exchange":
        client.request("DELETE", f"/api/exchanges/{vhost}/{quote(args.name)}"
                       + ("?if-unused=true" if args.if_unused else ""))
        return f"exchange {args.name} deleted"
    if command in ("bind", "unbind"):
        path = (f"/api/bindings/{vhost}/e/{quote(args.source)}/"
                f"{'e' if args.to_exchange else 'q'}/{quote(args.destination)}")
        arguments = _arguments(args.arg)
        if command == "bind":
            client.request("POST", path, {"routing_key": args.routing_key,
                                          "arguments": arguments})
            return f"bound {args.destination} to {args.source}"
        for binding in client.get(path):
            if binding["routing_key"] == args.routing_key and binding["arguments"] == arguments:
                client.request("DELETE", f"{path}/{quote(binding['properties_key'])}")
                return f"unbound {args.destination} from {args.source}"
        raise ApiError(404, "no such binding")
    if command == "publish":
        exchange = args.exchange or "amq.default"
        result = client.request("POST", f"/api/exchanges/{vhost}/{quote(exchange)}/publish", {
            "properties": {}, "routing_key": args.routing_key, "payload": args.payload,
            "payload_encoding": "string"})
        return "routed" if result["routed"] else "not routed"
    if command == "get":
        return client.request("POST", f"/api/queues/{vhost}/{quote(args.queue)}/get", {
            "count": args.count, "encoding": "auto",
            "ackmode": "ack_requeue_false" if args.ack else "ack_requeue_true"})
    if command == "add-user":
        client.request("PUT", f"/api/users/{quote(args.name)}",
                       {"password": args.password, "tags": args.tags})
        return f"user {args.name} added"
    if command in _BODILESS:
        method, path, done = _BODILESS[command]
        name, user = getattr(args, "name", ""), getattr(args, "user", "")
        client.request(method, path.format(vhost=vhost, name=quote(name), user=quote(user)))
        return done.format(name=name, user=user)
    if command == "set-permissions":
        client.request("PUT", f"/api/permissions/{vhost}/{quote(args.user)}", {
            "configure": args.configure, "write": args.write, "read": args.read})
        return f"permissions of {args.user} set"
    if command == "set-topic-permissions":
        client.request("PUT", f"/api/topic-permissions/{vhost}/{quote(args.user)}", {
            "exchange": args.exchange, "write": args.write, "read": args.read})
        return f"topic permissions of {args.user} on {args.exchange} set"
    if command == "list-topic-permissions":
        return client.get(f"/api/vhosts/{vhost}/topic-permissions" if args.vhost
                          else "/api/topic-permissions")
    if command == "close-connection":
        client.request("DELETE", f"/api/connections/{quote(args.name)}",
                       headers={"X-Reason": args.reason})
        return f"connection {args.name} closed"
    if command == "export":
        definitions = client.get("/api/definitions")
        text = json.dumps(definitions, indent=2)
        if args.file == "-":
            return text
        with open(args.file, "w") as fh:
            fh.write(text + "\n")
        return f"definitions written to {args.file}"
    if command == "import":
        if args.file == "-":
            data = json.load(sys.stdin)
        else:
            with open(args.file) as fh:
                data = json.load(fh)
        client.request("POST", "/api/definitions", data)
        return f"definitions imported from {args.file}"
    raise SystemExit(f"mq ctl: unknown command {command}")


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    client = ApiClient(args.url, args.api_user, args.api_password)
    try:
        result = run(args, client)
    except ApiError as exc:
        raise SystemExit(f"mq ctl: error {exc.status}: {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise SystemExit(f"mq ctl: cannot reach {args.url}: {exc.reason}") from None
    if result is None:
        return
    if args.json:
        print(json.dumps(result, indent=2) if not isinstance(result, str)
              else json.dumps({"result": result}))
    elif args.command == "cluster-status":
        print(cluster_table(result))
    elif args.command in ("list", "list-topic-permissions"):
        print(format_table(result, COLUMNS[args.what]))
    elif ctl_policies.is_policy_command(args.command) and isinstance(result, list):
        print(format_table(result, ctl_policies.COLUMNS))
    elif isinstance(result, str):
        print(result)
    else:
        print(json.dumps(result, indent=2))
