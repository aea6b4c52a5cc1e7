"""Connection handshake, negotiation and teardown (B-CONN) through raw frames and pika."""
from __future__ import annotations

import pika
import pytest
from pamqp import commands as spec
from pamqp.encode import field_table

from rawamqp import PROTOCOL_HEADER, RawClient


def test_bad_protocol_header_gets_ours_back(mq_broker):
    """B-CONN-1: a protocol header other than AMQP 0-9-1 gets ours back, then the socket closes."""
    client = RawClient(mq_broker.port)
    client.send(b"AMQP\x00\x00\x08\x00")
    assert client.sock.recv(8) == PROTOCOL_HEADER
    assert client.closed_by_peer()


def test_start_offers_mechanisms_and_capabilities(mq_broker):
    """B-CONN-2: connection.start offers PLAIN AMQPLAIN, en_US and the capabilities table."""
    client = RawClient(mq_broker.port)
    client.send(PROTOCOL_HEADER)
    start = client.expect("Connection.Start")
    assert (start.version_major, start.version_minor) == (0, 9)
    assert start.mechanisms.split() == ["PLAIN", "AMQPLAIN"]
    assert start.locales == "en_US"
    props = start.server_properties
    for key in ("product", "version", "platform"):
        assert props[key]
    caps = props["capabilities"]
    for cap in ("publisher_confirms", "exchange_exchange_bindings", "basic.nack",
                "consumer_cancel_notify", "consumer_priorities", "authentication_failure_close",
                "per_consumer_qos"):
        assert caps[cap] is True, cap


def test_wrong_password_with_failure_close_capability(mq_broker):
    """B-CONN-3: wrong credentials give 403 ACCESS_REFUSED when the client announced
    authentication_failure_close, and the failure is logged."""
    params = pika.URLParameters(mq_broker.url.replace("guest:guest", "guest:wrong"))
    with pytest.raises(pika.exceptions.ProbableAuthenticationError) as info:
        pika.BlockingConnection(params)
    assert "403" in str(info.value) and "ACCESS_REFUSED" in str(info.value)
    assert "authentication failed" in mq_broker.log()


def test_wrong_password_without_capability_just_closes(mq_broker):
    """B-CONN-3: without authentication_failure_close the socket simply closes."""
    client = RawClient(mq_broker.port)
    client.login("guest", "nope")
    assert client.closed_by_peer()
    assert client.buf == b""


def test_amqplain_login(mq_broker):
    """B-CONN-2: the AMQPLAIN mechanism logs in too."""
    client = RawClient(mq_broker.port)
    table = field_table({"LOGIN": "guest", "PASSWORD": "guest"})[4:]
    client.login(mechanism="AMQPLAIN", response=table.decode("latin-1"))
    tune = client.expect("Connection.Tune")
    assert tune.channel_max == 2047


def test_tune_proposes_limits_and_frame_max_enforced(mq_broker):
    """B-CONN-4: tune proposes 2047 / 131072 / 60; a frame over frame_max is 501."""
    client = RawClient(mq_broker.port)
    client.login()
    tune = client.expect("Connection.Tune")
    assert (tune.channel_max, tune.frame_max, tune.heartbeat) == (2047, 131072, 60)
    client.send_method(0, spec.Connection.TuneOk(channel_max=100, frame_max=4096, heartbeat=0))
    client.send_method(0, spec.Connection.Open(virtual_host="/"))
    client.expect("Connection.OpenOk")
    client.open_channel(1)
    client.send_method(1, spec.Basic.Publish(exchange="", routing_key="x"))
    client.send_content(1, b"y" * 10000, frame_max=131072)  # one 10 KB body frame > 4096
    close = client.expect("Connection.Close")
    assert close.reply_code == 501


def test_pika_negotiates_lower_heartbeat(mq_broker):
    """B-CONN-4: the lower non-zero heartbeat of each side wins."""
    params = pika.URLParameters(mq_broker.url + "?heartbeat=7")
    conn = pika.BlockingConnection(params)
    assert conn._impl.params.heartbeat == 7
    conn.close()


def test_unknown_vhost_is_530(mq_broker):
    """B-CONN-5: connection.open to an unknown vhost is 530 NOT_ALLOWED."""
    client = RawClient(mq_broker.port)
    client.login()
    client.expect("Connection.Tune")
    client.send_method(0, spec.Connection.TuneOk(channel_max=0, frame_max=131072, heartbeat=0))
    client.send_method(0, spec.Connection.Open(virtual_host="/nope"))
    close = client.expect("Connection.Close")
    assert close.reply_code == 530
    assert "/nope" in close.reply_text


def test_client_close_gets_close_ok(mq_broker):
    """B-CONN-9: connection.close from the client gets close-ok."""
    client = RawClient(mq_broker.port)
    client.handshake()
    client.send_method(0, spec.Connection.Close(reply_code=200, reply_text="bye",
                                                class_id=0, method_id=0))
    client.expect("Connection.CloseOk")
    assert client.closed_by_peer()


def test_refused_login_waits_for_close_ok(mq_broker):
    """B-CONN-3: after the 403 the broker waits for close-ok before dropping the socket, as
    RabbitMQ does, so a client reading the close (php-amqplib) sees 403 and not a reset."""
    client = RawClient(mq_broker.port)
    client.login("guest", "nope", {"capabilities": {"authentication_failure_close": True}})
    close = client.expect("Connection.Close")
    assert close.reply_code == 403
    assert not client.closed_by_peer(timeout=0.5)
    client.send_method(0, spec.Connection.CloseOk())
    assert client.closed_by_peer()
