"""The protocol between blockprobe's integration tests and the scenario scripts here.

A real program blocks whenever it likes, its first loop iteration included, and
blockprobe must see it. So by default a scenario does not wait for the tracer. Each
script:

1. starts its event loop(s), each with a ticker task that keeps the loop iterating every
   5 ms, and prints ``LOOP <name> <native thread id>`` for each loop, then ``READY <pid>``;
2. only for a test about a steady state (``BPTEST_GO=1`` in the environment, set by the
   test): waits for the line ``GO`` on stdin, read with ``loop.add_reader`` so the loop
   keeps running (stdin must be a pipe or a terminal); the test sends it only after
   blockprobe reported a ``loop`` event for every listed thread;
3. runs the scenario, timing each blocking call in-process with ``time.monotonic_ns()``
   and printing ``DONE <name> <ns>``, then ``FINISHED``; a scenario in several steps
   waits for the test's word to start each further step (``await expect("BLOCK")``);
   (with ``--spin-after-ready S``, the loop first spins in Python for S seconds, as a
   busy single-threaded server does when a tracer attaches to it);
4. waits for ``QUIT`` or the end of stdin and exits (0, or ``--exit-code N``). Staying
   alive until then gives blockprobe the time to read this process's memory to symbolize
   the stalls it saw.

``run_first`` runs a scenario as the very first thing its loop does (after one line,
``RUN main``, written just before the loop starts running: a test can tell whether the
tracer had attached by then), then says ``LOOP``, ``READY`` and ``FINISHED`` and waits
for ``QUIT``.

Every line is written with one ``write()`` and flushed. Failures go to stderr, exit 2.
Plain standard library only; with ``BPTEST_UVLOOP=1`` in the environment every loop is a
uvloop loop (``uvloop.run`` for the main one); with ``BPTEST_UVLOOP=by-hand`` the main one
is a uvloop loop run by ``run_until_complete``, as servers do (no Python frame of its own).
"""

import argparse
import asyncio
import http.client
import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time

TICK_S = 0.005
UVLOOP_MODE = os.environ.get("BPTEST_UVLOOP")
UVLOOP = UVLOOP_MODE in ("1", "by-hand")
WAIT_FOR_GO = os.environ.get("BPTEST_GO") == "1"
if UVLOOP:
    import uvloop


def say(line):
    """Prints one protocol line, in a single write, flushed."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def done(name, ns):
    say(f"DONE {name} {ns}")


def fail(message):
    sys.stderr.write(f"bptest: {message}\n")
    sys.stderr.flush()
    os._exit(2)


def in_thread(name, target):
    """Runs ``target()`` in a new daemon thread called ``name``: a helper of the
    scenario (a server, a writer) that must not keep the script alive."""
    threading.Thread(target=target, name=name, daemon=True).start()


def write_later(fd, delay_s):
    """Starts a thread that writes one byte to ``fd`` ``delay_s`` seconds after the
    returned event is set."""
    go = threading.Event()

    def writer():
        go.wait()
        time.sleep(delay_s)
        os.write(fd, b"x")

    in_thread("writer", writer)
    return go


def start_slow_http_server(slow_s):
    """Starts an HTTP server in a daemon thread of this script: ``/slow`` answers after
    ``slow_s`` seconds, anything else at once. Returns its base URL."""

    class SlowHandler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def do_GET(self):
            if self.path == "/slow":
                time.sleep(slow_s)
            body = b"ok\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowHandler)
    server.daemon_threads = True
    in_thread("http", server.serve_forever)
    host, port = server.server_address[:2]
    return f"http://{host}:{port}"


def start_slow_tcp_server(delay_s, reply):
    """Starts a TCP server in a daemon thread of this script, on a free port of
    127.0.0.1: for each connection, it reads one request (up to 1 KiB), waits ``delay_s``
    seconds and answers ``reply``. Returns its ``(host, port)``."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen()

    def serve():
        while True:
            conn, _ = server.accept()
            with conn:
                conn.recv(1024)
                time.sleep(delay_s)
                conn.sendall(reply)

    in_thread("slow-server", serve)
    return server.getsockname()


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port, path):
    """GETs ``path`` from 127.0.0.1:``port``; fails unless it answers 200. Returns how
    long it took, in ns."""
    start = time.monotonic_ns()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
    finally:
        connection.close()
    if response.status != 200:
        fail(f"GET {path} answered {response.status}")
    return time.monotonic_ns() - start


class Server:
    """A server command (gunicorn, an aiohttp app…) started in a process group of its
    own, so that it and every worker it forks are stopped together: at ``stop()``, at
    exit, and on SIGTERM/SIGINT. Its output goes to this script's stderr."""

    def __init__(self, argv, port):
        self.port = port
        self.proc = subprocess.Popen(argv, start_new_session=True, stdout=sys.stderr)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
        signal.signal(signal.SIGINT, lambda *_: sys.exit(1))

    def wait_listening(self, timeout_s=30):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                fail(f"the server exited with {self.proc.returncode} before listening")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        fail(f"nothing listens on port {self.port} after {timeout_s} s")

    def children(self, count, timeout_s=30):
        """Waits until the server's first process has ``count`` children; their pids."""
        path = f"/proc/{self.proc.pid}/task/{self.proc.pid}/children"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with open(path) as f:
                pids = [int(p) for p in f.read().split()]
            if len(pids) >= count:
                return pids
            time.sleep(0.05)
        fail(f"the server has not started {count} workers after {timeout_s} s")

    def stop(self):
        """Stops the whole group: SIGTERM, then SIGKILL after 5 s."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


def serve(argv, port, workers=0):
    """The server protocol: starts ``argv`` (listening on ``port``) as a :class:`Server`,
    prints ``SERVING <port> <process group>`` once it listens (and, with ``workers``,
    ``WORKERS <pid>…`` once it forked them), then runs the test's requests: each line
    ``GET <path> <n>`` on stdin makes ``n`` requests one after the other and prints
    ``DONE <path> <ns of each>…``. ``QUIT`` or the end of stdin stops the server."""
    server = Server(argv, port)
    try:
        server.wait_listening()
        say(f"SERVING {port} {server.proc.pid}")
        if workers:
            say("WORKERS " + " ".join(map(str, server.children(workers))))
        for line in sys.stdin:
            words = line.split()
            if words[:1] == ["QUIT"]:
                break
            if len(words) != 3 or words[0] != "GET":
                fail(f"expected GET <path> <n> or QUIT, got {line!r}")
            took = [http_get(port, words[1]) for _ in range(int(words[2]))]
            done(words[1], " ".join(map(str, took)))
    finally:
        server.stop()


async def ticker():
    """Keeps a loop iterating so that blockprobe sees it as a live loop."""
    while True:
        await asyncio.sleep(TICK_S)


class Commands:
    """Lines from stdin, read from the loop without ever blocking it."""

    def __init__(self, loop):
        self._loop = loop
        self._fd = sys.stdin.fileno()
        self._buf = b""
        self._queue = asyncio.Queue()
        loop.add_reader(self._fd, self._readable)

    def _readable(self):
        # Readable: one read() returns what is there without blocking.
        data = os.read(self._fd, 4096)
        if not data:
            self._loop.remove_reader(self._fd)
            self._queue.put_nowait(None)
            return
        self._buf += data
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            self._queue.put_nowait(line.decode().strip())

    async def next(self):
        """The next line; the end of stdin is a failure."""
        command = await self._queue.get()
        if command is None:
            fail("stdin closed in the middle of the scenario")
        return command

    async def expect_go(self):
        command = await self._queue.get()
        if command != "GO":
            fail(f"expected GO on stdin, got {command!r}")

    async def wait_quit(self):
        """Returns at QUIT or at the end of stdin."""
        while True:
            command = await self._queue.get()
            if command is None or command == "QUIT":
                return
            fail(f"expected QUIT on stdin, got {command!r}")


class LoopThread:
    """A second event loop, running in its own thread, with its own ticker."""

    def __init__(self, name):
        self.name = name
        self.loop = None
        self.native_id = None
        self._live = threading.Event()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    def start(self):
        self._thread.start()
        if not self._live.wait(10):
            fail(f"loop thread {self.name} did not start")

    def _main(self):
        self.loop = uvloop.new_event_loop() if UVLOOP else asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.loop.create_task(self._begin())
        self.loop.run_forever()
        tasks = asyncio.all_tasks(self.loop)
        for task in tasks:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self.loop.close()

    async def _begin(self):
        asyncio.get_running_loop().create_task(ticker())
        await asyncio.sleep(TICK_S)
        self.native_id = threading.get_native_id()
        say(f"LOOP {self.name} {self.native_id}")
        self._live.set()

    async def run(self, coro):
        """Runs a coroutine on this loop and waits for it from the calling loop."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return await asyncio.wrap_future(future)

    def stop(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


_commands = None


async def expect(word):
    """Waits, in a scenario, for the line ``word`` on stdin: for scenarios in more than one
    step, each started by the test once blockprobe reported what the step needs."""
    got = await command()
    if got != word:
        fail(f"expected {word} on stdin, got {got!r}")


async def command():
    """The next line the test sends, in a scenario driven word by word."""
    return await _commands.next()


def run_main(main):
    """Runs ``await main()`` on a new loop in this thread: asyncio's, or uvloop's as
    ``BPTEST_UVLOOP`` says."""
    if UVLOOP_MODE == "by-hand":
        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        loop.run_until_complete(main())
        loop.close()
    elif UVLOOP:
        uvloop.run(main())
    else:
        asyncio.run(main())


def run(scenario, loops=(), setup=None):
    """Runs ``await scenario()`` under the protocol, on a loop in the main thread.

    ``loops`` are extra LoopThreads, started before the main loop and stopped after it.
    ``await setup()``, if given, runs on the main loop before READY: whatever it does is
    not traced as part of the scenario.
    """
    parser = argparse.ArgumentParser()
    parser.add_argument("--exit-code", type=int, default=0)
    parser.add_argument(
        "--spin-after-ready",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="right after READY, spin in Python (holding the GIL) this long",
    )
    args = parser.parse_args()

    for extra in loops:
        extra.start()

    async def main():
        global _commands
        loop = asyncio.get_running_loop()
        commands = _commands = Commands(loop)
        tick = loop.create_task(ticker())
        if setup is not None:
            await setup()
        await asyncio.sleep(TICK_S)
        say(f"LOOP main {threading.get_native_id()}")
        say(f"READY {os.getpid()}")
        spin_until = time.monotonic() + args.spin_after_ready
        while time.monotonic() < spin_until:
            pass
        if WAIT_FOR_GO:
            await commands.expect_go()
        await scenario()
        say("FINISHED")
        await commands.wait_quit()
        tick.cancel()

    run_main(main)
    for extra in loops:
        extra.stop()
    sys.exit(args.exit_code)


def finish_without_loop():
    """For a script whose loops have all stopped: says ``LOOP`` (this thread ran them),
    ``READY`` and ``FINISHED``, and waits for ``QUIT`` or the end of stdin."""
    say(f"LOOP main {threading.get_native_id()}")
    say(f"READY {os.getpid()}")
    say("FINISHED")
    for line in sys.stdin:
        if line.strip() == "QUIT":
            return


def run_first(scenario):
    """Says ``RUN main`` just before the main loop starts, runs ``await scenario()`` as
    the first thing that loop does, then says ``LOOP``, ``READY`` and ``FINISHED`` and
    waits for ``QUIT``."""

    async def main():
        global _commands
        await scenario()
        _commands = Commands(asyncio.get_running_loop())
        say(f"LOOP main {threading.get_native_id()}")
        say(f"READY {os.getpid()}")
        say("FINISHED")
        await _commands.wait_quit()

    say("RUN main")
    run_main(main)
