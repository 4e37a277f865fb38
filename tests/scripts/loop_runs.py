"""Scenario: one loop run three times with ``run_until_complete``, with 0.3 s of sync work
between the runs (Celery tasks, Flask views, ``async_to_sync``): the sync work is no
stall, as no loop runs then. The second run blocks 150 ms inside: a stall. After the
last run, 2.2 s of sync work, long enough for a stuck notice if the stopped loop counted
as blocked. Then ``LOOP``/``READY``/``FINISHED``, and ``QUIT`` on stdin.

The loop is asyncio's, or uvloop's with ``BPTEST_UVLOOP`` set.
"""

import asyncio
import time

import bptest


async def work(run):
    await asyncio.sleep(0.05)
    if run == 1:
        started = time.monotonic_ns()
        time.sleep(0.15)  # BLOCK work
        bptest.done("work", time.monotonic_ns() - started)
    await asyncio.sleep(0.05)


if __name__ == "__main__":
    loop = bptest.uvloop.new_event_loop() if bptest.UVLOOP else asyncio.new_event_loop()
    for run in range(3):
        loop.run_until_complete(work(run))
        time.sleep(0.3)  # SYNC between runs
    time.sleep(2.2)  # SYNC after the last run
    bptest.finish_without_loop()
    loop.close()
