"""Exclusive consumers (B-CON-2), as RabbitMQ refuses them."""
from __future__ import annotations

import pika
import pytest


def _refused(channel, queue: str, exclusive: bool) -> tuple[int, str]:
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        channel.basic_consume(queue, lambda *a: None, exclusive=exclusive)
    return info.value.reply_code, info.value.reply_text


def test_exclusive_consume_refused_while_others_consume(connection, uid):
    """B-CON-2: an exclusive consume on a queue that already has a consumer is 403."""
    ch = connection.channel()
    q = ch.queue_declare(f"excl-{uid}", auto_delete=True).method.queue
    ch.basic_consume(q, lambda *a: None)
    other = connection.channel()
    code, text = _refused(other, q, exclusive=True)
    assert code == 403
    assert text == f"ACCESS_REFUSED - queue '{q}' in vhost '/' in exclusive use"
    assert ch.is_open


def test_any_consume_refused_on_exclusive_consumer(connection, uid):
    """B-CON-2: while a queue has an exclusive consumer, any other consume is 403, exclusive
    or not; once it is cancelled, others may consume again."""
    ch = connection.channel()
    q = ch.queue_declare(f"excl2-{uid}").method.queue
    tag = ch.basic_consume(q, lambda *a: None, exclusive=True)
    for exclusive in (False, True):
        other = connection.channel()
        code, text = _refused(other, q, exclusive)
        assert code == 403 and "in exclusive use" in text
    ch.basic_cancel(tag)
    again = connection.channel()
    assert again.basic_consume(q, lambda *a: None)
    again.queue_delete(q)
