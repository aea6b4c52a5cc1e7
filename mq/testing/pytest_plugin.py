"""pytest plugin: the `mq_broker` fixture (a real broker process for the test session),
`mq_url`, `mq_fresh_broker` and `mq_cluster` (a private etcd and three cluster nodes).
Installed with mq through the `pytest11` entry point."""
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


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "mq_cluster(n=3, lease_ttl=3, args=()): the mq_cluster fixture's size, "
        "lease TTL (seconds) and extra node flags")


@pytest.fixture
def mq_cluster(request: pytest.FixtureRequest):
    """A cluster of the test's own (mq.testing.cluster.Cluster): a private etcd and three
    nodes (or as the `mq_cluster` marker says), started with a leader elected; everything is
    killed and removed afterwards. Skips when etcd is not installed."""
    from mq.testing.cluster import Cluster, etcd_available  # only tests that use it pay

    if not etcd_available():
        pytest.skip("etcd is not installed (/usr/bin/etcd): apt-get install etcd-server")
    marker = request.node.get_closest_marker("mq_cluster")
    cluster = Cluster(**(marker.kwargs if marker else {}))
    try:
        yield cluster.start()
    finally:
        cluster.cleanup()
