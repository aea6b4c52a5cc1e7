"""Run a real mq broker for tests: in a subprocess (default) or in a thread.

    with run_broker() as broker:
        pika.BlockingConnection(pika.URLParameters(broker.url))

The pytest plugin (`mq.testing.pytest_plugin`, registered as an entry point) offers the
same as the `mq_broker` fixture.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Iterator

_LISTENING = re.compile(r"mq listening on amqp://[^:]+:(\d+)")
_MANAGEMENT = re.compile(r"mq management listening on http://[^ ]+:(\d+)")


class ChildProcess:
    """A child process (`proc`, None when it is not running): pause, resume, a graceful stop
    and a kill."""

    proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        """The process exists (a paused one too)."""
        return self.proc is not None and self.proc.poll() is None

    def pause(self) -> None:
        """SIGSTOP: frozen, its sockets open."""
        if self.running:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after pause()."""
        if self.running:
            self.proc.send_signal(signal.SIGCONT)

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop: SIGCONT (in case it is paused), SIGTERM, SIGKILL after timeout."""
        if self.running:
            self.resume()
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: a crash, as far as the process can tell (a paused one too)."""
        if self.running:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


class BrokerChild(ChildProcess):
    """An mq process at host:port (AMQP) and management_port (HTTP)."""

    host = "127.0.0.1"
    port = 0
    management_port = 0

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{self.host}:{self.port}/"

    @property
    def management_url(self) -> str:
        return f"http://{self.host}:{self.management_port}"


class BrokerProcess(BrokerChild):
    """A broker in a child process on a free port, with its own data dir and log file."""

    def __init__(self, data_dir: str | None = None, args: tuple[str, ...] = (),
                 host: str = "127.0.0.1", startup_timeout: float = 20.0) -> None:
        self._own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="mq-test-")
        self.host = host
        self.args = tuple(args)
        self.startup_timeout = startup_timeout
        self.port = 0
        self.management_port = 0  # with args ("--management-port", "0"): the port it got
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(self.data_dir, "broker.log")

    def start(self) -> BrokerProcess:
        """Start the broker; on a restart it keeps the port it had."""
        log = open(self.log_path, "ab")
        offset = log.tell()
        cmd = [sys.executable, "-m", "mq", "--host", self.host, "--port", str(self.port),
               "--data-dir", self.data_dir, "--management-port", "-1", *self.args]
        if self.management_port:  # a restart keeps the management port too
            cmd += ["--management-port", str(self.management_port)]
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            with open(self.log_path, "rb") as fh:
                fh.seek(offset)
                text = fh.read().decode("utf-8", "replace")
            match = _LISTENING.search(text)
            if match:
                self.port = int(match.group(1))
                management = _MANAGEMENT.search(text)
                if management:
                    self.management_port = int(management.group(1))
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mq did not start; log:\n{self.log()}")

    def log(self) -> str:
        with open(self.log_path, "rb") as fh:
            return fh.read().decode("utf-8", "replace")

    def restart(self, kill: bool = False) -> None:
        self.kill() if kill else self.stop()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)


class BrokerThread:
    """A broker on its own event loop in a daemon thread of this process (no subprocess)."""

    def __init__(self, data_dir: str | None = None, host: str = "127.0.0.1") -> None:
        from mq.config import Settings

        self._own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="mq-test-")
        self.settings = Settings(host=host, port=0, data_dir=self.data_dir, management_port=-1)
        self.host = host
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{self.host}:{self.port}/"

    def start(self) -> BrokerThread:
        from mq.server import Server

        started = threading.Event()
        server = Server(self.settings)

        def on_started(srv: Server) -> None:
            self.port = srv.port
            started.set()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._task = self._loop.create_task(server.serve(on_started))
            with contextlib.suppress(asyncio.CancelledError):
                self._loop.run_until_complete(self._task)
            self._loop.close()

        self._thread = threading.Thread(target=run, name="mq-broker", daemon=True)
        self._thread.start()
        if not started.wait(20):
            raise RuntimeError("mq did not start in its thread")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
            self._thread.join(10)
        self._loop = self._task = None

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)


@contextlib.contextmanager
def run_broker(mode: str = "subprocess", data_dir: str | None = None,
               args: tuple[str, ...] = ()) -> Iterator[BrokerProcess | BrokerThread]:
    """Start a broker on a free port with a temporary data dir; yield it (`.url`, `.port`)."""
    broker = BrokerProcess(data_dir, args) if mode == "subprocess" else BrokerThread(data_dir)
    try:
        yield broker.start()
    finally:
        broker.cleanup()
