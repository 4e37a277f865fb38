"""Scenario: a loop process forks without exec; the child runs an event loop of its own.

After ``GO`` the scenario coroutine forks. The child, still inside the parent's coroutine
(and its parent's loop frames), starts a new loop with ``asyncio.run``, prints
``LOOP child <tid>`` and ``CHILD <pid>``, and waits for a word on a pipe from the parent.
Once blockprobe reported the child's loop, the test sends ``BLOCK``: the parent passes it
on, and both processes block in a coroutine for 50 ms (``DONE parent_handler``,
``DONE child_handler``). Then the test sends ``RELEASE``: the parent tells the child to
exit (0), reaps it and ends the protocol.
"""

import asyncio
import os
import threading
import time

import bptest


async def parent_handler():
    started = time.monotonic_ns()
    time.sleep(0.05)  # BLOCK parent_handler
    bptest.done("parent_handler", time.monotonic_ns() - started)


async def child_handler():
    started = time.monotonic_ns()
    time.sleep(0.05)  # BLOCK child_handler
    bptest.done("child_handler", time.monotonic_ns() - started)


async def child_main(pipe):
    """The child's loop: waits for each word from the parent without blocking."""
    loop = asyncio.get_running_loop()
    words = asyncio.Queue()
    buf = b""

    def readable():
        nonlocal buf
        data = os.read(pipe, 4096)
        if not data:
            loop.remove_reader(pipe)
            words.put_nowait(None)
            return
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            words.put_nowait(line.decode())

    loop.add_reader(pipe, readable)
    loop.create_task(bptest.ticker())
    await asyncio.sleep(bptest.TICK_S)
    bptest.say(f"LOOP child {threading.get_native_id()}")
    bptest.say(f"CHILD {os.getpid()}")
    if await words.get() != "BLOCK":
        bptest.fail("the child expected BLOCK from its parent")
    await child_handler()
    if await words.get() is not None:
        bptest.fail("the child expected the end of its pipe")


async def scenario():
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(write_end)
        try:
            asyncio.run(child_main(read_end))
        except Exception as e:
            bptest.fail(f"child: {e!r}")
        os._exit(0)
    os.close(read_end)
    await bptest.expect("BLOCK")
    os.write(write_end, b"BLOCK\n")
    await parent_handler()
    await bptest.expect("RELEASE")
    os.close(write_end)
    while True:
        reaped, status = os.waitpid(pid, os.WNOHANG)
        if reaped:
            break
        await asyncio.sleep(bptest.TICK_S)
    if os.waitstatus_to_exitcode(status) != 0:
        bptest.fail(f"the child exited with {os.waitstatus_to_exitcode(status)}")


if __name__ == "__main__":
    bptest.run(scenario)
