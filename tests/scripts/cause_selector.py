"""Scenario: a coroutine waits in a sync selector of its own (epoll, like the loop's
poller) for a pipe a thread writes to 150 ms later."""

import os
import selectors
import time

import bptest

DELAY_S = 0.15

READ_FD, WRITE_FD = os.pipe()
GO = bptest.write_later(WRITE_FD, DELAY_S)


async def wait_for_device():
    with selectors.DefaultSelector() as selector:
        selector.register(READ_FD, selectors.EVENT_READ)
        started = time.monotonic_ns()
        GO.set()
        ready = selector.select(timeout=5)  # BLOCK wait_for_device
        elapsed = time.monotonic_ns() - started
    if not ready:
        bptest.fail("the pipe never became readable")
    bptest.done("wait_for_device", elapsed)


async def scenario():
    await wait_for_device()


if __name__ == "__main__":
    bptest.run(scenario)
