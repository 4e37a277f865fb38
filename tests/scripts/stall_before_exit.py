"""Scenario: the last callback before the process exits blocks 200 ms, then the process
calls ``os._exit(0)`` 20 ms after its loop is back: the stall ends just before the exit.
Nothing waits for the tracer. (blockprobe names a stall's frames from the live process:
a process gone within microseconds of the stall's end leaves them ``<unreadable>``,
counted as lost.)
"""

import asyncio
import os
import threading
import time

import bptest


async def last_callback():
    started = time.monotonic_ns()
    time.sleep(0.2)  # BLOCK last_callback
    bptest.done("last_callback", time.monotonic_ns() - started)


async def main():
    bptest.say(f"LOOP main {threading.get_native_id()}")
    bptest.say(f"READY {os.getpid()}")
    await asyncio.sleep(0.05)
    await last_callback()
    bptest.say("FINISHED")
    await asyncio.sleep(0.02)
    os._exit(0)


if __name__ == "__main__":
    asyncio.run(main())
