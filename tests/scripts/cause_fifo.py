"""Scenario: a coroutine opens a FIFO for reading, which blocks in open() until a writer
(a thread) opens it 150 ms later."""

import os
import tempfile
import threading
import time

import bptest

DELAY_S = 0.15

FIFO = os.path.join(tempfile.mkdtemp(prefix="bptest-fifo-"), "fifo")
os.mkfifo(FIFO)
GO = threading.Event()


def writer():
    GO.wait()
    time.sleep(DELAY_S)
    with open(FIFO, "wb") as fifo:
        fifo.write(b"x")


threading.Thread(target=writer, name="writer", daemon=True).start()


async def open_feed():
    started = time.monotonic_ns()
    GO.set()
    fd = os.open(FIFO, os.O_RDONLY)  # BLOCK open_feed
    elapsed = time.monotonic_ns() - started
    os.close(fd)
    bptest.done("open_feed", elapsed)


async def scenario():
    await open_feed()


if __name__ == "__main__":
    try:
        bptest.run(scenario)
    finally:
        os.unlink(FIFO)
        os.rmdir(os.path.dirname(FIFO))
