"""Scenario: a coroutine calls a 3-deep chain of sync helpers; the innermost sleeps 100 ms."""

import time

import bptest


def level3():
    started = time.monotonic_ns()
    time.sleep(0.1)  # BLOCK level3
    return time.monotonic_ns() - started


def level2():
    return level3()  # CALL level2


def level1():
    return level2()  # CALL level1


async def handle_order():
    elapsed = level1()  # CALL handle_order
    bptest.done("level3", elapsed)


async def scenario():
    await handle_order()


if __name__ == "__main__":
    bptest.run(scenario)
