"""Combinations of queue features that applications build on, end to end with pika: a delayed
retry loop through a dead-letter exchange and a TTL wait queue, and a bounded priority task
queue that parks what it drops or rejects. The same script passes against RabbitMQ:
MQ_TEST_URL=amqp://guest:guest@127.0.0.1:5672/ ."""
from __future__ import annotations

import time

import pika

from amqputil import settle, wait_for
from queuetest import Scratch, bodies, drain, publish, scratch, wait_count, wait_get, x_death

__all__ = ["scratch"]


def test_delayed_retry_loop(scratch: Scratch) -> None:
    """B-DLX-1..4, B-TTL-2: work queue -> reject -> DLX -> wait queue with TTL -> expired back
    to the work exchange by the original routing key -> work queue. Each round the x-death
    counts of both queues grow by one (one entry per queue, newest first), the delay is at
    least the TTL, and x-first-death-* stay on the first rejection. Not a cycle to drop: a
    rejection is on the way."""
    ch = scratch.channel
    jobs = scratch.exchange("jobs", "direct")
    retry = scratch.exchange("retry", "fanout")
    work = scratch.queue("work", **{"x-dead-letter-exchange": retry})
    wait = scratch.queue("wait", **{"x-message-ttl": 300, "x-dead-letter-exchange": jobs})
    ch.queue_bind(work, jobs, "job")
    ch.queue_bind(wait, retry)

    seen: list[tuple[float, pika.spec.Basic.Deliver, pika.BasicProperties]] = []

    def on_job(channel, method, props, body) -> None:
        seen.append((time.monotonic(), method, props))
        if len(seen) < 4:
            channel.basic_reject(method.delivery_tag, requeue=False)  # try again later
        else:
            channel.basic_ack(method.delivery_tag)

    ch.basic_consume(work, on_job)
    ch.basic_publish(jobs, "job", b"flaky task", pika.BasicProperties(headers={"try": 1}))
    wait_for(scratch.connection, lambda: len(seen) == 4, timeout=15)

    assert x_death(seen[0][2]) == []
    for attempt, (at, method, props) in enumerate(seen[1:], start=1):
        assert at - seen[attempt - 1][0] >= 0.25  # waited out the TTL
        assert (method.exchange, method.routing_key) == (jobs, "job")
        assert props.headers["try"] == 1
        deaths = x_death(props)
        assert [(d["queue"], d["reason"], d["count"]) for d in deaths] == \
            [(wait, "expired", attempt), (work, "rejected", attempt)]
        assert deaths[0]["exchange"] == retry and deaths[1]["exchange"] == jobs
        assert deaths[1]["routing-keys"] == ["job"]
        assert (props.headers["x-first-death-queue"], props.headers["x-first-death-reason"],
                props.headers["x-first-death-exchange"]) == (work, "rejected", jobs)
    settle(scratch.connection, 0.5)
    assert len(seen) == 4
    assert drain(ch, wait) == []


def test_retry_loop_with_per_message_backoff(scratch: Scratch) -> None:
    """B-DLX-2, B-TTL-1: the backoff variant: the consumer republishes a failed job to the
    wait queue with a growing `expiration` (the wait queue has no TTL of its own). Each dead
    letter drops `expiration` and records it as original-expiration; the job's history
    keeps one entry for the wait queue, counted."""
    ch = scratch.channel
    work = f"{scratch.uid}-work"
    wait = scratch.queue("wait", **{"x-dead-letter-exchange": "",
                                    "x-dead-letter-routing-key": work})
    scratch.queue("work")
    publish(ch, work, b"job")
    for attempt, backoff in enumerate(["200", "400"], start=1):
        _, props, body = wait_get(ch, work, timeout=5)
        publish(ch, wait, body, headers=props.headers, expiration=backoff)
        _, props, _ = wait_get(ch, work, timeout=5)
        assert props.expiration is None
        [death] = x_death(props)
        assert (death["queue"], death["reason"], death["count"]) == (wait, "expired", attempt)
        # The table keeps the fields of its first death: RabbitMQ only raises the count.
        assert death["original-expiration"] == "200"
        ch.basic_publish("", work, body, props)  # back to work for the next attempt
    assert bodies(drain(ch, work)) == [b"job"]


def test_bounded_priority_queue_parks_what_it_drops(scratch: Scratch) -> None:
    """B-PRI-1, B-PRI-3, B-LEN-2, B-DLX-1..3: a priority task queue with x-max-length and a
    parking DLX. Overflow drops from the head (the most urgent, as RabbitMQ does) into
    parking as `maxlen`; a worker takes the rest in priority order and rejects one, which
    is parked as `rejected`; a stale task expires into parking as `expired`. Priorities
    survive into the parking queue."""
    ch = scratch.channel
    parking_x, parking = scratch.dead_letter_target("parking")
    tasks = scratch.queue("tasks", **{"x-max-priority": 10, "x-max-length": 3,
                                      "x-dead-letter-exchange": parking_x})
    for body, priority in [(b"report", 1), (b"alert", 9), (b"email", 5), (b"backup", 1),
                           (b"page", 9)]:
        publish(ch, tasks, body, priority=priority)
    wait_count(ch, parking, 2)
    dropped = drain(ch, parking)
    assert [(b, p.priority, x_death(p)[0]["reason"]) for _, p, b in dropped] == \
        [(b"alert", 9, "maxlen"), (b"page", 9, "maxlen")]

    got: list[tuple[int, bytes]] = []
    ch.basic_qos(prefetch_count=1)

    def worker(channel, method, props, body) -> None:
        got.append((props.priority, body))
        if body == b"email":
            channel.basic_reject(method.delivery_tag, requeue=False)
        else:
            channel.basic_ack(method.delivery_tag)

    tag = ch.basic_consume(tasks, worker)
    wait_for(scratch.connection, lambda: len(got) == 3)
    assert got == [(5, b"email"), (1, b"report"), (1, b"backup")]
    _, props, body = wait_get(ch, parking)
    assert (body, props.priority, x_death(props)[0]["reason"]) == (b"email", 5, "rejected")

    ch.basic_cancel(tag)
    publish(ch, tasks, b"stale", priority=7, expiration="200")
    _, props, body = wait_get(ch, parking)
    death = x_death(props)[0]
    assert (body, props.priority, death["reason"], death["original-expiration"]) == \
        (b"stale", 7, "expired", "200")
    assert drain(ch, tasks) == []
