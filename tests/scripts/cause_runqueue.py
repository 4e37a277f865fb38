"""Scenario: a CPU-bound coroutine while another process saturates the same CPU.

At start-up the script pins itself (every later thread inherits it) to one CPU, the
last it may use, and starts a busy-loop ``sh`` pinned to the same CPU (killed with this
process), stopped at once: it runs only while the coroutine works (continued at its
start, stopped at its end), so no other iteration of the loop waits for it. The
coroutine runs a fixed amount of pure-Python work, sized to take about 100 ms on an
idle CPU: with two runnable tasks on one CPU the scheduler gives each about half, so
the stall is about twice as long and about half of it is run-queue wait. It says its
wall time (``DONE compute_report``) and the thread's CPU time in it
(``DONE compute_report_cpu``).
"""

import asyncio
import ctypes
import os
import signal
import subprocess
import time

import bptest

CPU = max(os.sched_getaffinity(0))
os.sched_setaffinity(0, {CPU})


def busy_work(rounds):
    total = 0
    for i in range(rounds): total += i * i  # BLOCK busy_work
    return total


def size_work():
    """Rounds of busy_work that take about 100 ms on this CPU, measured before the hog."""
    rounds = 200_000
    started = time.monotonic()
    busy_work(rounds)
    elapsed = time.monotonic() - started
    return max(rounds, int(rounds * 0.1 / elapsed))


ROUNDS = size_work()


def die_with_parent():
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


HOG = subprocess.Popen(
    ["sh", "-c", "while :; do :; done"], preexec_fn=die_with_parent
)
os.kill(HOG.pid, signal.SIGSTOP)
os.sched_setaffinity(HOG.pid, {CPU})
bptest.say(f"HOG busy {HOG.pid} cpu {CPU}")


async def compute_report():
    started, cpu_started = time.monotonic_ns(), time.thread_time_ns()
    os.kill(HOG.pid, signal.SIGCONT)
    busy_work(ROUNDS)  # CALL compute_report
    os.kill(HOG.pid, signal.SIGSTOP)
    ended, cpu_ended = time.monotonic_ns(), time.thread_time_ns()
    bptest.done("compute_report", ended - started)
    bptest.done("compute_report_cpu", cpu_ended - cpu_started)


async def scenario():
    try:
        await compute_report()
        await asyncio.sleep(0)  # the clean-up is no part of the stall
    finally:
        HOG.kill()
        HOG.wait()


if __name__ == "__main__":
    bptest.run(scenario)
