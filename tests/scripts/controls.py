"""Controls: waits that do NOT block the loop, then one deliberate marker stall.

1. ``await asyncio.sleep(0.2)``;
2. ``await loop.run_in_executor(None, time.sleep, 0.2)``;
3. ``await asyncio.to_thread(requests.get, url)`` against a slow HTTP server (a thread of
   this script, answering after 200 ms); ``requests`` comes from PYTHONPATH.

Then ``marker()`` blocks for 50 ms with ``time.sleep``: the only stall blockprobe should
report, which also proves tracing was live during the controls.
"""

import asyncio
import time

import requests

import bptest

SLOW_S = 0.2


BASE_URL = bptest.start_slow_http_server(SLOW_S)
# Warm up before the loop starts: requests' lazy imports and set-up must not run on the
# loop (they would be a real, if small, stall).
requests.get(BASE_URL + "/fast", timeout=10).raise_for_status()


async def warm_up():
    """Starts the default executor's worker thread before the test begins: the first
    run_in_executor() waits in Thread.start() until the new thread runs, which on a busy
    machine can itself stall the loop for more than 10 ms (a real stall, but not what
    these controls are about)."""
    await asyncio.get_running_loop().run_in_executor(None, lambda: None)


async def marker():
    started = time.monotonic_ns()
    time.sleep(0.05)  # BLOCK marker
    bptest.done("marker", time.monotonic_ns() - started)


async def scenario():
    loop = asyncio.get_running_loop()

    started = time.monotonic_ns()
    await asyncio.sleep(0.2)
    bptest.done("asyncio_sleep", time.monotonic_ns() - started)

    started = time.monotonic_ns()
    await loop.run_in_executor(None, time.sleep, 0.2)
    bptest.done("executor_sleep", time.monotonic_ns() - started)

    started = time.monotonic_ns()
    response = await asyncio.to_thread(requests.get, BASE_URL + "/slow", timeout=10)
    response.raise_for_status()
    bptest.done("to_thread_requests", time.monotonic_ns() - started)

    await marker()


if __name__ == "__main__":
    bptest.run(scenario, setup=warm_up)
