"""Scenario: the main thread runs a first loop and closes it, works 300 ms with no loop
at all (which blocks no loop: not a stall), then runs the protocol's loop, in which
`handler` blocks 200 ms.

Before the protocol's READY, the first loop prints ``FIRST <native thread id>`` and runs
until the line ``NEXT`` on stdin: the test sends it once blockprobe found that loop.
"""

import asyncio
import threading
import time

import bptest

GAP_S = 0.3


async def first_loop():
    loop = asyncio.get_running_loop()
    commands = bptest.Commands(loop)
    tick = loop.create_task(bptest.ticker())
    await asyncio.sleep(bptest.TICK_S)
    bptest.say(f"FIRST {threading.get_native_id()}")
    command = await commands.next()
    if command != "NEXT":
        bptest.fail(f"expected NEXT on stdin, got {command!r}")
    loop.remove_reader(0)
    tick.cancel()


async def handler():
    started = time.monotonic_ns()
    time.sleep(0.2)  # BLOCK handler
    bptest.done("handler", time.monotonic_ns() - started)


async def scenario():
    await handler()  # CALL scenario


if __name__ == "__main__":
    asyncio.run(first_loop())
    time.sleep(GAP_S)
    bptest.run(scenario)
