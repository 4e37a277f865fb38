"""Scenario: a coroutine recurses 1,100 plain Python frames deep, and the innermost call
blocks the loop 200 ms in ``time.sleep``: a stack far deeper than blockprobe walks."""

import sys
import time

import bptest

DEPTH = 1100
sys.setrecursionlimit(DEPTH + 1000)


def recurse(depth):
    if depth == 0:
        started = time.monotonic_ns()
        time.sleep(0.2)  # BLOCK recurse
        bptest.done("recurse", time.monotonic_ns() - started)
        return
    recurse(depth - 1)  # CALL recurse


async def scenario():
    recurse(DEPTH)


if __name__ == "__main__":
    bptest.run(scenario)
