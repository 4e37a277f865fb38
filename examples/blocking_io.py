"""An asyncio client that reads from a socket the blocking way.

A slow server (a thread of this script, on 127.0.0.1, a free port) answers each request
150 ms late. ``fetch_quote()`` talks to it with a plain blocking socket: its
``read_reply()`` helper sits in ``sock.recv()`` and the whole event loop waits with it.
``fetch_quote_async()`` does the same with ``asyncio.open_connection()``, which blocks
nothing.

Try it:

    cargo xtask run -- run -- python3 examples/blocking_io.py

It runs for about 2 seconds and exits 0. Standard library only.
"""

import asyncio
import socket
import threading
import time

REPLY_DELAY_S = 0.15
HEARTBEAT_S = 0.05


def start_slow_server():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen()

    def serve():
        while True:
            conn, _ = server.accept()
            with conn:
                request = conn.recv(1024)
                time.sleep(REPLY_DELAY_S)  # a slow backend: fine, it is not the loop
                conn.sendall(b"quote for " + request.strip() + b": 42\n")

    threading.Thread(target=serve, name="slow-server", daemon=True).start()
    return server.getsockname()


async def heartbeat(stats):
    expected = time.monotonic() + HEARTBEAT_S
    while True:
        await asyncio.sleep(HEARTBEAT_S)
        now = time.monotonic()
        stats["worst_late_s"] = max(stats["worst_late_s"], now - expected)
        expected = now + HEARTBEAT_S


def read_reply(sock):
    return sock.recv(1024)  # blocks the event loop until the server answers


async def fetch_quote(address, symbol):
    with socket.create_connection(address) as sock:
        sock.sendall(symbol.encode() + b"\n")
        return read_reply(sock).decode().strip()


async def fetch_quote_async(address, symbol):
    reader, writer = await asyncio.open_connection(*address)
    writer.write(symbol.encode() + b"\n")
    await writer.drain()
    reply = await reader.readline()
    writer.close()
    await writer.wait_closed()
    return reply.decode().strip()


async def main():
    address = start_slow_server()
    stats = {"worst_late_s": 0.0}
    beat = asyncio.create_task(heartbeat(stats))
    await asyncio.sleep(0.3)
    for symbol in ("ACME", "INITECH", "GLOBEX"):
        print(await fetch_quote(address, symbol), flush=True)
        await asyncio.sleep(0.2)
    for symbol in ("UMBRELLA", "HOOLI", "STARK"):
        print(await fetch_quote_async(address, symbol), flush=True)
        await asyncio.sleep(0.1)
    beat.cancel()
    print(f"heartbeat: the worst {stats['worst_late_s'] * 1000:.0f} ms late", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
