"""`mq ctl` policy commands, shaped like rabbitmqctl's (each also under its rabbitmqctl
name):

    mq ctl set-policy DLX '^orders\\.' '{"dead-letter-exchange": "dlx"}' --priority 1 --apply-to queues
    mq ctl clear-policy DLX
    mq ctl list-policies
"""
from __future__ import annotations

import argparse
import json
from typing import Any, Callable

COLUMNS = ("vhost", "name", "pattern", "apply-to", "definition", "priority")
COMMANDS = ("set-policy", "clear-policy", "list-policies")


def add_commands(cmd: Callable[..., argparse.ArgumentParser]) -> None:
    """Register the commands through ctl.parser's `cmd` (which adds --vhost)."""
    c = cmd("set-policy", "add or replace a policy", aliases=["set_policy"])
    c.add_argument("name")
    c.add_argument("pattern", help="regular expression searched in queue/exchange names")
    c.add_argument("definition", help="JSON object, e.g. '{\"max-length\": 1000}'")
    c.add_argument("--priority", type=int, default=0)
    c.add_argument("--apply-to", default="all", choices=("queues", "exchanges", "all"))
    cmd("clear-policy", "remove a policy", aliases=["clear_policy"]).add_argument("name")
    cmd("list-policies", "list the policies of a vhost", aliases=["list_policies"])


def run(args: argparse.Namespace, client: Any, vhost: str) -> Any:
    """Do a policy command (`vhost` already quoted for a path)."""
    from mq.ctl import quote  # ctl imports this module

    command = args.command.replace("_", "-")
    if command == "list-policies":
        return client.get(f"/api/policies/{vhost}")
    path = f"/api/policies/{vhost}/{quote(args.name)}"
    if command == "clear-policy":
        client.request("DELETE", path)
        return f"policy {args.name} cleared"
    try:
        definition = json.loads(args.definition)
    except ValueError as exc:
        raise SystemExit(f"mq ctl: the definition is not JSON: {exc}") from None
    client.request("PUT", path, {"pattern": args.pattern, "definition": definition,
                                 "priority": args.priority, "apply-to": args.apply_to})
    return f"policy {args.name} set"


def is_policy_command(command: str) -> bool:
    return command.replace("_", "-") in COMMANDS
