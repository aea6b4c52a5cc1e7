"""Shared fixtures: a real broker process (the mq_broker fixture from mq's pytest plugin),
pika connections to it, and unique names so tests sharing a broker never collide."""
from __future__ import annotations

import uuid
from typing import Iterator

import pika
import pytest


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
