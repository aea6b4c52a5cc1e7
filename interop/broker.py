"""The brokers a run talks to: a URL, and optionally a way to restart it (for B-DUR-2)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Broker:
    label: str
    url: str
    restart: Callable[[], None] | None = None
    restart_missing: str = "no way to restart the broker: give --restart-cmd or use --start-mq"


def external(label: str, url: str, restart_cmd: str | None) -> Broker:
    if not restart_cmd:
        return Broker(label, url)

    def restart() -> None:
        subprocess.run(restart_cmd, shell=True, check=True, timeout=180)

    return Broker(label, url, restart)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"broker exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing listening on port {port} after {timeout:.0f}s")


class MqProcess:
    """`python -m mq` on a free port with a temporary data dir; restartable on the same dir."""

    def __init__(self, extra_args: list[str] | None = None) -> None:
        self.port = free_port()
        self.data_dir = tempfile.mkdtemp(prefix="interop-mq-")
        self.log_path = Path(self.data_dir).with_suffix(".log")
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mq", "--port", str(self.port), "--data-dir", self.data_dir,
             *self.optional_args(), *self.extra_args],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for_port(self.port, 30, self.proc)
        except RuntimeError as e:
            raise RuntimeError(f"mq did not start: {e}\n{self.log_tail()}") from None

    def optional_args(self) -> list[str]:
        """Flags this mq understands that keep it off shared ports (its management API)."""
        if not hasattr(self, "_optional"):
            try:
                usage = subprocess.run([sys.executable, "-m", "mq", "--help"], cwd=REPO, capture_output=True,
                                       text=True, timeout=30).stdout
            except (OSError, subprocess.TimeoutExpired):
                usage = ""
            # -1 turns the management API off: the suite does not use it, and a fixed port may be taken.
            self._optional = ["--management-port", "-1"] if "--management-port" in usage else []
        return self._optional

    def died(self) -> str | None:
        """Why mq is gone, if it exited by itself (a crash during the run)."""
        if self.proc is not None and self.proc.poll() is not None:
            return f"mq exited with code {self.proc.returncode} during the run; its log ends:\n{self.log_tail()}"
        return None

    def stop(self, timeout: float = 15) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)  # a clean shutdown, as an operator's restart would be
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def broker(self) -> Broker:
        return Broker("mq", self.url, self.restart)
