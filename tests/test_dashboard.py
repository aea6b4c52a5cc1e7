"""The dashboard (B-MGMT-1) in a real headless Chromium driven by Selenium: log in, see a
queue appear, see its ready count follow what pika publishes, see the rate chart draw.

Needs Debian's `chromium` and `chromium-driver` and the `selenium` package; skipped (with
the reason) without them, except in CI (MQ_REQUIRE_CLIENTS=1)."""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from typing import Any, Iterator

import pika
import pytest

from mq.testing import BrokerProcess, run_broker

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
HAVE_SELENIUM = importlib.util.find_spec("selenium") is not None

# CI (MQ_REQUIRE_CLIENTS=1) installs them: there a missing piece fails instead of skipping.
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER and HAVE_SELENIUM)
    and os.environ.get("MQ_REQUIRE_CLIENTS") != "1",
    reason="the dashboard test needs Debian packages chromium and chromium-driver and the "
           "selenium Python package "
           f"(chromium: {CHROMIUM}, chromedriver: {CHROMEDRIVER}, selenium: {HAVE_SELENIUM})")

TIMEOUT = 30  # generous: a loaded CI machine runs Chromium slowly


@pytest.fixture(scope="module")
def broker() -> Iterator[BrokerProcess]:
    with run_broker(args=("--management-port", "0")) as b:
        yield b


@pytest.fixture
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="mq-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium fetch a driver
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait(driver: Any, condition: Any, message: str) -> Any:
    """Wait for condition(driver); the tables are redrawn on every poll, so an element
    found a moment ago may be gone: that counts as not yet."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, TIMEOUT, poll_frequency=0.2,
                         ignored_exceptions=(NoSuchElementException,
                                             StaleElementReferenceException)
                         ).until(condition, message)


def log_in(driver: Any, broker: BrokerProcess, user: str, password: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(broker.management_url + "/?poll=300")
    wait(driver, lambda d: d.find_element(By.ID, "login").is_displayed(), "no login form")
    driver.find_element(By.ID, "login-user").send_keys(user)
    driver.find_element(By.ID, "login-password").send_keys(password)
    driver.find_element(By.ID, "login-submit").click()


def queue_cell(driver: Any, key: str, column: str) -> str | None:
    """The text of one cell of a queue's row, or None while the row is not there (read in
    one script, so a redraw cannot come in between)."""
    return driver.execute_script("""
        const row = [...document.querySelectorAll('#queues tbody tr')]
            .find((r) => r.dataset.key === arguments[0]);
        return row ? row.querySelector('td.' + arguments[1]).textContent : null;""",
                                 key, column)


def test_dashboard_shows_queue_and_its_count_change(broker: BrokerProcess, browser: Any,
                                                    uid: str) -> None:
    """B-MGMT-1: after logging in, a queue declared by pika appears in the queues table;
    its ready count goes 0 -> 5 as pika publishes and back to 3 after two gets; the
    overview counts the connection and the rate chart shows a publish rate."""
    from selenium.webdriver.common.by import By

    log_in(browser, broker, "guest", "guest")
    wait(browser, lambda d: d.find_element(By.ID, "dashboard").is_displayed(),
         "dashboard not shown after login")
    assert not browser.find_element(By.ID, "login").is_displayed()
    name = f"dash-{uid}"
    key = f"//{name}"  # vhost "/", then the name
    conn = pika.BlockingConnection(pika.URLParameters(broker.url))
    ch = conn.channel()
    ch.queue_declare(name)
    wait(browser, lambda d: queue_cell(d, key, "ready") == "0", "queue row did not appear")
    for i in range(5):
        ch.basic_publish("", name, f"m{i}".encode())
    wait(browser, lambda d: queue_cell(d, key, "ready") == "5", "ready count did not reach 5")
    assert queue_cell(browser, key, "total") == "5"
    for _ in range(2):
        method, _, _ = ch.basic_get(name)
        ch.basic_ack(method.delivery_tag)
    wait(browser, lambda d: queue_cell(d, key, "ready") == "3", "ready count did not drop to 3")
    wait(browser, lambda d: int(d.find_element(By.ID, "total-connections").text) >= 1,
         "overview shows no connection")
    assert "guest" in browser.execute_script(
        "return [...document.querySelectorAll('#connections td.user')].map(c => c.textContent)")

    def publish_rate_shown(d: Any) -> bool:
        for _ in range(20):
            ch.basic_publish("", name, b"x")
        legend = d.find_element(By.CSS_SELECTOR, '#rates-legend span[data-series="publish"]')
        return not legend.text.endswith(": 0.0/s")

    wait(browser, publish_rate_shown, "the chart legend never showed a publish rate")
    # The chart is drawn: the canvas has pixels in the publish line's colour.
    drawn = browser.execute_script("""
        const c = document.getElementById('rates-chart');
        const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 0; i < px.length; i += 4)
          if (px[i] === 0xd9 && px[i + 1] === 0x82 && px[i + 2] === 0x2b) n++;
        return n;""")
    assert drawn > 0
    ch.queue_delete(name)
    conn.close()
    wait(browser, lambda d: queue_cell(d, key, "ready") is None, "deleted queue still listed")


def test_dashboard_lists_the_nodes(broker: BrokerProcess, browser: Any) -> None:
    """B-CLUSTER-8: the Nodes section lists /api/nodes: a single node is there, leading,
    in sync, no lag, running, with its AMQP address."""
    log_in(browser, broker, "guest", "guest")

    def node_rows(d: Any) -> list[dict[str, str]]:
        return d.execute_script("""
            return [...document.querySelectorAll('#nodes tbody tr')].map((r) =>
                Object.fromEntries([...r.cells].map((c) => [
                    [...c.classList].find((k) => k !== 'num'), c.textContent])));""")
    rows = wait(browser, node_rows, "the Nodes section stays empty")
    [row] = rows
    assert row["name"].startswith("mq@")
    assert (row["role"], row["in-sync"], row["lag"], row["running"]) == \
        ("leader", "yes", "0 B", "yes")
    assert row["amqp"].endswith(f":{broker.port}")
    assert browser.execute_script(
        "return document.querySelector('#nodes tbody tr').classList.contains('leader')")


def test_dashboard_refuses_a_wrong_password(broker: BrokerProcess, browser: Any) -> None:
    """B-MGMT-1: a wrong password keeps the login form up with the API's reason."""
    from selenium.webdriver.common.by import By

    log_in(browser, broker, "guest", "wrong")
    wait(browser, lambda d: d.find_element(By.ID, "login-error").text == "Login failed",
         "no login error shown")
    assert not browser.find_element(By.ID, "dashboard").is_displayed()


def test_dashboard_lists_streams_with_offsets_and_lag(broker: BrokerProcess,
                                                      browser: Any) -> None:
    """B-STREAM (management): the Streams section shows a stream's first and last offset,
    its size, and a consumer's offset and lag."""
    conn = pika.BlockingConnection(pika.URLParameters(broker.url))
    ch = conn.channel()
    ch.queue_declare("dash-stream", durable=True, arguments={"x-queue-type": "stream"})
    ch.confirm_delivery()
    for i in range(5):
        ch.basic_publish("", "dash-stream", b"m%d" % i)
    ch.basic_qos(prefetch_count=2)  # two delivered, unacked: the reader is at offset 2
    ch.basic_consume("dash-stream", lambda *a: None, consumer_tag="reader",
                     arguments={"x-stream-offset": "first"})
    conn.process_data_events(0.5)
    try:
        log_in(browser, broker, "guest", "guest")

        def stream_row(d: Any) -> dict[str, str] | None:
            rows = d.execute_script("""
                return [...document.querySelectorAll('#streams tbody tr')].map((r) =>
                    Object.fromEntries([...r.cells].map((c) => [
                        [...c.classList].find((k) => k !== 'num'), c.textContent])));""")
            return next((r for r in rows if r["name"] == "dash-stream"), None)
        row = wait(browser, stream_row, "the stream is not in the Streams section")
        assert (row["first"], row["last"]) == ("0", "4")
        assert row["size"].endswith("B") and row["size"] != "0 B"
        assert row["consumers"] == "reader: 2 (3)"
    finally:
        conn.close()
