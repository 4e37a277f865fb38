"""Controls: waits that do NOT block the loop, then one deliberate marker stall.

1. ``await asyncio.sleep(0.2)``;
2. ``await loop.run_in_executor(None, time.sleep, 0.2)``;
3. ``await asyncio.to_thread(requests.get, url)`` against a slow HTTP server (a thread of
   this script, answering after 200 ms); ``requests`` comes from PYTHONPATH.

Then ``marker()`` blocks for 50 ms with ``time.sleep``: the only stall blockprobe should
report, which also proves tracing was live during the controls.

All along, a worker thread runs sync ``selectors`` code: a ``DefaultSelector`` (epoll)
polled in a loop with 5 ms waits, as sync client code does. It polls, but it is no event
loop: it prints ``WORKER selector <native thread id>`` when it starts, and the scenario
ends with ``DONE selector_polls <polls during the scenario>``.
"""

import asyncio
import os
import selectors
import threading
import time

import requests

import bptest

SLOW_S = 0.2


selector_polls = 0


def selector_worker():
    """Polls a pipe that never becomes readable, every 5 ms, with sync selectors."""
    global selector_polls
    bptest.say(f"WORKER selector {threading.get_native_id()}")
    never, _keep = os.pipe()
    with selectors.DefaultSelector() as selector:
        selector.register(never, selectors.EVENT_READ)
        while True:
            selector.select(0.005)
            selector_polls += 1


threading.Thread(target=selector_worker, name="selector", daemon=True).start()
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
    polls_before = selector_polls

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
    bptest.done("selector_polls", selector_polls - polls_before)


if __name__ == "__main__":
    bptest.run(scenario, setup=warm_up)
