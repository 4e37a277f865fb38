"""Scenario: a coroutine reads a pipe whose writer (a thread) writes 150 ms later."""

import os
import time

import bptest

DELAY_S = 0.15

READ_FD, WRITE_FD = os.pipe()
GO = bptest.write_later(WRITE_FD, DELAY_S)


async def read_message():
    started = time.monotonic_ns()
    GO.set()
    data = os.read(READ_FD, 1)  # BLOCK read_message
    elapsed = time.monotonic_ns() - started
    if data != b"x":
        bptest.fail(f"unexpected data {data!r}")
    bptest.done("read_message", elapsed)


async def scenario():
    await read_message()


if __name__ == "__main__":
    bptest.run(scenario)
