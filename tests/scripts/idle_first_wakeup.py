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


class Stdin:
    """Lines from fd 0, read unbuffered (a buffered read could swallow the next line
    before the loop's reader is armed)."""

    def __init__(self):
        self.buf = b""

    def line(self):
        """The next line; blocks the thread (and so the loop) until it comes."""
        while b"\n" not in self.buf:
            data = os.read(0, 4096)
            if not data:
                return ""
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()

    async def next_line(self):
        """The next line, waiting in the loop's poller."""
        if b"\n" not in self.buf:
            loop = asyncio.get_running_loop()
            ready = loop.create_future()
            loop.add_reader(0, lambda: ready.done() or ready.set_result(None))
            try:
                await ready
            finally:
                loop.remove_reader(0)
        return self.line()


async def main():
    stdin = Stdin()
    say(f"LOOP main {threading.get_native_id()}")
    say(f"READY {os.getpid()}")
    if stdin.line() != "ATTACHED":
        sys.exit("idle_first_wakeup: expected ATTACHED")
    if await stdin.next_line() != "GO":
        sys.exit("idle_first_wakeup: expected GO")
    await handler()
    say("FINISHED")
    while await stdin.next_line() not in ("", "QUIT"):
        pass


asyncio.run(main())
