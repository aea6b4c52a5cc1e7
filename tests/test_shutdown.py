"""issue 8: graceful shutdown on SIGTERM: clients are closed with 320 CONNECTION_FORCED in
RabbitMQ's words, the store is flushed, and the process exits 0 promptly."""
from __future__ import annotations

import signal
import socket
import time

import pika
import pytest

from mq.testing import BrokerProcess

SHUTDOWN_TEXT = "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"


def test_sigterm_closes_clients_with_320_and_exits_0(uid):
    """issue 8 (graceful shutdown): on SIGTERM every client (a publisher with confirms and a
    consumer) gets connection.close 320 with RabbitMQ's text, the broker exits 0 within a few
    seconds and stops listening, and a confirmed persistent message is there after a
    restart."""
    broker = BrokerProcess().start()
    try:
        publisher = pika.BlockingConnection(pika.URLParameters(broker.url))
        pch = publisher.channel()
        pch.confirm_delivery()
        pch.queue_declare(uid, durable=True)
        pch.basic_publish("", uid, b"kept", pika.BasicProperties(delivery_mode=2))
        consumer = pika.BlockingConnection(pika.URLParameters(broker.url))
        cch = consumer.channel()
        cch.queue_declare(uid + "-other")
        cch.basic_consume(uid + "-other", lambda *args: None)

        started = time.monotonic()
        broker.proc.send_signal(signal.SIGTERM)
        for conn in (publisher, consumer):
            with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
                while time.monotonic() - started < 5:
                    conn.process_data_events(time_limit=0.05)
            assert (info.value.reply_code, info.value.reply_text) == (320, SHUTDOWN_TEXT)
        assert broker.proc.wait(5) == 0
        assert time.monotonic() - started < 5
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((broker.host, broker.port), timeout=1)
        log = broker.log()
        assert "shutting down signal=SIGTERM" in log and "mq stopped" in log and "Traceback" not in log

        broker.proc = None
        broker.start()
        check = pika.BlockingConnection(pika.URLParameters(broker.url))
        _method, _props, body = check.channel().basic_get(uid, auto_ack=True)
        assert body == b"kept"
        check.close()
    finally:
        broker.cleanup()
