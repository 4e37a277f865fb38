"""Scenario: a flood of stalls for two seconds, back to back: each a 110 us busy wait in
a coroutine, then one trip through the loop. Prints ``DONE flood <count>`` (the number
of stalls made, not nanoseconds) and ``DONE flood_ns <elapsed ns>``."""

import asyncio
import time

import bptest

SECONDS = 2.0
STALL_S = 0.00011


def flood_stall():
    end = time.perf_counter() + STALL_S
    while time.perf_counter() < end:
        pass


async def scenario():
    started = time.monotonic_ns()
    deadline = time.perf_counter() + SECONDS
    made = 0
    while time.perf_counter() < deadline:
        flood_stall()  # BLOCK flood_stall
        made += 1
        await asyncio.sleep(0)
    bptest.done("flood", made)
    bptest.done("flood_ns", time.monotonic_ns() - started)


if __name__ == "__main__":
    bptest.run(scenario)
