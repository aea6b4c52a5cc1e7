"""Users, permissions, loopback-only guest and TLS (B-AUTH), through real clients."""
from __future__ import annotations

import json
import re
import ssl
import subprocess

import pika
import pytest

from mq.testing import run_broker

ALICE = {"users": [{"name": "alice", "password": "s3cret", "tags": []},
                   {"name": "nobody", "password": "x", "tags": []}],
         "vhosts": [{"name": "/"}, {"name": "other"}],
         "permissions": [{"user": "alice", "vhost": "/", "configure": "^alice\\.",
                          "write": "^(alice\\.|amq\\.default$)", "read": "^alice\\."}]}


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    path = tmp_path_factory.mktemp("defs") / "definitions.json"
    path.write_text(json.dumps(ALICE))
    with run_broker(args=("--definitions", str(path))) as broker:
        yield broker


def _connect(broker, user: str, password: str, vhost: str = "%2F") -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(
        f"amqp://{user}:{password}@127.0.0.1:{broker.port}/{vhost}"))


def _refused(fn) -> tuple[int, str]:
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        fn()
    return info.value.reply_code, info.value.reply_text


def test_permissions_configure_write_read(secured):
    """B-AUTH-1: configure, write and read patterns are applied per resource, and a refusal
    is 403 naming the resource, the vhost and the user."""
    conn = _connect(secured, "alice", "s3cret")
    ch = conn.channel()
    ch.queue_declare("alice.q")
    ch.exchange_declare("alice.x", "direct")
    ch.queue_bind("alice.q", "alice.x", "k")
    ch.basic_publish("alice.x", "k", b"hi")
    method, _, body = None, None, None
    for _ in range(50):
        method, _, body = ch.basic_get("alice.q", auto_ack=True)
        if method:
            break
    assert body == b"hi"
    code, text = _refused(lambda: ch.queue_declare("bob.q"))
    assert code == 403
    assert text == ("ACCESS_REFUSED - configure access to queue 'bob.q' in vhost '/' "
                    "refused for user 'alice'")
    ch = conn.channel()
    code, text = _refused(lambda: ch.basic_publish("amq.fanout", "", b"x") or ch.queue_declare(
        "alice.sync", passive=False))
    assert code == 403 and "write access to exchange 'amq.fanout'" in text
    ch = conn.channel()
    code, text = _refused(lambda: ch.queue_bind("alice.q", "amq.direct", "k"))
    assert code == 403 and "read access to exchange 'amq.direct'" in text
    conn.close()


def test_read_permission_on_consume_and_get(secured):
    """B-AUTH-1: consuming from or getting off a queue needs read permission on it."""
    admin = pika.BlockingConnection(pika.URLParameters(secured.url))
    admin.channel().queue_declare("shared.q")
    conn = _connect(secured, "alice", "s3cret")
    ch = conn.channel()
    code, text = _refused(lambda: ch.basic_get("shared.q"))
    assert code == 403 and "read access to queue 'shared.q'" in text
    ch = conn.channel()
    code, _ = _refused(lambda: ch.basic_consume("shared.q", lambda *a: None))
    assert code == 403
    conn.close()
    admin.close()


def test_user_without_vhost_permission_is_530(secured):
    """B-AUTH-1 / B-CONN-5: a user with no permissions on the vhost can't open it."""
    for user, password, vhost in (("nobody", "x", "%2F"), ("alice", "s3cret", "other")):
        with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as info:
            _connect(secured, user, password, vhost)
        assert "(530)" in str(info.value)
        assert f"refused for user '{user}'" in str(info.value)


def test_passwords_are_stored_hashed(secured, tmp_path):
    """B-AUTH-1: a definitions export carries a salted SHA-256 hash, never the password, and
    the hash logs the user in when imported again."""
    from mq.broker.broker import Broker
    from mq.broker.definitions import export_definitions, import_definitions

    broker = Broker()
    import_definitions(broker, ALICE)
    exported = export_definitions(broker)
    alice = next(u for u in exported["users"] if u["name"] == "alice")
    assert "s3cret" not in json.dumps(exported)
    assert alice["hashing_algorithm"] == "rabbit_password_hashing_sha256"
    again = Broker()
    import_definitions(again, exported)
    assert again.users.authenticate("alice", "s3cret") is not None
    assert again.users.authenticate("alice", "wrong") is None


def _non_loopback_address() -> str | None:
    """An address of this machine's own that is not loopback (the broker listens there)."""
    try:
        out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"],
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    match = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", out)
    return match.group(1) if match else None


def test_guest_only_from_loopback():
    """B-AUTH-2: guest may connect from loopback only, unless configured otherwise."""
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address to connect from")
    for loopback_users, allowed in (("guest", False), ("", True)):
        with run_broker(args=("--host", "0.0.0.0", "--loopback-users", loopback_users)) as b:
            params = pika.URLParameters(f"amqp://guest:guest@{address}:{b.port}/")
            if allowed:
                pika.BlockingConnection(params).close()
            else:
                with pytest.raises(pika.exceptions.ProbableAuthenticationError) as info:
                    pika.BlockingConnection(params)
                assert "403" in str(info.value)
                assert "can only connect via localhost" in str(info.value)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    if subprocess.run(["which", "openssl"], capture_output=True).returncode:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-keyout", str(d / "key.pem"),
                    "-out", str(d / "cert.pem")], check=True, capture_output=True)
    return d / "cert.pem", d / "key.pem"


def test_tls_listener(tls_files):
    """B-AUTH-3: amqps with the standard library's ssl: a client connects over TLS and
    works; a wrong password over TLS is refused with 403."""
    cert, key = tls_files
    with run_broker(args=("--tls-cert", str(cert), "--tls-key", str(key),
                          "--tls-port", "0")) as broker:
        port = int(re.search(r"amqps://[^:]+:(\d+)", broker.log()).group(1))
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False
        options = pika.SSLOptions(context, "localhost")
        params = pika.ConnectionParameters("127.0.0.1", port, ssl_options=options,
                                           credentials=pika.PlainCredentials("guest", "guest"))
        conn = pika.BlockingConnection(params)
        ch = conn.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", q, b"over tls")
        for _ in range(50):
            method, _, body = ch.basic_get(q, auto_ack=True)
            if method:
                break
        assert body == b"over tls"
        conn.close()
        params.credentials = pika.PlainCredentials("guest", "wrong")
        with pytest.raises(pika.exceptions.ProbableAuthenticationError) as info:
            pika.BlockingConnection(params)
        assert "403" in str(info.value)
