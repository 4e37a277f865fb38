"""Scenario: a loop that blockprobe finds while it is parked in its poller, and whose very
next wake-up is the stall.

No ticker. The script prints ``READY <pid>`` and, inside a coroutine (so the loop makes
no poll call meanwhile), waits for ``ATTACHED`` on stdin: sent once blockprobe has
attached. Back in the loop its first poll call parks it (nothing scheduled) and lets
blockprobe classify it; then ``GO`` wakes it and the handler blocks 50 ms. Prints
``DONE handler <ns>`` and ``FINISHED``, exits at ``QUIT`` or the end of stdin.
"""

import asyncio
import os
import sys
import threading
import time


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def handler():
    started = time.monotonic_ns()
    time.sleep(0.05)  # BLOCK handler
    say(f"DONE handler {time.monotonic_ns() - started}")


def read_line():
    """The next line of fd 0, read a byte at a time: nothing after it is consumed, so a
    line the test sends next stays in the pipe and wakes the loop's poller."""
    line = b""
    while not line.endswith(b"\n"):
        byte = os.read(0, 1)
        if not byte:
            break
        line += byte
    return line.decode().strip()


async def next_line():
    """The next line of fd 0, waited for in the loop's poller."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    loop.add_reader(0, lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_reader(0)
    return read_line()


async def main():
    say(f"LOOP main {threading.get_native_id()}")
    say(f"READY {os.getpid()}")
    if read_line() != "ATTACHED":
        sys.exit("idle_first_wakeup: expected ATTACHED")
    if await next_line() != "GO":
        sys.exit("idle_first_wakeup: expected GO")
    await handler()
    say("FINISHED")
    while await next_line() not in ("", "QUIT"):
        pass


asyncio.run(main())
