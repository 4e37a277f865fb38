"""Scenario: time.sleep() called directly in a coroutine blocks the loop for 200 ms."""

import time

import bptest


async def handler():
    started = time.monotonic_ns()
    time.sleep(0.2)  # BLOCK handler
    bptest.done("handler", time.monotonic_ns() - started)


async def scenario():
    await handler()  # CALL scenario


if __name__ == "__main__":
    bptest.run(scenario)
