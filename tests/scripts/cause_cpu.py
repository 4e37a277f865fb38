"""Scenario: CPU-bound coroutines: ``hashlib.pbkdf2_hmac`` (one C call) sized to about
200 ms, then a pure-Python loop spinning for 200 ms. Each stretch says its wall time
(``DONE name``) and the thread's CPU time in it (``DONE name_cpu``): on a busy host part
of the wall time is spent waiting for a CPU."""

import asyncio
import hashlib
import time

import bptest


def size_pbkdf2():
    """Iterations of PBKDF2-SHA256 that take about 200 ms here."""
    iterations = 20_000
    started = time.monotonic()
    hashlib.pbkdf2_hmac("sha256", b"secret", b"salt", iterations)
    elapsed = time.monotonic() - started
    return max(iterations, int(iterations * 0.2 / elapsed))


ITERATIONS = size_pbkdf2()


async def hash_password():
    started, cpu_started = time.monotonic_ns(), time.thread_time_ns()
    hashlib.pbkdf2_hmac("sha256", b"secret", b"salt", ITERATIONS)  # BLOCK hash_password
    ended, cpu_ended = time.monotonic_ns(), time.thread_time_ns()
    bptest.done("hash_password", ended - started)
    bptest.done("hash_password_cpu", cpu_ended - cpu_started)


def spin(ns):  # FIRST spin
    deadline = time.monotonic_ns() + ns
    count = 0
    while time.monotonic_ns() < deadline:
        count += 1
    return count  # LAST spin


async def crunch_numbers():
    started, cpu_started = time.monotonic_ns(), time.thread_time_ns()
    spin(200_000_000)  # CALL crunch_numbers
    ended, cpu_ended = time.monotonic_ns(), time.thread_time_ns()
    bptest.done("crunch_numbers", ended - started)
    bptest.done("crunch_numbers_cpu", cpu_ended - cpu_started)


async def scenario():
    await hash_password()
    await asyncio.sleep(0.05)  # two loop iterations, two stalls
    await crunch_numbers()


if __name__ == "__main__":
    bptest.run(scenario)
