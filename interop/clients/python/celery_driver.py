"""A real Celery worker (separate process) running tasks, with results over rpc://."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

from .common import Driver, Step, main


class CeleryDriver(Driver):
    def op_celery(self, step: Step) -> dict[str, Any]:
        os.environ.update(INTEROP_URL=self.url, INTEROP_QUEUE=step["queue"])
        from .celery_app import app, double, fail  # configured from the environment above

        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "interop.clients.python.celery_app", "worker",
             "--pool", "threads", "--concurrency", "2", "--without-heartbeat", "--without-mingle",
             "--without-gossip", "--loglevel", "WARNING"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        try:
            pending = [double.delay(i) for i in range(step["tasks"])]
            results = [r.get(timeout=45) for r in pending]
            failed = fail.delay()
            failed.get(timeout=30, propagate=False)
            failure = type(failed.result).__name__
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
            with app.connection_for_write() as conn:
                conn.default_channel.queue_delete(step["queue"])
        return {"results": results, "failure": failure}


if __name__ == "__main__":
    main(CeleryDriver)
