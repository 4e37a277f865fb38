"""Scenario: a thread and an event loop per call, as asgiref's ``async_to_sync`` does.

Each of 20 calls starts a thread that runs ``asyncio.run`` of
``handler``, which polls a few times (its loop is then known), blocks 30 ms in
``time.sleep`` and returns; the thread then exits. The main loop waits for each call in
an executor, never blocking. Prints ``CALL <native thread id>`` per call, then
``DONE calls <n>``.
"""

import asyncio
import threading
import time

import bptest

CALLS = 20


async def handler():
    for _ in range(4):
        await asyncio.sleep(bptest.TICK_S)
    time.sleep(0.03)  # BLOCK handler


def call():
    """One call: a thread of its own, with a loop of its own."""
    tid = []

    def main():
        tid.append(threading.get_native_id())
        asyncio.run(handler())

    thread = threading.Thread(target=main, name="call")
    thread.start()
    thread.join()
    return tid[0]


async def scenario():
    loop = asyncio.get_running_loop()
    for _ in range(CALLS):
        tid = await loop.run_in_executor(None, call)
        bptest.say(f"CALL {tid}")
    bptest.done("calls", CALLS)


if __name__ == "__main__":
    bptest.run(scenario)
