"""issue 8 (structured logs): one line per event, `event key=value ...`: connections
accepted/opened/closed with peer, user and vhost; channel errors with code and text; queues
created and deleted; failed logins."""
from __future__ import annotations

import json
import re
import time

import pika
import pytest
from pamqp import commands as spec

from rawamqp import RawClient

_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')
_LINE = re.compile(r"^\S+ \S+ (?P<level>[A-Z]+) (?P<logger>\S+) (?P<event>[a-z ]+?) (?P<kv>\w+=.*)$")


def parse(line: str) -> tuple[str, dict[str, str]] | None:
    """(event, fields) of a structured log line, or None."""
    match = _LINE.match(line)
    if match is None:
        return None
    fields = {k: json.loads(v) if v.startswith('"') else v
              for k, v in _FIELD.findall(match.group("kv"))}
    return match.group("event"), fields


def events_since(broker, offset: int, event: str, **expect: str) -> dict[str, str]:
    """The first structured line for `event` whose fields include `expect` (waits 2 s)."""
    deadline = time.monotonic() + 2
    while True:
        for line in broker.log()[offset:].splitlines():
            parsed = parse(line)
            if parsed and parsed[0] == event and expect.items() <= parsed[1].items():
                return parsed[1]
        assert time.monotonic() < deadline, f"no '{event}' {expect} in:\n{broker.log()[offset:]}"
        time.sleep(0.05)


def _peer(conn: pika.BlockingConnection) -> str:
    host, port = conn._impl._transport._sock.getsockname()[:2]
    return f"{host}:{port}"


def test_connection_lifecycle_lines(mq_broker):
    """issue 8 (structured logs), B-CONN-9: accepted, opened (user, vhost) and closed (user,
    vhost, reason) are one line each, keyed by the client's address."""
    offset = len(mq_broker.log())
    conn = pika.BlockingConnection(pika.URLParameters(mq_broker.url))
    peer = _peer(conn)
    conn.close()
    events_since(mq_broker, offset, "connection accepted", peer=peer)
    events_since(mq_broker, offset, "connection opened", peer=peer, user="guest", vhost="/")
    events_since(mq_broker, offset, "connection closed", peer=peer, user="guest", vhost="/",
                 reason="client closed")


def test_channel_error_line_has_code_and_text(mq_broker, channel, uid):
    """issue 8 (structured logs): a channel error is logged with channel, code and the full
    reply text."""
    offset = len(mq_broker.log())
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):
        channel.queue_declare(uid, passive=True)
    fields = events_since(mq_broker, offset, "channel error", code="404")
    assert fields["text"] == f"NOT_FOUND - no queue '{uid}' in vhost '/'"
    assert fields["user"] == "guest" and fields["channel"] == str(channel.channel_number)


def test_queue_created_and_deleted_lines(mq_broker, channel, uid):
    """issue 8 (structured logs): queue created (with its flags) and queue deleted; a name
    with spaces stays one quoted value."""
    offset = len(mq_broker.log())
    name = f"{uid} with spaces"
    channel.queue_declare(name, durable=False, auto_delete=True)
    channel.queue_delete(name)
    events_since(mq_broker, offset, "queue created", vhost="/", queue=name, durable="False",
                 exclusive="False", auto_delete="True")
    events_since(mq_broker, offset, "queue deleted", vhost="/", queue=name)


def test_failed_login_line(mq_broker):
    """issue 8 (structured logs), B-CONN-3: a failed login is logged with peer, user and
    why, never with the password."""
    offset = len(mq_broker.log())
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        pika.BlockingConnection(pika.URLParameters(
            f"amqp://mallory:hunter2@127.0.0.1:{mq_broker.port}/"))
    fields = events_since(mq_broker, offset, "authentication failed", user="mallory")
    assert fields["peer"].startswith("127.0.0.1:")
    assert "Login was refused" in fields["text"]
    assert "hunter2" not in mq_broker.log()[offset:]


def test_connection_error_line(mq_broker):
    """issue 8 (structured logs), B-CONN-8: a connection error is logged with peer, user,
    vhost, code and text."""
    offset = len(mq_broker.log())
    client = RawClient(mq_broker.port)
    client.handshake()
    client.send_method(2, spec.Basic.Qos(prefetch_count=1))  # channel 2 was never opened
    assert client.expect("Connection.Close").reply_code == 504
    peer = "{}:{}".format(*client.sock.getsockname()[:2])
    fields = events_since(mq_broker, offset, "connection error", peer=peer, code="504")
    assert (fields["user"], fields["vhost"]) == ("guest", "/")
    assert fields["text"] == "CHANNEL_ERROR - expected 'channel.open' on channel 2"
    client.close()
