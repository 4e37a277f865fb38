"""Scenario: the process exits while its loop is blocked.

The coroutine starts a thread that calls ``os._exit(0)`` 100 ms later, then blocks in
``time.sleep(10)``: the process is gone in the middle of the stall, its loop never back
in its poller, no stall ever completed.
"""

import os
import threading
import time

import bptest


def exit_soon():
    time.sleep(0.1)
    os._exit(0)


async def handler():
    threading.Thread(target=exit_soon, name="exiter", daemon=True).start()
    time.sleep(10)  # BLOCK handler
    bptest.fail("still alive 10 s after os._exit")


async def scenario():
    await handler()


if __name__ == "__main__":
    bptest.run(scenario)
