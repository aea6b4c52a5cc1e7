"""Shared by the management tests: `mq ctl` run as a user runs it, a pika connection as a
given user, and polling until something holds."""
from __future__ import annotations

import subprocess
import sys
import time
from typing import Any, Callable

import pika

from mq.testing import BrokerProcess


def ctl(broker: BrokerProcess, *args: str, ok: bool = True,
        user: str = "guest", password: str = "guest") -> subprocess.CompletedProcess:
    """`python -m mq ctl ARGS` against the broker's management port; asserts its exit."""
    result = subprocess.run([sys.executable, "-m", "mq", "ctl", "--url", broker.management_url,
                             "--user", user, "--password", password, *args],
                            capture_output=True, text=True, timeout=30)
    assert (result.returncode == 0) == ok, result.stderr
    return result


def amqp(broker: BrokerProcess, user: str = "guest", password: str = "guest",
         vhost: str = "/") -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", broker.port, vhost, pika.PlainCredentials(user, password)))


def eventually(check: Callable[[], Any], timeout: float = 5.0) -> Any:
    """Poll until check() is truthy; returns its last value (falsy after the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)
