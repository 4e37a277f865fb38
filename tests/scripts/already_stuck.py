"""Scenario: a loop stuck from its first iteration, long before any tracer looks —
`sleeper` sleeps 30 s (``lock``: `waiter` waits for a ``threading.Lock`` another thread
holds; ``spin``: `spinner` runs pure Python for ever). Prints ``STUCK <native thread
id>`` right before it blocks; no handshake with the tracer (it is started later)."""

import sys
import threading
import time

import bptest

MODE = sys.argv[1]


def hold(lock, held):
    with lock:
        held.set()
        time.sleep(3600)


def sleeper():
    time.sleep(30)  # BLOCK sleeper


def waiter(lock):
    lock.acquire()  # BLOCK waiter


def spinner():
    n = 0
    # One line: every sample of the loop is on it.
    while n >= 0: n += 1  # noqa: E701  # BLOCK spinner


async def main():
    lock = threading.Lock()
    if MODE == "lock":
        held = threading.Event()
        threading.Thread(target=hold, args=(lock, held), daemon=True).start()
        held.wait()
    bptest.say(f"STUCK {threading.get_native_id()}")
    if MODE == "sleep":
        sleeper()
    elif MODE == "lock":
        waiter(lock)
    else:
        spinner()


if __name__ == "__main__":
    bptest.run_main(main)
