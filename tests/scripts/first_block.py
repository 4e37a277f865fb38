"""Scenario: the first thing the loop's first coroutine does is block for 200 ms.

``first_block.py MODE``: ``sleep`` (``time.sleep``), ``cpu`` (a pure-Python spin) or
``pipe`` (a blocking read of a pipe a thread writes to 200 ms later). Nothing waits for
the tracer: the block is in the loop's first iteration (see ``bptest.run_first``).
"""

import os
import sys
import time

import bptest

MODE = sys.argv[1]


async def handler():
    # Measured from the start: starting the pipe's writer thread is part of the block
    # (on a busy host, waiting for the thread to start takes milliseconds).
    started = time.monotonic_ns()
    if MODE == "pipe":
        read_end, write_end = os.pipe()
        bptest.write_later(write_end, 0.2).set()
    if MODE == "sleep":
        time.sleep(0.2)  # BLOCK sleep
    elif MODE == "cpu":
        while time.monotonic_ns() - started < 200_000_000:  # BLOCK cpu
            pass
    elif MODE == "pipe":
        os.read(read_end, 1)  # BLOCK pipe
    else:
        bptest.fail(f"unknown mode {MODE!r}")
    bptest.done("handler", time.monotonic_ns() - started)


async def scenario():
    await handler()  # CALL scenario


if __name__ == "__main__":
    bptest.run_first(scenario)
