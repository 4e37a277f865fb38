"""Scenario: N Python processes, each with its own asyncio loop, all stalling at once.

Starts N children (fleet_child.py, each speaking the bptest protocol on its own pipes)
and relays the protocol to them:

1. prints ``CHILD <pid> <loop tid>`` for each child once all are ready, then ``SPAWNED``;
2. on ``GO`` (stdin) sends ``GO`` to every child, waits for all their ``FINISHED`` and
   prints ``FINISHED``;
3. on ``QUIT`` or the end of stdin, stops the children and exits 0 when all exited 0.
"""

import os
import subprocess
import sys

N = int(sys.argv[1])
HERE = os.path.dirname(os.path.abspath(__file__))


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def expect(child, word):
    """Reads child lines up to the one starting with ``word``; returns that line."""
    while True:
        line = child.stdout.readline()
        if not line:
            sys.exit(f"fleet_spawner: child {child.pid} ended before {word}")
        if line.startswith(word):
            return line.strip()


def main():
    children = [
        subprocess.Popen(
            [sys.executable, os.path.join(HERE, "fleet_child.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(N)
    ]
    tids = [expect(child, "LOOP main").split()[2] for child in children]
    for child in children:
        expect(child, "READY")
    for child, tid in zip(children, tids):
        say(f"CHILD {child.pid} {tid}")
    say("SPAWNED")
    if sys.stdin.readline().strip() != "GO":
        sys.exit("fleet_spawner: expected GO")
    for child in children:
        child.stdin.write("GO\n")
        child.stdin.flush()
    for child in children:
        expect(child, "FINISHED")
    say("FINISHED")
    sys.stdin.readline()  # QUIT or the end of stdin
    for child in children:
        child.stdin.close()
    failed = [child.pid for child in children if child.wait() != 0]
    if failed:
        sys.exit(f"fleet_spawner: children failed: {failed}")


if __name__ == "__main__":
    main()
