"""Running one driver program on one script, bounded in time."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Any

from .registry import Client, driver_env


@dataclass
class DriverRun:
    observed: dict[str, Any] | None
    problem: str | None   # "timeout", or why no observation came back
    seconds: float
    where: str = ""       # on a timeout, the step the driver was in


def run_driver(client: Client, scenario: str, url: str, steps: list[dict[str, Any]],
               timeout: float) -> DriverRun:
    """Start the driver, feed it the script, and read its one JSON line; kill it on timeout."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [*client.command, scenario, url],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=driver_env(), start_new_session=True,  # own process group: a timeout kills it all
    )
    try:
        out, err = proc.communicate(json.dumps({"scenario": scenario, "steps": steps}).encode(),
                                    timeout=timeout)
    except subprocess.TimeoutExpired:
        _, err = _kill_group(proc)
        return DriverRun(None, "timeout", time.monotonic() - started, last_step(err))
    seconds = time.monotonic() - started
    for line in reversed(out.decode(errors="replace").splitlines()):
        if line.startswith("{"):
            try:
                return DriverRun(json.loads(line)["observed"], None, seconds)
            except (ValueError, KeyError):
                break
    tail = [line for line in err.decode(errors="replace").strip().splitlines()
            if not line.startswith("interop-step ")][-3:]
    return DriverRun(None, f"driver exited {proc.returncode} without a report: {' | '.join(tail)}"[:400],
                     seconds)


def _kill_group(proc: subprocess.Popen) -> tuple[bytes, bytes]:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return proc.communicate()


def last_step(stderr: bytes) -> str:
    """The step a driver was in, from the 'interop-step N OP' lines it writes to stderr."""
    steps = [line for line in stderr.decode(errors="replace").splitlines() if line.startswith("interop-step ")]
    if not steps:
        return ""
    _, index, op = (steps[-1].split(" ", 2) + [""])[:3]
    return f"in step {index} ({op})"
