"""A real Celery app against mq (B-DELAY, issue 16 item 3): countdown and ETA tasks run at
their time, with Celery's classic handling (the worker holds them) and with its native
delayed delivery (Celery 5.5+, on quorum queues and a topic exchange: the broker holds them
in Celery's own delay queues, built on message TTLs and dead lettering)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pika
import pytest

from mq.testing import run_broker

celery = pytest.importorskip("celery")

APP = textwrap.dedent('''
    import os, time
    from celery import Celery
    from kombu import Exchange, Queue
    app = Celery("demoapp", broker=os.environ["BROKER"])
    kind = os.environ["EXCHANGE_TYPE"]
    app.conf.task_queues = [Queue("tasks", Exchange("tasks", type=kind), routing_key="tasks",
                                  queue_arguments={"x-queue-type": "quorum"})]
    app.conf.task_default_queue = "tasks"
    app.conf.task_default_exchange = "tasks"
    app.conf.task_default_exchange_type = kind
    app.conf.task_default_routing_key = "tasks"

    @app.task
    def stamp(tag, sent):
        with open(os.environ["OUT"], "a") as fh:
            fh.write(f"{tag} {time.time() - sent:.3f}\\n")
''')

SEND = ("import datetime, time, demoapp\n"
        "now = time.time()\n"
        "demoapp.stamp.apply_async(('now', now))\n"
        "demoapp.stamp.apply_async(('countdown', now), countdown=2)\n"
        "demoapp.stamp.apply_async(('eta', now), eta=datetime.datetime.now("
        "datetime.timezone.utc) + datetime.timedelta(seconds=3))\n")


def _run(tmp_path, exchange_type: str) -> tuple[dict[str, float], str, str]:
    (tmp_path / "demoapp.py").write_text(APP)
    out = tmp_path / "out.txt"
    with run_broker() as broker:
        env = {**os.environ, "BROKER": broker.url, "OUT": str(out),
               "PYTHONPATH": str(tmp_path), "EXCHANGE_TYPE": exchange_type}
        log = open(tmp_path / "worker.log", "w")
        worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "demoapp", "worker",
                                   "-Q", "tasks", "--pool", "solo", "-l", "info"],
                                  cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while "ready." not in (tmp_path / "worker.log").read_text():
                assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()
                time.sleep(0.1)
            subprocess.run([sys.executable, "-c", SEND], cwd=tmp_path, env=env, check=True,
                           timeout=30)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                if out.exists() and len(out.read_text().splitlines()) >= 3:
                    break
                time.sleep(0.1)
            conn = pika.BlockingConnection(pika.URLParameters(broker.url))
            exchanges = [name for name in ("celery_delayed_delivery",)
                         if _exists(conn, name)]
            conn.close()
        finally:
            worker.terminate()
            worker.wait(15)
            log.close()
    ran = dict(line.split() for line in out.read_text().splitlines()) if out.exists() else {}
    return ({k: float(v) for k, v in ran.items()}, ",".join(exchanges),
            (tmp_path / "worker.log").read_text())


def _exists(conn: pika.BlockingConnection, exchange: str) -> bool:
    ch = conn.channel()
    try:
        ch.exchange_declare(exchange, passive=True)
        return True
    except pika.exceptions.ChannelClosedByBroker:
        return False


def test_celery_countdown_and_eta_tasks(tmp_path) -> None:
    """B-DELAY (issue 16): a Celery app on a direct exchange: a task runs at once, one with
    countdown=2 after 2 s, one with an ETA 3 s ahead after 3 s (held by the worker)."""
    ran, _, log = _run(tmp_path, "direct")
    assert set(ran) == {"now", "countdown", "eta"}, log[-3000:]
    assert ran["now"] < 1.5
    assert 1.9 <= ran["countdown"] < 4
    assert 2.9 <= ran["eta"] < 5


def test_celery_native_delayed_delivery(tmp_path) -> None:
    """B-DELAY (issue 16): Celery's native delayed delivery (5.5+): with a quorum queue on a
    topic exchange, Celery builds its delay queues in mq (quorum queues with message TTLs
    dead-lettering into each other, the exchange celery_delayed_delivery) and the broker
    holds countdown and ETA tasks until their time."""
    ran, exchanges, log = _run(tmp_path, "topic")
    assert exchanges == "celery_delayed_delivery", log[-3000:]
    assert set(ran) == {"now", "countdown", "eta"}, log[-3000:]
    assert ran["now"] < 1.5
    assert 1.9 <= ran["countdown"] < 4
    assert 2.9 <= ran["eta"] < 5
    # The worker got the delayed tasks only when due (the broker held them), not at once.
    received = [_stamp(line) for line in log.splitlines() if "] received" in line]
    assert len(received) == 3
    assert received[1] - received[0] >= 1.5 and received[2] - received[0] >= 1.5


def _stamp(line: str) -> float:
    """Seconds of a worker log line's time of day ("[2026-12-06 08:33:08,585: ...")."""
    clock = line[1:24].split(" ")[1]
    h, m, rest = clock.split(":")
    return int(h) * 3600 + int(m) * 60 + float(rest.replace(",", "."))
