"""Scenario: a loop stuck from its first iteration, long before any tracer looks —
`sleeper` sleeps 30 s (``lock``: `waiter` waits for a ``threading.Lock`` another thread
holds; ``spin``: `spinner` runs pure Python for ever, niced, next to a thread that
naps). Prints ``STUCK <native thread id>`` right before it blocks; no handshake with
the tracer (it is started later)."""

import os
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


def nap_forever():
    while True:
        time.sleep(0.1)


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
    if MODE == "spin":
        # Ten seconds of spinning before the tracer starts: yield the CPU to whatever
        # else runs on the host. A thread that wakes up now and then makes the spinner
        # hand over the GIL, as a server's other threads do: a process whose one thread
        # never releases it cannot be attached to on 3.15 (see README).
        os.nice(19)
        threading.Thread(target=nap_forever, daemon=True).start()
    bptest.say(f"STUCK {threading.get_native_id()}")
    if MODE == "sleep":
        sleeper()
    elif MODE == "lock":
        waiter(lock)
    else:
        spinner()


if __name__ == "__main__":
    bptest.run_main(main)
