"""Scenario: a loop process forks without exec; the child runs an event loop of its own.

With ``--start forkserver`` the child is a multiprocessing ``forkserver`` process instead:
a grandchild, forked by the fork server (itself exec'd by the parent), which runs its
loop in a fresh interpreter state and talks to the parent over a multiprocessing pipe.

After ``GO`` the scenario coroutine forks. The child, still inside the parent's coroutine
(and its parent's loop frames), starts a new loop with ``asyncio.run``, prints
``LOOP child <tid>`` and ``CHILD <pid>``, and waits for a word on a pipe from the parent.
Once blockprobe reported the child's loop, the test sends ``BLOCK``: the parent passes it
on, and both processes block in a coroutine for 50 ms (``DONE parent_handler``,
``DONE child_handler``). Then the test sends ``RELEASE``: the parent tells the child to
exit (0), reaps it and ends the protocol.
"""

import argparse
import asyncio
import multiprocessing
import os
import sys
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


async def child_main(next_word):
    """The child's loop: waits for each word from the parent (``await next_word()``,
    ``None`` at the end) without blocking."""
    loop = asyncio.get_running_loop()
    loop.create_task(bptest.ticker())
    await asyncio.sleep(bptest.TICK_S)
    bptest.say(f"LOOP child {threading.get_native_id()}")
    bptest.say(f"CHILD {os.getpid()}")
    if await next_word() != "BLOCK":
        bptest.fail("the child expected BLOCK from its parent")
    await child_handler()
    if await next_word() is not None:
        bptest.fail("the child expected the end of its pipe")


def pipe_words(pipe):
    """``next_word`` for a raw pipe, read from the loop."""
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
    return words.get


def forkserver_child(conn):
    """The forkserver child's entry point: its loop reads words from ``conn``."""

    async def next_word():
        try:
            return await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        except EOFError:
            return None

    try:
        asyncio.run(child_main(next_word))
    except Exception as e:
        bptest.fail(f"child: {e!r}")


async def forked_child(pipe):
    await child_main(pipe_words(pipe))


async def scenario_fork():
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(write_end)
        try:
            asyncio.run(forked_child(read_end))
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


async def scenario_forkserver():
    context = multiprocessing.get_context("forkserver")
    ours, theirs = context.Pipe()
    child = context.Process(target=forkserver_child, args=(theirs,))
    child.start()
    theirs.close()
    await bptest.expect("BLOCK")
    ours.send("BLOCK")
    await parent_handler()
    await bptest.expect("RELEASE")
    ours.close()
    while child.exitcode is None:
        await asyncio.sleep(bptest.TICK_S)
    if child.exitcode != 0:
        bptest.fail(f"the child exited with {child.exitcode}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--start", choices=("fork", "forkserver"), default="fork")
    start, rest = parser.parse_known_args()
    sys.argv[1:] = rest
    bptest.run(scenario_forkserver if start.start == "forkserver" else scenario_fork)
