"""Scenario: a coroutine runs ``subprocess.run(["sleep", "0.2"])``."""

import subprocess
import time

import bptest


async def run_tool():
    started = time.monotonic_ns()
    subprocess.run(["sleep", "0.2"], check=True)  # BLOCK run_tool
    bptest.done("run_tool", time.monotonic_ns() - started)


async def scenario():
    await run_tool()


if __name__ == "__main__":
    bptest.run(scenario)
