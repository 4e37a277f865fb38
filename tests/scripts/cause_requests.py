"""Scenario: a coroutine calls ``requests.get`` on a slow local HTTP server (150 ms).

The server is a thread of this script. The test puts ``requests`` on PYTHONPATH through a
directory named ``site-packages``, as an installed package is, so that the culprit is the
coroutine and the innermost frame is in the standard library's http/socket code.
"""

import time

import requests

import bptest

SLOW_S = 0.15


BASE_URL = bptest.start_slow_http_server(SLOW_S)
# requests' lazy imports and set-up must not run on the loop.
requests.get(BASE_URL + "/fast", timeout=10).raise_for_status()


async def fetch_profile():
    started = time.monotonic_ns()
    response = requests.get(BASE_URL + "/slow", timeout=10)  # BLOCK fetch_profile
    elapsed = time.monotonic_ns() - started
    if response.text != "ok\n":
        bptest.fail(f"unexpected reply {response.text!r}")
    bptest.done("fetch_profile", elapsed)


async def scenario():
    await fetch_profile()


if __name__ == "__main__":
    bptest.run(scenario)
