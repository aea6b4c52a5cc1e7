"""mq.broker.publish without a socket: the outcome route() gives a front end."""
from __future__ import annotations

import pytest

from mq._core.message import Message
from mq.broker.broker import Broker
from mq.broker.errors import AccessRefused, PreconditionFailed
from mq.broker.properties import build as build_properties
from mq.broker.publish import (NO_ROUTE, REFUSED, check_exchange, check_message, check_size,
                               route)


def message(routing_key: str, **props) -> Message:
    return Message("", routing_key, build_properties(props), b"body")


def test_route_outcomes() -> None:
    vhost = Broker().vhosts["/"]
    default = vhost.get_exchange("")
    assert route(vhost, default, message("nowhere")) == NO_ROUTE
    vhost.declare_queue("q", durable=False)
    assert route(vhost, default, message("q")) == 0  # no store: confirm now
    vhost.declare_queue("full", durable=False,
                        arguments={"x-max-length": 0, "x-overflow": "reject-publish"})
    assert route(vhost, default, message("full")) == REFUSED


def test_bcc_routes_and_is_removed() -> None:
    vhost = Broker().vhosts["/"]
    for name in ("a", "b"):
        vhost.declare_queue(name, durable=False)
    assert route(vhost, vhost.get_exchange(""), message("a", headers={"BCC": ["b"]})) == 0
    got = vhost.queues["b"].get(no_ack=True).msg
    assert got.headers in (None, {}) and got.bcc == ("b",)


def test_checks() -> None:
    broker = Broker()
    vhost = broker.vhosts["/"]
    with pytest.raises(PreconditionFailed, match="message size 11 is larger than configured "
                                                 "max size 10"):
        check_size(11, 10)
    check_size(10, 10)
    with pytest.raises(PreconditionFailed, match="invalid expiration 'x': no_integer"):
        check_message(message("q", expiration="x"), "guest")
    with pytest.raises(PreconditionFailed, match="user_id property set to 'bob'"):
        check_message(message("q", user_id="bob"), "guest")
    check_message(message("q", user_id="guest", expiration="10"), "guest")
    internal = vhost.declare_exchange("int", "fanout", durable=False, internal=True)
    with pytest.raises(AccessRefused, match="cannot publish to internal exchange 'int'"):
        check_exchange(vhost, internal, None, "")  # before any user check
