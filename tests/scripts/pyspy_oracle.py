"""Scenario: one long stall of each kind, for the tests to hold blockprobe's stacks against
``py-spy dump`` taken in the middle of each.

For each case the test sends the case's name; the coroutine ``stall`` prints
``INSIDE <case>`` right before it blocks for about ``STALL_S`` seconds, then
``BLOCKED <case> <start> <end>``, the blocking stretch in Unix ns. ``END`` ends the
scenario. Work sizes are measured at start-up so that each C call takes about
``STALL_S`` here (less on a busy machine, where the test tries a case again when its
dump did not fall inside the blocking stretch).

A ``hog`` thread holds the GIL in one long ``re`` search when told to (case ``gil``).
"""

import asyncio
import hashlib
import json
import re
import socket
import sqlite3
import threading
import time

import bptest

STALL_S = 1.5


def sized(work, exponent=1):
    """The size ``n`` for which ``work(n)`` takes about ``STALL_S`` seconds, from timing
    doubling sizes (``work``'s time grows as ``n ** exponent``)."""
    n = 1
    while True:
        started = time.perf_counter()
        work(n)
        took = time.perf_counter() - started
        if took >= 0.05:
            return max(1, int(n * (STALL_S / took) ** (1 / exponent)))
        n *= 2


# Searching "aaa…" for a+b tries every start: quadratic, in one C call holding the GIL.
PATTERN = re.compile(r"a+b")
SUBJECT = "a" * sized(lambda n: PATTERN.search("a" * n), exponent=2)
FLOATS = [1 / 3] * sized(lambda n: json.dumps([1 / 3] * n))
ITERATIONS = sized(lambda n: hashlib.pbkdf2_hmac("sha256", b"pw", b"salt", n))
DB = sqlite3.connect(":memory:", check_same_thread=False)
COUNT_TO = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?) SELECT count(*) FROM c"
ROWS = sized(lambda n: DB.execute(COUNT_TO, (n,)).fetchone())
LOCK = threading.Lock()
HOG_GO = threading.Event()


def later(action):
    """Runs ``action`` in a new thread ``STALL_S`` seconds from now."""

    def run():
        time.sleep(STALL_S)
        action()

    threading.Thread(target=run, name="later", daemon=True).start()


def spin():
    end = time.monotonic() + STALL_S
    while time.monotonic() < end:
        pass


def encode():
    return json.dumps(FLOATS)


def derive():
    return hashlib.pbkdf2_hmac("sha256", b"pw", b"salt", ITERATIONS)


def scan():
    return PATTERN.search(SUBJECT)


def query():
    return DB.execute(COUNT_TO, (ROWS,)).fetchone()


def nap_inner():
    time.sleep(STALL_S)


def nap_middle():
    nap_inner()


def nap():
    nap_middle()


def read_reply():
    ours, theirs = socket.socketpair()
    later(lambda: theirs.send(b"x"))
    return ours.recv(1)


def update():
    # A threading.Lock may be released by any thread: the other one frees it later.
    LOCK.acquire()
    later(LOCK.release)
    LOCK.acquire()
    LOCK.release()


def crunch():
    return PATTERN.search(SUBJECT)


def hog():
    while True:
        HOG_GO.wait()
        HOG_GO.clear()
        crunch()


def wait_for_gil():
    HOG_GO.set()
    # Sleeping releases the GIL: the hog takes it, and the loop waits to get it back.
    time.sleep(0.02)


CASES = {
    "cpu": spin,
    "json": encode,
    "pbkdf2": derive,
    "re": scan,
    "sqlite": query,
    "sleep": nap,
    "socket": read_reply,
    "lock": update,
    "gil": wait_for_gil,
}


async def stall(case):
    bptest.say(f"INSIDE {case}")
    started = time.time_ns()
    CASES[case]()
    bptest.say(f"BLOCKED {case} {started} {time.time_ns()}")


async def scenario():
    while True:
        case = await bptest.command()
        if case == "END":
            return
        if case not in CASES:
            bptest.fail(f"no case {case!r}")
        await stall(case)


threading.Thread(target=hog, name="hog", daemon=True).start()

if __name__ == "__main__":
    bptest.run(scenario)
