"""Scenario: a coroutine recurses 1,100 plain Python frames deep, and the innermost call
blocks the loop 200 ms in ``time.sleep``: a stack far deeper than blockprobe walks."""

import sys
import time

import bptest

DEPTH = 1100
sys.setrecursionlimit(DEPTH + 1000)


def recurse(depth):
    if depth == 0:
        time.sleep(0.2)  # BLOCK recurse
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
