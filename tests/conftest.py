"""Shared fixtures: a real broker process (the mq_broker fixture from mq's pytest plugin),
pika connections to it, and unique names so tests sharing a broker never collide."""
from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from typing import Iterator

import pika
import pytest

from rawamqp import RawClient

from mq.store import segments


@pytest.fixture
def uid() -> str:
    return uuid.uuid4().hex[:12]


@pytest.fixture
def connection(mq_url: str) -> Iterator[pika.BlockingConnection]:
    conn = pika.BlockingConnection(pika.URLParameters(mq_url))
    yield conn
    if conn.is_open:
        conn.close()


@pytest.fixture
def channel(connection: pika.BlockingConnection) -> Iterator:
    yield connection.channel()


@pytest.fixture
def anyio_backend() -> str:
    """Async tests (aio-pika) run on asyncio."""
    return "asyncio"


@pytest.fixture
def raw(mq_broker) -> Iterator[RawClient]:
    """A logged-in RawClient with channel 1 open, for tests that need exact frames."""
    client = RawClient(mq_broker.port)
    client.handshake()
    client.open_channel(1)
    yield client
    client.close()


# The store's test seam (mq/store/segments.py): "eio", "enospc" or "slow" in this file
# makes the brokers' disk fail or crawl while it is there.
@pytest.fixture
def fault_file(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fault file the brokers started in this test read (MQ_TEST_FAULT_FILE)."""
    directory = tempfile.mkdtemp(prefix="mq-fault-")
    path = os.path.join(directory, "fault")
    monkeypatch.setenv(segments.FAULT_FILE_ENV, path)
    yield path
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def data_dir() -> Iterator[str]:
    """An empty directory for a store of the test's own."""
    path = tempfile.mkdtemp(prefix="mq-store-test-")
    yield path
    shutil.rmtree(path, ignore_errors=True)
