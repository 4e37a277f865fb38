"""Scenario: Python programs that poll without an asyncio loop blockprobe recognizes.

- default: a hand-written event loop polling ``select.epoll`` directly (as Twisted's
  epollreactor does), with asyncio imported: blockprobe cannot watch it, and says so;
- ``--selectors``: the same loop through ``selectors`` (what sync code uses): no loop;
- ``--no-poll``: reads stdin with plain blocking reads, never polls.

Prints ``READY <pid>``, then runs until ``QUIT`` or the end of stdin (exit 0). Every poll
waits at most 20 ms."""

import asyncio  # noqa: F401  (a program with asyncio imported, its loop unrecognized)
import os
import select
import selectors
import sys

import bptest

POLL_S = 0.02


def waiter():
    """A function that waits up to POLL_S for stdin, true when it is readable."""
    fd = sys.stdin.fileno()
    if "--selectors" in sys.argv:
        selector = selectors.DefaultSelector()
        selector.register(fd, selectors.EVENT_READ)
        return lambda: bool(selector.select(POLL_S))
    if "--no-poll" in sys.argv:
        return lambda: True
    epoll = select.epoll()
    epoll.register(fd, select.EPOLLIN)
    return lambda: bool(epoll.poll(POLL_S))


def main():
    readable = waiter()
    bptest.say(f"READY {os.getpid()}")
    while True:
        if readable():
            line = sys.stdin.readline()
            if not line or line.strip() == "QUIT":
                return


if __name__ == "__main__":
    main()
