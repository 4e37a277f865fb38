"""Scenario: a coroutine takes a threading.Lock that another thread holds for 150 ms."""

import threading
import time

import bptest

HOLD_S = 0.15

LOCK = threading.Lock()
GO = threading.Event()


def holder():
    with LOCK:
        HELD.set()
        GO.wait()
        time.sleep(HOLD_S)


HELD = threading.Event()
threading.Thread(target=holder, name="holder", daemon=True).start()
if not HELD.wait(10):
    bptest.fail("the holder thread did not take the lock")


async def update_cache():
    started = time.monotonic_ns()
    GO.set()
    LOCK.acquire()  # BLOCK update_cache
    elapsed = time.monotonic_ns() - started
    LOCK.release()
    bptest.done("update_cache", elapsed)


async def scenario():
    await update_cache()


if __name__ == "__main__":
    bptest.run(scenario)
