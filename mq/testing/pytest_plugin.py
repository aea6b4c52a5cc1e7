"""pytest plugin: the `mq_broker` fixture (a real broker process for the test session) and
`mq_url`. Installed with mq through the `pytest11` entry point."""
from __future__ import annotations

import os
from typing import Iterator

import pytest

from mq.testing import BrokerProcess, run_broker


@pytest.fixture(scope="session")
def mq_broker() -> Iterator[BrokerProcess]:
    """One broker subprocess shared by the session; use unique names per test."""
    with run_broker() as broker:
        yield broker


@pytest.fixture
def mq_url(request: pytest.FixtureRequest) -> str:
    """The session broker's URL, or MQ_TEST_URL when set (to run the same end-to-end tests
    against a reference broker such as RabbitMQ, without starting mq)."""
    return os.environ.get("MQ_TEST_URL") or request.getfixturevalue("mq_broker").url


@pytest.fixture
def mq_fresh_broker() -> Iterator[BrokerProcess]:
    """A broker of the test's own, for tests that restart, kill or exhaust it."""
    with run_broker() as broker:
        yield broker
