"""Scenario: a loop that blocks in `handler` twice, waits for the file named by its first
argument to appear, then blocks three more times and exits 0. It writes nothing to
stdout: under `blockprobe run` it shares blockprobe's, which the test closes."""

import asyncio
import os
import sys
import time


async def handler():
    time.sleep(0.05)  # BLOCK handler


async def main(go):
    for _ in range(2):
        await handler()
        await asyncio.sleep(0.02)
    while not os.path.exists(go):
        await asyncio.sleep(0.01)
    for _ in range(3):
        await handler()
        await asyncio.sleep(0.02)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
