"""Scenario: the loop blocks 200 ms inside ``f(secret=...)``, while an argument and local
variables of the blocked frames hold secrets: ``$BPTEST_SECRET`` (never printed, never in
the command line) and strings made from it at run time.
"""

import os
import time

import bptest

SECRET = os.environ["BPTEST_SECRET"]


def f(secret):
    token = "Bearer " + secret
    started = time.monotonic_ns()
    time.sleep(0.2)  # BLOCK f
    bptest.done("f", time.monotonic_ns() - started)
    return len(token)


async def scenario():
    password = SECRET[::-1][::-1]
    f(secret=password)


if __name__ == "__main__":
    bptest.run(scenario)
