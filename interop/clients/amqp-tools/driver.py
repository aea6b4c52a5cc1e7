"""Driver for rabbitmq-c's command-line tools (Debian amqp-tools).

Each tool opens its own connection for one action, so only the steps those tools can express
are supported (declare/delete queue, publish with a few properties, get); anything else makes
the scenario "not applicable" for this client. Usage: driver.py SCENARIO URL < script.json
"""
from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repo, for interop.*

from interop.bodies import describe_body, make_body  # noqa: E402
from interop.clients.python.common import Driver, Unsupported, main  # noqa: E402

Step = dict[str, Any]
PUBLISH_FLAGS = {"content_type": "-C", "content_encoding": "-E", "reply_to": "-t"}


class ToolError(Exception):
    def __init__(self, code: Any, text: str) -> None:
        super().__init__(text)
        self.code = code


def connection_flags(url: str) -> list[str]:
    # Explicit flags: rabbitmq-c reads a bare "/" URL path as the empty vhost.
    u = urlsplit(url)
    vhost = unquote(u.path[1:]) if len(u.path) > 1 else "/"
    return ["--server", u.hostname or "127.0.0.1", "--port", str(u.port or 5672), "--vhost", vhost,
            "--username", unquote(u.username or "guest"), "--password", unquote(u.password or "guest")]


class AmqpTools(Driver):
    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.closed: dict[str, ToolError] = {}
    def tool(self, step: Step, *args: str, stdin: bytes | None = None) -> bytes:
        url = self.conns.get(step.get("conn", "c"), self.url)
        proc = subprocess.run([args[0], *connection_flags(url), *args[1:]], input=stdin,
                              capture_output=True, timeout=30)
        if proc.returncode != 0:
            text = proc.stderr.decode(errors="replace").strip()
            code: Any = "closed"
            for word, value in (("ACCESS_REFUSED", 403), ("NOT_FOUND", 404), ("RESOURCE_LOCKED", 405),
                                ("PRECONDITION_FAILED", 406), ("NOT_ALLOWED", 530)):
                if word in text:
                    code = value
            raise ToolError(code, text[-300:])
        return proc.stdout

    def op_connect(self, step: Step) -> None:
        if "heartbeat" in step or step.get("retry_for"):
            raise Unsupported("connect")  # no tool keeps a connection open
        self.conns[step.get("conn", "c")] = step.get("url", self.url)
        # Deleting a queue that does not exist succeeds: a login check with no side effect.
        self.tool(step, "amqp-delete-queue", "-q", f"interop-ping-{uuid.uuid4().hex}")

    def op_close(self, step: Step) -> None:
        self.conns.pop(step.get("conn", "c"), None)

    def op_channel(self, step: Step) -> None:
        return None  # every tool run has its own channel

    def op_queue_declare(self, step: Step) -> Any:
        if step.get("passive") or step.get("exclusive") or step.get("auto_delete") or step.get("args"):
            raise Unsupported("queue_declare")
        flags = ["-d"] if step.get("durable") else []
        self.tool(step, "amqp-declare-queue", "-q", step["queue"], *flags)
        return "ok"

    def op_queue_delete(self, step: Step) -> None:
        self.tool(step, "amqp-delete-queue", "-q", step["queue"])

    def op_publish(self, step: Step) -> str:
        args = ["amqp-publish", "-e", step["exchange"], "-r", step["routing_key"]]
        for key, value in step.get("props", {}).items():
            if key in PUBLISH_FLAGS:
                args += [PUBLISH_FLAGS[key], value]
            elif key == "delivery_mode" and value == 2:
                args.append("-p")
            elif key == "headers" and all(v["type"] == "str" for v in value.values()):
                for name, v in value.items():
                    args += ["-H", f"{name}: {v['value']}"]
            else:
                raise Unsupported("publish")
        if step.get("mandatory"):
            raise Unsupported("publish")
        try:
            self.tool(step, *args, stdin=make_body(step.get("body", "")))  # body on stdin: any size
        except ToolError as e:
            self.closed[step.get("ch", "ch")] = e
            raise
        return "ok"

    def op_get(self, step: Step) -> Any:
        if step.get("ack", "ack") != "ack" or step.get("full"):
            raise Unsupported("get")  # amqp-get prints the body only
        until = time.monotonic() + step.get("wait", 0)
        while True:
            try:
                return {"body": describe_body(self.tool(step, "amqp-get", "-q", step["queue"]))}
            except ToolError as e:
                if e.code != "closed" or "empty" not in str(e).lower():
                    raise
            if time.monotonic() > until:
                return "empty"
            time.sleep(0.1)

    def op_sync(self, step: Step) -> None:
        # Each tool run has its own channel: the publish's channel.close is what "the channel"
        # reported, so repeat it here.
        if step.get("ch", "ch") in self.closed:
            raise self.closed[step.get("ch", "ch")]

    def op_get_all(self, step: Step) -> list[Any]:
        out = []
        while (msg := self.op_get({**step, "wait": 0})) != "empty":
            out.append(msg["body"])
        return out


if __name__ == "__main__":
    main(AmqpTools)
