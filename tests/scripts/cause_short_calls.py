"""Scenario: N+1 queries: a coroutine makes 40 blocking calls of 0.5 ms each, every one
below blockprobe's evidence minimum (a tenth of the 10 ms threshold), 20 ms or more in
all: together they are the stall's cause."""

import time

import bptest

CALLS = 40
EACH_S = 0.0005


def fetch_row():
    time.sleep(EACH_S)  # BLOCK fetch_row


async def load_page():
    started = time.monotonic_ns()
    for _ in range(CALLS):
        fetch_row()
    bptest.done("load_page", time.monotonic_ns() - started)


async def scenario():
    await load_page()


if __name__ == "__main__":
    bptest.run(scenario)
