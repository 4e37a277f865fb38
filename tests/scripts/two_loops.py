"""Scenario: two threads, each running its own loop; only the "worker" loop blocks (150 ms).

The main thread's loop keeps ticking meanwhile: a stall must be attributed to the worker
thread only.
"""

import time

import bptest

WORKER = bptest.LoopThread("worker")


async def blocking_handler():
    started = time.monotonic_ns()
    time.sleep(0.15)  # BLOCK blocking_handler
    bptest.done("blocking_handler", time.monotonic_ns() - started)


async def scenario():
    await WORKER.run(blocking_handler())


if __name__ == "__main__":
    bptest.run(scenario, loops=[WORKER])
