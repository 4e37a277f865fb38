"""Scenario: time.sleep(0.1) in a coroutine run as a task named "checkout-42"."""

import asyncio
import time

import bptest


async def checkout():
    started = time.monotonic_ns()
    time.sleep(0.1)  # BLOCK checkout
    bptest.done("checkout", time.monotonic_ns() - started)


async def scenario():
    await asyncio.create_task(checkout(), name="checkout-42")


if __name__ == "__main__":
    bptest.run(scenario)
