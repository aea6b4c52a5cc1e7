"""Consumer priorities (B-CON-5, the `x-priority` consume argument), end to end with pika:
higher-priority consumers get messages while they have prefetch room, lower ones get them
when the higher are full, equals share round-robin. The same script gives the same
deliveries on RabbitMQ 3.10: MQ_TEST_URL=amqp://guest:guest@127.0.0.1:5672/ ."""
from __future__ import annotations

from decimal import Decimal
from typing import Any

import pika
import pytest

from consumers import Consumers
from queuetest import Scratch, scratch

__all__ = ["scratch"]


@pytest.fixture
def consumers(scratch: Scratch) -> Consumers:
    return Consumers(scratch.channel, scratch.queue("q"))


def test_higher_priority_gets_everything_while_it_has_room(consumers) -> None:
    """B-CON-5: a consumer with a higher x-priority and room gets every message; the lower
    one (and one without the argument, priority 0) gets none."""
    consumers.add("low", priority=1)
    consumers.add("high", priority=10)
    consumers.add("default")
    consumers.publish(range(1, 21))
    assert consumers.who(range(1, 21)) == ["high"] * 20


def test_lower_priority_gets_messages_when_higher_is_full(consumers) -> None:
    """B-CON-5: once the high-priority consumer is at its prefetch limit the lower one gets
    the rest; an ack gives the high one room, and the next message goes to it again."""
    consumers.add("high", priority=10, prefetch=2)
    consumers.add("low", priority=0)
    consumers.publish(range(1, 11))
    assert consumers.who(range(1, 11)) == ["high"] * 2 + ["low"] * 8
    consumers.ack_one("high")
    consumers.pump(0.2)
    consumers.publish(range(11, 14))
    assert consumers.who(range(11, 14)) == ["high", "low", "low"]


def test_waiting_messages_go_to_higher_priority_as_soon_as_it_subscribes(scratch,
                                                                         consumers) -> None:
    """B-CON-5: with messages waiting, a low consumer takes what its prefetch allows; a
    higher-priority consumer subscribing afterwards takes the next ones before the low one
    gets room again."""
    for n in range(1, 11):
        scratch.channel.basic_publish("", consumers.queue, str(n).encode())
    consumers.add("low", prefetch=3)
    consumers.wait(lambda: len(consumers.deliveries) == 3)
    consumers.add("high", priority=5, prefetch=3)
    consumers.wait(lambda: len(consumers.deliveries) == 6)
    consumers.ack_one("low")
    consumers.wait(lambda: len(consumers.deliveries) == 7)
    assert consumers.who(range(1, 8)) == ["low"] * 3 + ["high"] * 3 + ["low"]


def test_round_robin_among_equal_priorities(consumers) -> None:
    """B-CON-5: consumers of the same highest priority take turns; lower priorities (and a
    negative one) get nothing while they have room."""
    consumers.add("a", priority=5)
    consumers.add("b", priority=5)
    consumers.add("zero", priority=0)
    consumers.add("negative", priority=-1)
    consumers.publish(range(1, 9))
    assert consumers.who(range(1, 9)) == ["a", "b"] * 4


def test_negative_priority_below_default(consumers) -> None:
    """B-CON-5: priorities may be negative; the default (no argument) is 0 and wins."""
    consumers.add("negative", priority=-5)
    consumers.add("default")
    consumers.publish(range(1, 6))
    assert consumers.who(range(1, 6)) == ["default"] * 5


@pytest.mark.parametrize("value,type_name", [("high", "longstr"), (True, "bool"),
                                             (Decimal("1.5"), "decimal")])
def test_non_integer_priority_is_406(scratch, value: Any, type_name: str) -> None:
    """B-CON-5: an x-priority that is not an integer closes the channel with 406 and
    RabbitMQ's text."""
    queue = scratch.queue("q")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        scratch.connection.channel().basic_consume(queue, lambda *a: None,
                                                   arguments={"x-priority": value})
    assert (info.value.reply_code, info.value.reply_text) == (
        406, f"PRECONDITION_FAILED - invalid arg 'x-priority' for queue '{queue}' in vhost "
             f"'/': \"expected integer, got {type_name}\"")
