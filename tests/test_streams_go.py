"""A stream read by a Go client (amqp091-go, Debian's, built offline in GOPATH mode as the
interop suite builds its Go driver): B-STREAM-2 and B-STREAM-3 through another client library.
The program (tests/fixtures/streams_go/main.go) declares a durable stream, publishes ten
messages with confirms, consumes from "first" with a prefetch and manual acks and prints each
delivery's `x-stream-offset` (with its Go type) and body. Skipped when Go or amqp091-go is
missing (failed with MQ_REQUIRE_CLIENTS=1, as in CI). Runs against RabbitMQ too
(MQ_TEST_URL)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

SOURCE = Path(__file__).parent / "fixtures" / "streams_go" / "main.go"
GOPATH = "/usr/share/gocode"
AMQP091 = Path(GOPATH, "src/github.com/rabbitmq/amqp091-go")


@pytest.fixture(scope="module")
def go_program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("go") is None or not AMQP091.is_dir():
        missing = "needs go and Debian's amqp091-go sources (bash interop/setup.sh)"
        if os.environ.get("MQ_REQUIRE_CLIENTS") == "1":  # CI installs them: fail there
            pytest.fail(missing)
        pytest.skip(missing)
    out = tmp_path_factory.mktemp("streams-go") / "streams_go"
    env = dict(os.environ, GOPATH=GOPATH, GO111MODULE="off", GOFLAGS="", GOPROXY="off",
               GOCACHE=str(out.parent / "cache"))
    subprocess.run(["go", "build", "-o", str(out), str(SOURCE)], env=env, check=True,
                   cwd=SOURCE.parent, timeout=120)
    return out


def test_go_client_reads_stream_from_first(go_program, mq_url, uid) -> None:
    """B-STREAM-2, B-STREAM-3: ten messages published by amqp091-go with confirms, consumed by
    it from "first" (prefetch 10, manual acks): bodies in order, `x-stream-offset` 0..9, a
    64-bit integer (int64 in Go)."""
    run = subprocess.run([str(go_program), mq_url, f"{uid}-go-stream", "10"],
                         capture_output=True, text=True, timeout=60)
    report = json.loads(run.stdout)
    assert run.returncode == 0 and "error" not in report, (report, run.stderr)
    assert report["deliveries"] == [
        {"offset": i, "offset_type": "int64", "body": f"m{i}"} for i in range(10)]
