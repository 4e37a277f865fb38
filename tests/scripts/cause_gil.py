"""Scenario: another thread holds the GIL in one long C call while the loop needs it.

The hog thread runs a catastrophically backtracking ``re.match`` (one C call that never
releases the GIL), sized at start-up to take 150..400 ms, and prints
``HOG crunch <native id>``. The coroutine wakes the hog, then sleeps 20 ms (releasing
the GIL, so the hog starts its match), and must wait for the GIL until the match ends.
"""

import re
import threading
import time

import bptest

PATTERN = re.compile(r"(a+)+$")
GO = threading.Event()


def size_the_match():
    """The smallest subject length whose match takes at least 150 ms."""
    n = 16
    while True:
        started = time.monotonic()
        PATTERN.match("a" * n + "b")
        if time.monotonic() - started >= 0.15:
            return n
        n += 1


N = size_the_match()


def crunch():
    return PATTERN.match("a" * N + "b")  # HOG crunch


def hog():
    bptest.say(f"HOG crunch {threading.get_native_id()}")
    GO.wait()
    crunch()


threading.Thread(target=hog, name="hog", daemon=True).start()


async def handle_ping():
    GO.set()
    started = time.monotonic_ns()
    time.sleep(0.02)  # BLOCK handle_ping
    bptest.done("handle_ping", time.monotonic_ns() - started)


async def scenario():
    await handle_ping()


if __name__ == "__main__":
    bptest.run(scenario)
