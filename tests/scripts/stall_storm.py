"""Scenario: a storm of 40 stalls of 12 ms, back to back, each with its blocking call."""

import asyncio
import time

import bptest

STALLS = 40


async def scenario():
    started = time.monotonic_ns()
    for _ in range(STALLS):
        time.sleep(0.012)  # BLOCK storm
        await asyncio.sleep(0)
    bptest.done("storm", time.monotonic_ns() - started)


if __name__ == "__main__":
    bptest.run(scenario)
