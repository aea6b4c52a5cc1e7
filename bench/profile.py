"""Where mq's CPU goes per message, by function (issue 13, item 8).

Commands, all for mq alone (no RabbitMQ); bench/README.md has the BEFORE figures:

``python -m bench.profile run S1 --duration 10 --out bench/figures/profile-before-S1``
    starts ``python -m mq`` on a free port with a fresh data dir, attaches
    ``py-spy record --native --threads --format raw`` to it, runs ``python -m bench
    --no-rabbitmq --mq-url ... --scenarios S1`` against it, stops py-spy and writes
    ``OUT.raw.gz`` (collapsed stacks), ``OUT.json`` (the bench's JSON) and ``OUT.txt``
    (the report below).

``python -m bench.profile report OUT.raw[.gz] [--bench OUT.json]``
    reduces collapsed stacks (``stack;frames count`` per line) to tables: self time by
    innermost frame (C frames included), self time by innermost Python/Cython frame (C
    helpers charged to their caller), total time of the entry points, and the same per
    thread. Shares are of all the broker's samples (every thread), so of its CPU: py-spy
    drops idle samples, and the stacks it still counts although blocked (a lock, epoll,
    f(data)sync; ``WAIT_FRAMES``) are left out and their number given. With ``--bench``
    shares are also given in µs per message: share x the bench's own CPU per message
    (per delivered message; in S8, fill + drain per message) for the same run.

``python -m bench.profile count S1 --duration 5 --out bench/figures/count-before-S1``
    runs mq under ``sys.setprofile`` (every thread) and counts Python frames entered
    (``call`` events: Python functions and generator resumptions; compiled Cython
    functions enter none) and calls into C/Cython callables (``c_call``), divided by
    the messages published (calls of ``Publishing.publish_assembled``; deliveries are
    given beside), over the whole run. Writes ``OUT.txt``, ``OUT.json`` and the raw
    counts ``OUT.calls.json.gz`` (``count-report`` redoes the tables from them). Slow
    (the hook costs far more than the broker), so only the counts mean anything.

A frame is keyed by function and file, line numbers dropped. py-spy pauses the broker
for each sample (``--native`` unwinds the C stack too), so throughput under ``run`` is
lower than without it; CPU per message and the shares are what to compare.
"""
from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

# Entry points whose total (inclusive) time is reported: substring of "func (file".
ENTRY_POINTS: tuple[str, ...] = (
    "AMQPProtocol.data_received (mq/server.py",
    "Connection.data_received (mq/amqp/connection.py",
    "Connection._process (mq/amqp/connection.py",
    "publish_assembled (",
    "Queue.dispatch (",
    "deliver (",
    "ack (",
    "Flusher.",
    "uv__write",
    "uv__read (",
    "write (",
    "read (",
)
FRAME_RE = re.compile(r"^(?P<name>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")
PY_FILE = re.compile(r"\.(py|pyx|pxd|pxi)$|^<frozen")


def frame_key(frame: str) -> str:
    """``func (file:line)`` -> ``func (file)``; ``0xADDR (lib.so)`` -> ``[lib.so]``."""
    m = FRAME_RE.match(frame)
    if not m:
        return frame
    name, file = m.group("name"), m.group("file")
    if name.startswith("0x"):
        return f"[{file}]"
    return f"{name} ({file})"


def is_python(key: str) -> bool:
    m = FRAME_RE.match(key)
    return bool(m and PY_FILE.search(m.group("file")))


@dataclass
class Profile:
    total: int = 0
    self_all: collections.Counter[str] = field(default_factory=collections.Counter)
    self_py: collections.Counter[str] = field(default_factory=collections.Counter)
    incl: collections.Counter[str] = field(default_factory=collections.Counter)
    threads: collections.Counter[str] = field(default_factory=collections.Counter)
    thread_self: dict[str, collections.Counter[str]] = field(default_factory=dict)
    depth_py: collections.Counter[int] = field(default_factory=collections.Counter)
    waiting: collections.Counter[str] = field(default_factory=collections.Counter)


def thread_labels(lines: list[tuple[str, list[str], int]]) -> dict[str, str]:
    """Name each thread (py-spy's ``thread (0xID)`` root) by what runs in it."""
    text: dict[str, str] = {}
    for tid, frames, _ in lines:
        text[tid] = text.get(tid, "") + ";" + ";".join(frames)
    return {tid: "store flusher thread" if "Flusher._run" in t
            else "event loop (main thread)" if ("uv_run" in t or "run_forever" in t)
            else "other threads" for tid, t in text.items()}


WAIT_FRAMES = ("PyThread_acquire_lock_timed", "epoll_wait", "epoll_pwait", "fdatasync", "fsync",
               "pthread_cond_", "futex")


def is_waiting(keys: list[str]) -> bool:
    """Blocked on a lock, in epoll or in f(data)sync (disk): py-spy --native counts it active."""
    return any(w in k for k in keys[-3:] for w in WAIT_FRAMES)


def load(path: Path) -> Profile:
    p = Profile()
    lines: list[tuple[str, list[str], int]] = []
    text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
    for line in text.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")
        tid = frames.pop(0) if frames[0].startswith("thread (") else "?"  # from --threads
        lines.append((tid, frames, int(n)))
    names = thread_labels(lines)
    for tid, frames, count in lines:
        keys = [frame_key(f) for f in frames]
        if is_waiting(keys):
            p.waiting[names[tid]] += count
            continue
        p.total += count
        p.self_all[keys[-1]] += count
        py = [k for k in keys if is_python(k)]
        p.self_py[py[-1] if py else "(no Python frame)"] += count
        for k in set(keys):
            p.incl[k] += count
        label = names[tid]
        p.threads[label] += count
        p.thread_self.setdefault(label, collections.Counter())[keys[-1]] += count
        # Python/Cython frames under Connection._process: the depth of the path
        depth = next((i for i, k in enumerate(py) if k.startswith("Connection._process (")), None)
        if depth is not None:
            p.depth_py[len(py) - depth] += count
    return p


def bench_figures(path: Path | None) -> tuple[float | None, dict[str, object]]:
    """CPU µs per message and the run's main figures from the bench's JSON."""
    if path is None or not path.exists():
        return None, {}
    data = json.loads(path.read_text())
    sc = data["scenarios"][0]
    m = sc["median"]["mq"]
    keys = ("accept_rate", "deliver_rate", "publish_rate", "drain_rate", "delivered",
            "cpu_us_per_msg", "fill_cpu_us_per_msg", "drain_cpu_us_per_msg", "broker_cpu_s")
    return m.get("cpu_us_per_msg"), {"scenario": sc["id"], **{k: m[k] for k in keys if k in m}}


def table(title: str, counter: collections.Counter[str], total: int, us: float | None,
          top: int) -> list[str]:
    out = [f"### {title}", "", "| function (file) | share of broker CPU | µs/msg |",
           "| --- | ---: | ---: |"]
    for key, n in counter.most_common(top):
        share = n / total
        out.append(f"| `{key}` | {100 * share:.1f}% | {'' if us is None else f'{share * us:.3f}'} |")
    return out + [""]


def report(raw: Path, bench_json: Path | None, top: int) -> str:
    p = load(raw)
    us, figs = bench_figures(bench_json)
    out = [f"profile {raw.name}: {p.total} samples (all threads, idle excluded; "
           f"left out as blocked on a lock, in epoll or f(data)sync: {dict(p.waiting)})"]
    if figs:
        out.append("bench: " + ", ".join(f"{k}={v:,.2f}" if isinstance(v, float) else f"{k}={v}"
                                        for k, v in figs.items()))
    out.append("")
    out += table(f"Self time, innermost frame (C included), top {top}", p.self_all, p.total, us, top)
    out += table(f"Self time, innermost Python/Cython frame (C charged to its caller), top {top}",
                 p.self_py, p.total, us, top)
    entries = collections.Counter({k: n for k, n in p.incl.items()
                                   if any(e in k for e in ENTRY_POINTS)})
    out += table("Total (inclusive) time of the entry points", entries, p.total, us, 40)
    out += table("By thread", p.threads, p.total, us, 10)
    for label, c in sorted(p.thread_self.items()):
        out += table(f"Self time in the {label}, top 10", c, p.total, us, 10)
    if p.depth_py:
        n = sum(p.depth_py.values())
        mean = sum(d * c for d, c in p.depth_py.items()) / n
        deepest = max(p.depth_py)
        out += ["### Python/Cython stack depth below Connection._process (reads and idle callbacks)", "",
                f"mean {mean:.1f} frames over {n} samples, deepest {deepest}", ""]
    return "\n".join(out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"mq did not listen on {port}")


def bench_cmd(args: argparse.Namespace, port: int, json_out: Path) -> list[str]:
    return [sys.executable, "-m", "bench", "--no-rabbitmq", "--mq-url",
            f"amqp://guest:guest@127.0.0.1:{port}/", "--scenarios", args.scenario,
            "--duration", str(args.duration), "--backlog", str(args.backlog),
            "--json", str(json_out)]


def start_mq(port: int, data: str, prefix: list[str]) -> subprocess.Popen[bytes]:
    cmd = [*prefix, "--port", str(port), "--data-dir", data, "--management-port", "-1"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cmd_run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    raw = Path(tempfile.gettempdir()) / (out.name + ".raw")
    bench_json = out.with_suffix(".json")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="mq-profile-") as data:
        mq = start_mq(port, data, [sys.executable, "-m", "mq"])
        try:
            wait_port(port)
            spy = subprocess.Popen(["py-spy", "record", "--native", "--threads", "--rate",
                                    str(args.rate), "--format", "raw", "-o", str(raw),
                                    "--pid", str(mq.pid)], stdout=sys.stderr)
            time.sleep(1.0)
            subprocess.run(bench_cmd(args, port, bench_json), check=False)
            stop(spy, signal.SIGINT)
        finally:
            stop(mq)
    gz = out.with_suffix(".raw.gz")
    gz.write_bytes(gzip.compress(raw.read_bytes(), 9))
    raw.unlink()
    text = report(gz, bench_json, args.top)
    out.with_suffix(".txt").write_text(text + "\n")
    print(text)


COUNTER = r"""
import atexit, collections, gzip, json, runpy, sys, threading
calls = collections.Counter(); ccalls = collections.Counter()
def hook(frame, event, arg):
    if event == "call":
        co = frame.f_code; calls[(co.co_filename, co.co_qualname)] += 1
    elif event == "c_call":
        ccalls[getattr(arg, "__qualname__", repr(arg))] += 1
# Messages published and delivered, from each channel as it goes (the per-message path
# enters no Python function any more that could be counted instead).
import mq.amqp.channel
totals = collections.Counter(); released = set()
_release = mq.amqp.channel.Channel.release
def release(self):
    if id(self) not in released:
        released.add(id(self))
        totals["published"] += self.published
        totals["delivered"] += self.deliveries.last_tag
    _release(self)
mq.amqp.channel.Channel.release = release
def dump():
    sys.setprofile(None); threading.setprofile(None)
    with gzip.open(OUT, "wt") as f:
        json.dump({"calls": [[a, b, n] for (a, b), n in calls.items()],
                   "c_calls": dict(ccalls), "published": totals["published"],
                   "delivered": totals["delivered"]}, f)
atexit.register(dump)
threading.setprofile(hook); sys.setprofile(hook)
sys.argv = ["mq", *sys.argv[1:]]
runpy.run_module("mq", run_name="__main__")
"""


def cmd_count(args: argparse.Namespace) -> None:
    out = Path(args.out)
    counts = out.with_suffix(".calls.json.gz")
    bench_json = out.with_suffix(".json")
    port = free_port()
    code = "OUT = " + repr(str(counts.resolve())) + "\n" + COUNTER
    with tempfile.TemporaryDirectory(prefix="mq-count-") as data:
        mq = start_mq(port, data, [sys.executable, "-c", code])
        try:
            wait_port(port, 60)
            subprocess.run(bench_cmd(args, port, bench_json), check=False)
        finally:
            stop(mq)
    text = count_report(args.scenario, counts, args.top)
    out.with_suffix(".txt").write_text(text + "\n")
    print(text)


PUBLISH = "Publishing.publish_assembled (mq/amqp/publishing.py)"
DELIVER = "ChannelConsumer.deliver (mq/amqp/consumer.py)"


def count_report(scenario: str, counts: Path, top: int) -> str:
    """Frames per message from ``OUT.calls.json.gz``: the whole run's counts divided by the
    messages published over the whole run (the channels' own counts; in files made before
    the native core, the calls of Publishing.publish_assembled), since the bench's own
    delivered count covers its measured window only."""
    raw = counts.read_bytes()
    data = json.loads(gzip.decompress(raw) if counts.suffix == ".gz" else raw)
    calls = collections.Counter({f"{q} ({os.path.relpath(f) if f.startswith('/') else f})": n
                                 for f, q, n in data["calls"]})
    ccalls = collections.Counter(data["c_calls"])
    if "published" in data:
        pub, dlv = data["published"], data["delivered"]
    else:
        pub, dlv = calls[PUBLISH], calls[DELIVER]
    mq_calls = sum(n for k, n in calls.items() if "mq/" in k)
    lines = [f"count {scenario}: {pub:,} messages published, {dlv:,} deliveries "
             f"({dlv / pub:.2f} per message published) over the whole run",
             f"Python frames entered per published message: {sum(calls.values()) / pub:.3f} "
             f"(in mq/: {mq_calls / pub:.3f}); "
             f"calls into C/Cython callables per published message: {sum(ccalls.values()) / pub:.3f}",
             "", "| Python function (file) | frames per published message |", "| --- | ---: |"]
    lines += [f"| `{k}` | {n / pub:.3f} |" for k, n in calls.most_common(top) if n / pub >= 0.001]
    lines += ["", "| C/Cython callable | calls per published message |", "| --- | ---: |"]
    lines += [f"| `{k}` | {n / pub:.3f} |" for k, n in ccalls.most_common(top) if n / pub >= 0.001]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("run", "count"):
        s = sub.add_parser(name)
        s.add_argument("scenario")
        s.add_argument("--duration", type=float, default=10.0)
        s.add_argument("--backlog", type=int, default=200_000)
        s.add_argument("--out", required=True, help="path without suffix; .txt/.json are written")
        s.add_argument("--top", type=int, default=25 if name == "count" else 15)
        if name == "run":
            s.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    c = sub.add_parser("count-report", help="redo count's tables from OUT.calls.json.gz")
    c.add_argument("scenario")
    c.add_argument("calls", type=Path)
    c.add_argument("--top", type=int, default=25)
    r = sub.add_parser("report")
    r.add_argument("raw", type=Path)
    r.add_argument("--bench", type=Path, help="the bench JSON of the same run")
    r.add_argument("--top", type=int, default=15)
    args = ap.parse_args(argv)
    if args.cmd == "run":
        cmd_run(args)
    elif args.cmd == "count":
        cmd_count(args)
    elif args.cmd == "count-report":
        print(count_report(args.scenario, args.calls, args.top))
    else:
        print(report(args.raw, args.bench, args.top))


if __name__ == "__main__":
    main()
