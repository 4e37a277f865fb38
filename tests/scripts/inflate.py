"""Scenario: one stall built to inflate a tracer's memory: inside it, 300 blocking
sleeps of 1.1 ms, each made 126 frames deep in functions whose names are 4,000
characters long (every call's stack is about 1 MB of names). The deepest function is
``sleeper``; the chain is entered from ``handler``."""

import time

import bptest

DEPTH = 125
CALLS = 300


def sleeper():
    for _ in range(CALLS):
        time.sleep(0.0011)  # BLOCK sleeper


def make_chain():
    """``DEPTH`` functions with 4,000-character names, each calling the next."""
    call = sleeper
    for i in range(DEPTH):
        name = f"f{i:03d}_" + "x" * 3995
        scope = {"inner": call}
        exec(f"def {name}():\n    inner()\n", scope)
        call = scope[name]
    return call


CHAIN = make_chain()


async def handler():
    started = time.monotonic_ns()
    CHAIN()  # CALL handler
    bptest.done("handler", time.monotonic_ns() - started)


async def scenario():
    await handler()


if __name__ == "__main__":
    bptest.run(scenario)
