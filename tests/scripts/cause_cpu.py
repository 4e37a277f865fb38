"""Scenario: CPU-bound coroutines: ``hashlib.pbkdf2_hmac`` (one C call) sized to about
200 ms, then a pure-Python loop spinning for 200 ms."""

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
    started = time.monotonic_ns()
    hashlib.pbkdf2_hmac("sha256", b"secret", b"salt", ITERATIONS)  # BLOCK hash_password
    bptest.done("hash_password", time.monotonic_ns() - started)


def spin(ns):  # FIRST spin
    deadline = time.monotonic_ns() + ns
    count = 0
    while time.monotonic_ns() < deadline:
        count += 1
    return count  # LAST spin


async def crunch_numbers():
    started = time.monotonic_ns()
    spin(200_000_000)  # CALL crunch_numbers
    bptest.done("crunch_numbers", time.monotonic_ns() - started)


async def scenario():
    await hash_password()
    await asyncio.sleep(0.05)  # two loop iterations, two stalls
    await crunch_numbers()


if __name__ == "__main__":
    bptest.run(scenario)
