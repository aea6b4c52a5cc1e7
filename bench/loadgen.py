"""Build the Go load generator (cached by source hash) and run one scenario with it."""
from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

SOURCE_DIR = Path(__file__).parent / "loadgen"
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mq-bench"
# Debian's golang-github-rabbitmq-amqp091-go-dev installs the library under this GOPATH;
# building in GOPATH mode needs no module download.
DEBIAN_GOPATH = "/usr/share/gocode"
INSTALL_HINT = "apt-get install golang-go golang-github-rabbitmq-amqp091-go-dev"


class LoadgenError(RuntimeError):
    pass


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        GOPATH=DEBIAN_GOPATH,
        GO111MODULE="off",
        GOPROXY="off",
        GOFLAGS="",
    )
    return env


def build() -> Path:
    """Return the load generator binary, building it when its sources changed."""
    go = shutil.which("go")
    if go is None:
        raise LoadgenError(f"the Go toolchain is missing: {INSTALL_HINT}")
    digest = hashlib.sha256()
    for src in sorted(SOURCE_DIR.glob("*.go")):
        digest.update(src.name.encode() + src.read_bytes())
    binary = CACHE_DIR / f"loadgen-{digest.hexdigest()[:16]}"
    if binary.exists():
        return binary
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = binary.with_name(f"{binary.name}.{os.getpid()}.tmp")  # concurrent builds don't clash
    proc = subprocess.run(
        [go, "build", "-o", str(tmp), "."],
        cwd=SOURCE_DIR, env=_go_env(), capture_output=True, text=True,
    )
    if proc.returncode != 0:
        raise LoadgenError(f"go build failed (is {INSTALL_HINT} done?):\n{proc.stderr}")
    tmp.rename(binary)
    return binary


@dataclass
class Run:
    """One load generator run: its JSON result and the CPU time it spent."""

    result: dict
    cpu_seconds: float


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(binary: Path, url: str, flags: list[str], pid: int | None, timeout: float,
        on_mark: Callable[[str], None] = lambda name: None) -> Run:
    """Run the load generator; it stops itself at `timeout`, we kill it a little later.
    Each "mark NAME" line it writes on stderr calls on_mark(NAME) as it arrives."""
    cmd = [str(binary), "-url", url, "-timeout", f"{timeout:.0f}s", *flags]
    if pid:
        cmd += ["-pid", str(pid)]
    before = _children_cpu()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            bufsize=1)
    out: list[str] = []
    err: list[str] = []

    def read_stdout() -> None:
        out.append(proc.stdout.read())

    def read_stderr() -> None:
        for line in proc.stderr:
            if line.startswith("mark "):
                on_mark(line[5:].strip())
            else:
                err.append(line)

    readers = [threading.Thread(target=f, daemon=True) for f in (read_stdout, read_stderr)]
    for t in readers:
        t.start()
    try:
        proc.wait(timeout=timeout + 15)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # lets it delete its queues
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for t in readers:
        t.join(timeout=5)
    cpu = _children_cpu() - before
    lines = "".join(out).strip().splitlines()
    try:
        result = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        result = {"error": f"load generator exited {proc.returncode}: {''.join(err).strip()[-500:]}"}
    return Run(result=result, cpu_seconds=cpu)
