"""A stall generator: an asyncio loop that stalls RATE times a second for SECONDS, each
stall a 0.6 ms busy wait in a coroutine (over a 500 us threshold), to load the tracer.

Prints the elapsed seconds on stdout."""
import asyncio
import sys
import time

SECONDS = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
RATE = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
STALL_S = 0.0006


def busy(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


async def stall():
    busy(STALL_S)


async def main():
    t0 = time.perf_counter()
    made = 0
    while (elapsed := time.perf_counter() - t0) < SECONDS:
        due = int(elapsed * RATE)
        while made < due:
            await asyncio.create_task(stall())
            made += 1
        await asyncio.sleep(0)
    print(f"{time.perf_counter() - t0:.4f}")


asyncio.run(main())
