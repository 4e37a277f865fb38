"""Scenario: a new loop per unit of work (``asyncio.run`` five times, as pytest-asyncio
gives each test its own loop), each unit blocking 100 ms at once: five stalls.

Nothing waits for the tracer. After the five runs it says ``LOOP``/``READY``/
``FINISHED`` and waits for ``QUIT`` on stdin (no loop runs then).
"""

import asyncio
import time

import bptest

UNITS = 5


async def unit(number):
    started = time.monotonic_ns()
    time.sleep(0.1)  # BLOCK unit
    bptest.done(f"unit{number}", time.monotonic_ns() - started)


if __name__ == "__main__":
    for number in range(UNITS):
        asyncio.run(unit(number))
    bptest.finish_without_loop()
