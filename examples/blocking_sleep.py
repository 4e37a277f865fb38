"""A small asyncio service with the classic mistake: a synchronous helper that sleeps.

``handle_request()`` calls ``load_user_profile()``, which stands in for a synchronous
client library and calls ``time.sleep(0.2)``: the whole event loop stops for 200 ms each
time, and the heartbeat task, which should tick every 50 ms, is late by as much.
``handle_request_async()`` waits just as long with ``await asyncio.sleep(0.2)``, which
blocks nothing.

Try it:

    cargo xtask run -- run -- python3 examples/blocking_sleep.py

It runs for about 2 seconds and exits 0. Standard library only.
"""

import asyncio
import time

HEARTBEAT_S = 0.05


async def heartbeat(stats):
    """Ticks every 50 ms and notes how late each tick is."""
    expected = time.monotonic() + HEARTBEAT_S
    while True:
        await asyncio.sleep(HEARTBEAT_S)
        now = time.monotonic()
        stats["beats"] += 1
        stats["worst_late_s"] = max(stats["worst_late_s"], now - expected)
        expected = now + HEARTBEAT_S


def load_user_profile(user_id):
    """Pretends to be a synchronous database client."""
    time.sleep(0.2)  # blocks the event loop: what blockprobe points at
    return {"id": user_id, "name": f"user{user_id}"}


async def handle_request(user_id):
    profile = load_user_profile(user_id)
    return f"hello {profile['name']}"


async def handle_request_async(user_id):
    await asyncio.sleep(0.2)  # the same wait, done right
    return f"hello user{user_id}"


async def main():
    stats = {"beats": 0, "worst_late_s": 0.0}
    beat = asyncio.create_task(heartbeat(stats))
    # Serve nothing for a moment: the loop runs normally.
    await asyncio.sleep(0.3)
    for user_id in range(3):
        print(await handle_request(user_id), flush=True)
        await asyncio.sleep(0.2)
    replies = await asyncio.gather(*(handle_request_async(u) for u in range(3, 6)))
    for reply in replies:
        print(reply, flush=True)
    await asyncio.sleep(0.2)
    beat.cancel()
    print(
        f"heartbeat: {stats['beats']} beats, the worst "
        f"{stats['worst_late_s'] * 1000:.0f} ms late",
        flush=True,
    )


if __name__ == "__main__":
    asyncio.run(main())
