"""Scenario: a coroutine fsyncs a file into which 64 MB were written.

The file lives in the directory given by $BPTEST_DISK_DIR (the test passes one under
the workspace's target/ on the real disk, not tmpfs, where fsync does not wait for a
device). The data is written before the loop starts: writing only copies into the page
cache (CPU time, and faster than the device), so the stall is the fsync alone, waiting
for the device to take the dirty pages.
"""

import atexit
import os
import time

import bptest

SIZE = 64 * 1024 * 1024
PATH = os.path.join(os.environ["BPTEST_DISK_DIR"], f"fsync-{os.getpid()}.bin")

FD = os.open(PATH, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
BLOCK = os.urandom(1024 * 1024)
for _ in range(SIZE // len(BLOCK)):
    os.write(FD, BLOCK)


async def save_snapshot():
    started = time.monotonic_ns()
    os.fsync(FD)  # BLOCK save_snapshot
    bptest.done("save_snapshot", time.monotonic_ns() - started)


def clean_up():
    # After the loop: unlinking 64 MB takes the file system a while (a stall of its own).
    os.close(FD)
    os.unlink(PATH)


atexit.register(clean_up)


async def scenario():
    await save_snapshot()


if __name__ == "__main__":
    bptest.run(scenario)
