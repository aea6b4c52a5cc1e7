"""What /proc says about a broker process: its RSS, its CPU time, and who listens on a port;
and a sampler that watches a broker's RSS and CPU while a scenario runs."""
from __future__ import annotations

import os
import resource
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

CLK_TCK = os.sysconf("SC_CLK_TCK")  # the unit of utime and stime in /proc/PID/stat


def rss_kb(pid: int) -> int | None:
    """VmRSS of a process in kB, or None when it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_ticks(pid: int) -> int | None:
    """utime + stime of a process (all its threads) in clock ticks, or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces: the fields we need follow its ')'.
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of stat


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (all its threads), or None."""
    ticks = cpu_ticks(pid)
    return None if ticks is None else ticks / CLK_TCK


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            local, state, inode = cols[1], cols[3], cols[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(inode)
    return inodes


def listens(port: int) -> bool:
    """Does a local process listen on this TCP port?"""
    return bool(_listening_inodes(port))


def pid_listening_on(port: int) -> int | None:
    """The pid of the local process that listens on a TCP port, or None."""
    wanted = {f"socket:[{inode}]" for inode in _listening_inodes(port)}
    if not wanted:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in wanted:
                    return int(proc.name)
        except OSError:
            continue
    return None


def fd_headroom(pid: int) -> int | None:
    """How many more files a process may open (soft limit less those open), or None."""
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                soft = line.split()[3]
                if soft == "unlimited":
                    return None
                return int(soft) - len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, ValueError, IndexError):
        return None
    return None


def raise_fd_limit() -> None:
    """Lift our soft open-files limit to the hard one; brokers we start inherit it (S9 needs it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@dataclass
class Mark:
    """The broker's state at a moment the load generator announced (a phase boundary)."""

    name: str
    time: float  # time.monotonic()
    cpu_ticks: int | None
    rss_kb: int | None
    rss_max_kb: int | None = None  # the highest RSS seen from this mark until the next one


@dataclass
class Sampler:
    """Reads a process's VmRSS every `interval` seconds in a thread, keeping the maximum, and
    records its CPU time and RSS at each mark. Used as a context manager around one run.
    With `also` (the other nodes of a cluster), CPU and RSS are the sums over all of them."""

    pid: int
    interval: float = 0.1
    also: tuple[int, ...] = ()
    marks: list[Mark] = field(default_factory=list)
    rss_max_kb: int | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> "Sampler":
        self.mark("start")
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.mark("stop")

    def _sum(self, read: Callable[[int], int | None]) -> int | None:
        values = [read(pid) for pid in (self.pid, *self.also)]
        return None if None in values else sum(values)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._record(self._sum(rss_kb))

    def _record(self, rss: int | None) -> None:
        if rss is None:
            return
        with self._lock:
            self.rss_max_kb = rss if self.rss_max_kb is None else max(self.rss_max_kb, rss)
            last = self.marks[-1] if self.marks else None
            if last is not None:
                last.rss_max_kb = rss if last.rss_max_kb is None else max(last.rss_max_kb, rss)

    def mark(self, name: str) -> None:
        """A phase begins now: read CPU and RSS at once (thread-safe)."""
        ticks, rss = self._sum(cpu_ticks), self._sum(rss_kb)
        # The reading closes the phase before this mark as well as opening the next.
        self._record(rss)
        with self._lock:
            self.marks.append(Mark(name, time.monotonic(), ticks, rss, rss))

    def at(self, name: str) -> Mark | None:
        """The first mark of that name."""
        return next((m for m in self.marks if m.name == name), None)

    def cpu_between(self, first: str, second: str) -> float | None:
        """Seconds of CPU the process used between two marks, or None."""
        a, b = self.at(first), self.at(second)
        if a is None or b is None or a.cpu_ticks is None or b.cpu_ticks is None:
            return None
        return (b.cpu_ticks - a.cpu_ticks) / CLK_TCK

    def rss_max_from(self, first: str, until: str) -> int | None:
        """The highest RSS sampled from one mark up to another (both readings included)."""
        names = [m.name for m in self.marks]
        if first not in names or until not in names:
            return None
        i, j = names.index(first), names.index(until)
        seen = [m.rss_max_kb for m in self.marks[i:j] if m.rss_max_kb is not None]
        if self.marks[j].rss_kb is not None:
            seen.append(self.marks[j].rss_kb)
        return max(seen) if seen else None
