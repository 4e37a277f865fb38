"""One process of fleet_spawner.py: its own asyncio loop, one 50 ms blocking sleep.

A lean version of the bptest protocol (two hundred of these start at once, so it imports
nothing but asyncio): prints ``LOOP main <tid>`` and ``READY <pid>`` once its loop runs,
ticks every 50 ms (blockprobe finds a loop at a poll call after it attached; two hundred
5 ms tickers would eat the machine) until ``GO`` (stdin), prints ``FINISHED``, exits at
the end of stdin.
"""

import asyncio
import os
import sys
import threading
import time


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def child_handler():
    time.sleep(0.05)  # BLOCK child_handler


async def ticker():
    while True:
        await asyncio.sleep(0.05)


async def main():
    loop = asyncio.get_running_loop()
    lines = asyncio.Queue()
    loop.add_reader(0, lambda: lines.put_nowait(sys.stdin.readline()))
    loop.create_task(ticker())
    await asyncio.sleep(0)
    say(f"LOOP main {threading.get_native_id()}")
    say(f"READY {os.getpid()}")
    if (await lines.get()).strip() != "GO":
        sys.exit("fleet_child: expected GO")
    await child_handler()
    say("FINISHED")
    while (await lines.get()) not in ("", "QUIT\n"):
        pass


asyncio.run(main())
