"""Scenario: a coroutine calls ``requests.get`` on a slow local HTTP server (150 ms).

The server is a thread of this script. The test puts ``requests`` on PYTHONPATH through a
directory named ``site-packages``, as an installed package is, so that the culprit is the
coroutine and the innermost frame is in the standard library's http/socket code.
"""

import http.server
import threading
import time

import requests

import bptest

SLOW_S = 0.15


class SlowHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self):
        if self.path == "/slow":
            time.sleep(SLOW_S)
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass


def start_http_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    host, port = server.server_address[:2]
    return f"http://{host}:{port}"


BASE_URL = start_http_server()
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
