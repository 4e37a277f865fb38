"""Scenario: ``asyncio.run(main())`` where ``main`` blocks for 0.11, 0.22 and 0.33 s, with
``await asyncio.sleep(0.1)`` between: three stalls, the first in the loop's first
iteration (see ``bptest.run_first``).
"""

import asyncio
import time

import bptest


async def main():
    for step, seconds in enumerate((0.11, 0.22, 0.33), start=1):
        started = time.monotonic_ns()
        time.sleep(seconds)  # BLOCK main
        bptest.done(f"step{step}", time.monotonic_ns() - started)
        await asyncio.sleep(0.1)


if __name__ == "__main__":
    bptest.run_first(main)
