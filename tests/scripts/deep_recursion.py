"""Scenario: a coroutine recurses 1,100 plain Python frames deep, and the innermost call
blocks the loop 200 ms (or ``$DEEP_SLEEP_S`` seconds) in ``time.sleep``: a stack far deeper
than blockprobe walks."""

import os
import sys
import time

import bptest

DEPTH = 1100
SLEEP_S = float(os.environ.get("DEEP_SLEEP_S", "0.2"))
sys.setrecursionlimit(DEPTH + 1000)


def recurse(depth):
    if depth == 0:
        time.sleep(SLEEP_S)  # BLOCK recurse
        return
    recurse(depth - 1)  # CALL recurse


async def scenario():
    # The whole stretch blocks the loop: going 1,100 calls deep and back up is on-CPU
    # time of the stall too (tens of ms on some interpreters).
    started = time.monotonic_ns()
    recurse(DEPTH)
    bptest.done("recurse", time.monotonic_ns() - started)


if __name__ == "__main__":
    bptest.run(scenario)
