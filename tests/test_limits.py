"""issue 8: limits on connections, channels per connection, queues and message size; each
refusal is the AMQP error RabbitMQ gives for that limit, and a log line."""
from __future__ import annotations

import re
import time
from typing import Iterator

import pika
import pytest
from pamqp import commands as spec

from mq.testing import BrokerProcess, run_broker
from rawamqp import RawClient

MAX_CONNECTIONS, MAX_CHANNELS, MAX_QUEUES, MAX_SIZE = 3, 3, 4, 1000


@pytest.fixture(scope="module")
def limited() -> Iterator[BrokerProcess]:
    with run_broker(args=("--max-connections", str(MAX_CONNECTIONS),
                          "--max-channels-per-connection", str(MAX_CHANNELS),
                          "--max-queues", str(MAX_QUEUES),
                          "--max-message-size", str(MAX_SIZE))) as broker:
        yield broker


def _connect(broker: BrokerProcess) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(broker.url))


def _log_line(broker: BrokerProcess, offset: int, *needles: str) -> str:
    """The first new log line holding all the needles (waits up to 2 s)."""
    deadline = time.monotonic() + 2
    while True:
        for line in broker.log()[offset:].splitlines():
            if all(n in line for n in needles):
                return line
        assert time.monotonic() < deadline, broker.log()[offset:]
        time.sleep(0.05)


def test_connection_limit_refuses_with_530(limited):
    """issue 8 (--max-connections): past the limit connection.open is refused with 530
    NOT_ALLOWED in RabbitMQ's words and logged; a slot freed by a close can be used again."""
    offset = len(limited.log())
    conns = [_connect(limited) for _ in range(MAX_CONNECTIONS)]
    try:
        text = f"NOT_ALLOWED - connection refused: node connection limit ({MAX_CONNECTIONS}) " \
               "is reached"
        with pytest.raises(pika.exceptions.ProbableAccessDeniedError, match=re.escape(text)):
            _connect(limited)
        client = RawClient(limited.port)  # the exact frame
        client.login()
        client.expect("Connection.Tune")
        client.send_method(0, spec.Connection.TuneOk(channel_max=0, frame_max=131072))
        client.send_method(0, spec.Connection.Open(virtual_host="/"))
        close = client.expect("Connection.Close")
        assert (close.reply_code, close.reply_text) == (530, text)
        client.close()
        line = _log_line(limited, offset, "connection refused", "reason=\"connection limit\"")
        assert f"limit={MAX_CONNECTIONS}" in line and "user=guest" in line
        conns.pop().close()
        conns.append(_connect(limited))  # the freed slot
        conns[-1].channel().queue_declare("", exclusive=True)
    finally:
        for conn in conns:
            conn.close()


def test_channel_max_is_negotiated_lower(limited):
    """issue 8 (--max-channels-per-connection): tune proposes the configured channel_max and
    pika adopts it."""
    client = RawClient(limited.port)
    client.login()
    assert client.expect("Connection.Tune").channel_max == MAX_CHANNELS
    client.close()
    conn = _connect(limited)
    try:
        assert conn._impl.params.channel_max == MAX_CHANNELS
        for _ in range(MAX_CHANNELS):
            conn.channel()
        with pytest.raises(pika.exceptions.NoFreeChannels):
            conn.channel()
    finally:
        conn.close()


def test_channel_past_channel_max_is_530(limited):
    """issue 8 (--max-channels-per-connection): a client that opens more channels than the
    negotiated channel_max gets RabbitMQ's 530 NOT_ALLOWED, and the refusal is logged."""
    offset = len(limited.log())
    client = RawClient(limited.port)
    client.handshake()
    for number in range(1, MAX_CHANNELS + 1):
        client.open_channel(number)
    client.send_method(MAX_CHANNELS + 1, spec.Channel.Open())
    close = client.expect("Connection.Close")
    assert close.reply_code == 530
    assert close.reply_text == (f"NOT_ALLOWED - number of channels opened ({MAX_CHANNELS}) has "
                                f"reached the negotiated channel_max ({MAX_CHANNELS})")
    assert (close.class_id, close.method_id) == (0, 0)  # as RabbitMQ 3.10 sends it
    client.send_method(0, spec.Connection.CloseOk())
    assert client.closed_by_peer()
    line = _log_line(limited, offset, "channel refused")
    assert f"channel={MAX_CHANNELS + 1}" in line and f"limit={MAX_CHANNELS}" in line


def test_queue_limit_refuses_with_406(limited, uid):
    """issue 8 (--max-queues): declaring a queue past the limit closes the channel with 406
    and RabbitMQ's text; redeclaring an existing queue still works, and a delete frees a
    slot. The refusal is logged."""
    offset = len(limited.log())
    conn = _connect(limited)
    try:
        ch = conn.channel()
        names = [f"{uid}-{i}" for i in range(MAX_QUEUES)]
        for name in names:
            ch.queue_declare(name, auto_delete=False)
        ch.queue_declare(names[0])  # exists: not a new queue
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            ch.queue_declare(f"{uid}-extra")
        assert info.value.reply_code == 406
        assert info.value.reply_text == (f"PRECONDITION_FAILED - cannot declare queue "
                                         f"'{uid}-extra': queue limit in cluster ({MAX_QUEUES}) "
                                         "is reached")
        line = _log_line(limited, offset, "queue refused")
        assert f"queue={uid}-extra" in line and f"limit={MAX_QUEUES}" in line
        ch = conn.channel()
        ch.queue_delete(names[0])
        ch.queue_declare(f"{uid}-extra")
        for name in names[1:] + [f"{uid}-extra"]:
            ch.queue_delete(name)
    finally:
        conn.close()


def test_message_size_limit_is_406_and_logged(limited, uid):
    """issue 8 (--max-message-size), B-PUB-4: a body over the limit closes the channel with
    406 and the channel error is logged with its code and text."""
    offset = len(limited.log())
    conn = _connect(limited)
    try:
        ch = conn.channel()
        ch.basic_publish("", uid, b"x" * (MAX_SIZE + 1))
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            ch.queue_declare(uid, passive=True)
        assert info.value.reply_code == 406
        text = (f"PRECONDITION_FAILED - message size {MAX_SIZE + 1} is larger than configured "
                f"max size {MAX_SIZE}")
        assert info.value.reply_text == text
        assert f'code=406 text="{text}"' in _log_line(limited, offset, "channel error")
    finally:
        conn.close()
