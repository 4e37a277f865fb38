"""Scenario: an idle loop (no timer, parked in its poller) whose next iteration, woken by
the line ``BLOCK`` on stdin, blocks 200 ms: for ``trace -p`` attached while it is parked.
Prints ``LOOP``/``READY`` at once, ``DONE`` and ``FINISHED`` after the block, and exits
at ``QUIT`` or the end of stdin.
"""

import asyncio
import os
import sys
import threading
import time

import bptest


def on_stdin(loop, done):
    line = sys.stdin.readline()
    if line.strip() == "BLOCK":
        started = time.monotonic_ns()
        time.sleep(0.2)  # BLOCK on_stdin
        bptest.done("on_stdin", time.monotonic_ns() - started)
        bptest.say("FINISHED")
    elif line.strip() in ("QUIT", ""):
        loop.remove_reader(sys.stdin.fileno())
        done.set_result(None)


async def main():
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    loop.add_reader(sys.stdin.fileno(), on_stdin, loop, done)
    bptest.say(f"LOOP main {threading.get_native_id()}")
    bptest.say(f"READY {os.getpid()}")
    await done


if __name__ == "__main__":
    asyncio.run(main())
