"""asyncio task-switch microbenchmark: N ping-pongs between two tasks over asyncio.Queue.

Prints the elapsed seconds of the measured part on stdout."""
import asyncio
import sys
import time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000


async def main():
    ping, pong = asyncio.Queue(), asyncio.Queue()

    async def responder():
        for _ in range(N):
            pong.put_nowait(await ping.get())

    task = asyncio.create_task(responder())
    t0 = time.perf_counter()
    for i in range(N):
        ping.put_nowait(i)
        await pong.get()
    elapsed = time.perf_counter() - t0
    await task
    print(f"{elapsed:.4f}")


asyncio.run(main())
