"""Confirmed persistent publishes/s with aio-pika: 100 publishes in flight, 1 KB bodies,
delivery_mode 2, one durable queue, 5 seconds. The same script runs against any broker:

    python bench/confirms_aiopika.py amqp://guest:guest@127.0.0.1:5672/

aio-pika itself is the limit here (a few thousand/s); `python -m bench --scenarios S3`
measures the broker with the Go load generator.
"""
import asyncio, sys, time
import aio_pika

async def main(url: str, seconds: float = 5.0, in_flight: int = 100) -> None:
    conn = await aio_pika.connect(url)
    ch = await conn.channel(publisher_confirms=True)
    q = await ch.declare_queue("pubbench", durable=True)
    await q.purge()
    body = b"x" * 1024
    sem = asyncio.Semaphore(in_flight)
    done = 0
    async def one():
        nonlocal done
        try:
            await ch.default_exchange.publish(
                aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), "pubbench")
            done += 1
        finally:
            sem.release()
    tasks = set()
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        await sem.acquire()
        t = asyncio.create_task(one()); tasks.add(t); t.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    print(f"{done / elapsed:,.0f} confirmed persistent publishes/s ({done} in {elapsed:.1f}s)")
    await q.delete(if_unused=False, if_empty=False)
    await conn.close()

asyncio.run(main(sys.argv[1]))
