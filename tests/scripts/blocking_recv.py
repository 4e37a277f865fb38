"""Scenario: a coroutine reads a reply with a blocking sock.recv() from a slow server.

The server is a thread of this script, accepting on 127.0.0.1 (a free port) and replying
150 ms after each request.
"""

import socket
import time

import bptest

REPLY_DELAY_S = 0.15
ADDRESS = bptest.start_slow_tcp_server(REPLY_DELAY_S, b"pong\n")


def read_reply(sock):
    return sock.recv(1024)  # BLOCK read_reply


async def fetch_status():
    # Times the whole synchronous stretch the loop waits for, not just recv(): connect
    # and sendall release the GIL, and taking it back from the server thread can take
    # a few ms, all of it part of the stall.
    started = time.monotonic_ns()
    with socket.create_connection(ADDRESS) as sock:
        sock.sendall(b"ping\n")
        data = read_reply(sock)  # CALL fetch_status
    elapsed = time.monotonic_ns() - started
    if data != b"pong\n":
        bptest.fail(f"unexpected reply {data!r}")
    bptest.done("read_reply", elapsed)


async def scenario():
    await fetch_status()


if __name__ == "__main__":
    bptest.run(scenario)
