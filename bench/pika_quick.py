"""A quick figure with a plain client: pika publishes N 16-byte messages while a second
process consumes them (no-ack). pika itself is the bottleneck here (about 20k msg/s), so
this shows that mq keeps up with a Python client; the real comparison is `python -m bench`.

    python bench/pika_quick.py amqp://guest:guest@127.0.0.1:5672/ 100000
"""
from __future__ import annotations

import multiprocessing as mp
import sys
import time

import pika

QUEUE = "bench-pika-quick"


def _consume(url: str, count: int, ready: mp.Event, done: mp.Queue) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ready.set()
    got = 0
    for _ in ch.consume(QUEUE, auto_ack=True):
        got += 1
        if got == count:
            break
    done.put(time.perf_counter())
    conn.close()


def main(url: str, count: int) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.queue_declare(QUEUE)
    ch.queue_purge(QUEUE)
    ready, done = mp.Event(), mp.Queue()
    consumer = mp.Process(target=_consume, args=(url, count, ready, done))
    consumer.start()
    ready.wait()
    time.sleep(0.3)  # let the consumer's basic.consume land first
    body = b"x" * 16
    start = time.perf_counter()
    for _ in range(count):
        ch.basic_publish("", QUEUE, body)
    published = time.perf_counter()
    finished = done.get()
    consumer.join()
    print(f"{count} messages: publish {count / (published - start):,.0f} msg/s, "
          f"publish+consume {count / (finished - start):,.0f} msg/s")
    ch.queue_delete(QUEUE)
    conn.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 100_000)
