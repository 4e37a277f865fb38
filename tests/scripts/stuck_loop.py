"""Scenario: the loop hangs — `handler` sleeps 30 s, a stand-in for a deadlock or a call
that never returns. A helper thread prints ``STUCK`` once the loop has been stuck for
300 ms, so that the test can stop the tracer while the stall still goes on."""

import threading
import time

import bptest

STUCK_AFTER_S = 0.3


def announce():
    time.sleep(STUCK_AFTER_S)
    bptest.say("STUCK")


async def handler():
    threading.Thread(target=announce, name="announce", daemon=True).start()
    time.sleep(30)  # BLOCK handler


async def scenario():
    await handler()


if __name__ == "__main__":
    bptest.run(scenario)
