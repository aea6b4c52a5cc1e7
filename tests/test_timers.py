"""mq.broker.timers without a broker: the deferred calls behind TTL expiry (B-TTL-2) and the
delayed exchange's releases (B-DELAY-2)."""
from __future__ import annotations

import asyncio
import gc
import time

from mq.broker.timers import Timers


def test_fired_and_cancelled_timers_leave_no_garbage_cycles() -> None:
    """B-TTL-2, B-DELAY-2: timers fire in order of their time, a cancelled one never fires,
    and neither leaves a reference cycle behind (a delayed exchange arms one a millisecond
    under load: cycles made the collector's full passes stall the loop every second)."""
    loop = asyncio.new_event_loop()
    timers = Timers()
    timers.attach(loop)
    fired: list[int] = []
    gc.collect()
    gc.disable()
    try:
        now = time.time()
        armed = [timers.call_at(now + (50 - i) / 1000, lambda i=i: fired.append(i))
                 for i in range(50)]
        for timer in armed[::5]:
            timer.cancel()
        del armed
        loop.run_until_complete(asyncio.sleep(0.1))
        assert fired == [i for i in reversed(range(50)) if i % 5]
        assert gc.collect() == 0
    finally:
        gc.enable()
        loop.close()
