"""Shared fixtures: a real broker process (the mq_broker fixture from mq's pytest plugin),
pika connections to it, and unique names so tests sharing a broker never collide."""
from __future__ import annotations

import uuid
from typing import Iterator

import pika
import pytest

from rawamqp import RawClient


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
