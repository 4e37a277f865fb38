"""Replaces itself with another program in the middle of a loop iteration.

``exec_into.py -- PROGRAM ARGS…``: the usual protocol (bptest.py) up to ``GO``; then the
scenario coroutine calls ``os.execv(PROGRAM, [PROGRAM, ARGS…])`` with the loop off-await.
The process keeps its pid, stdin and stdout; the new program may be anything (another
scenario script, ``/bin/sleep``).
"""

import os
import sys

import bptest

split = sys.argv.index("--")
TARGET = sys.argv[split + 1 :]
del sys.argv[split:]
if not TARGET:
    bptest.fail("usage: exec_into.py [--exit-code N] -- PROGRAM ARGS…")


async def scenario():
    os.execv(TARGET[0], TARGET)


bptest.run(scenario)
