"""Scenario: the loop hangs — `handler` sleeps 30 s, a stand-in for a deadlock or a call
that never returns (with ``--spin``: `spin_forever` runs pure Python for ever instead).
A helper thread prints ``STUCK`` once the loop has been stuck for 300 ms, so that the
test can stop the tracer while the stall still goes on."""

import sys
import threading
import time

import bptest

STUCK_AFTER_S = 0.3
SPIN = "--spin" in sys.argv
if SPIN:
    sys.argv.remove("--spin")


def announce():
    time.sleep(STUCK_AFTER_S)
    bptest.say("STUCK")


def spin_forever():
    n = 0
    # One line: every sample of the loop is on it.
    while n >= 0: n += 1  # noqa: E701  # BLOCK spin_forever


async def handler():
    threading.Thread(target=announce, name="announce", daemon=True).start()
    if SPIN:
        spin_forever()
    time.sleep(30)  # BLOCK handler


async def scenario():
    await handler()


if __name__ == "__main__":
    bptest.run(scenario)
