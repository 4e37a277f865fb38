"""Scenario: a loop that never blocks. Exits with --exit-code N (default 0)."""

import bptest


async def scenario():
    pass


if __name__ == "__main__":
    bptest.run(scenario)
