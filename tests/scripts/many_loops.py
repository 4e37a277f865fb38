"""Scenario: 64 threads, each running its own loop, all blocking 20 ms at once.

Every worker loop must get exactly one stall, on its own thread id, with its own stack.
"""

import asyncio
import time

import bptest

WORKERS = [bptest.LoopThread(f"w{i}") for i in range(64)]


async def blocking_handler():
    time.sleep(0.02)  # BLOCK blocking_handler


async def scenario():
    started = time.monotonic_ns()
    await asyncio.gather(*(worker.run(blocking_handler()) for worker in WORKERS))
    bptest.done("all", time.monotonic_ns() - started)


if __name__ == "__main__":
    bptest.run(scenario, loops=WORKERS)
