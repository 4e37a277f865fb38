"""Scenario for the fleet tests: ``fleet_handler()`` blocks the loop ``--times`` times for
``--block-ms`` each (each in its own loop iteration), then ``steady()`` blocks once for
15 ms. Two runs with different ``--block-ms`` make a "before" and an "after" report in
which only ``fleet_handler`` changed.
"""

import argparse
import asyncio
import sys
import time

import bptest

parser = argparse.ArgumentParser()
parser.add_argument("--block-ms", type=float, default=20.0)
parser.add_argument("--times", type=int, default=3)
ARGS, REST = parser.parse_known_args()
# bptest.run parses the rest (--exit-code).
sys.argv = [sys.argv[0]] + REST


def fleet_handler():
    started = time.monotonic_ns()
    time.sleep(ARGS.block_ms / 1000)  # BLOCK fleet_handler
    return time.monotonic_ns() - started


async def steady():
    started = time.monotonic_ns()
    time.sleep(0.015)  # BLOCK steady
    bptest.done("steady", time.monotonic_ns() - started)


async def scenario():
    for _ in range(ARGS.times):
        bptest.done("fleet_handler", fleet_handler())
        # Back to the loop: each block is a stall of its own.
        await asyncio.sleep(0.02)
    await steady()


if __name__ == "__main__":
    bptest.run(scenario)
