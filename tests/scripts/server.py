"""Runs a real server under the server protocol (see ``bptest.serve``) on a free port:

- ``gunicorn``: the FastAPI app of fastapi_app.py under gunicorn, 2 uvicorn workers
  (``-k uvicorn.workers.UvicornWorker``: uvloop and httptools);
- ``aiohttp``: aiohttp_app.py (``web.run_app``).

The packages come from ``target/pyservers/3.X`` on PYTHONPATH (``cargo xtask setup``)."""

import os
import sys

import bptest

HERE = os.path.dirname(os.path.abspath(__file__))
WORKERS = 2


def main():
    kind = sys.argv[1]
    port = bptest.free_port()
    if kind == "gunicorn":
        argv = [
            sys.executable, "-m", "gunicorn",
            "--bind", f"127.0.0.1:{port}",
            "--workers", str(WORKERS),
            "--worker-class", "uvicorn.workers.UvicornWorker",
            "--chdir", HERE,
            "fastapi_app:app",
        ]
        bptest.serve(argv, port, workers=WORKERS)
    elif kind == "aiohttp":
        argv = [sys.executable, os.path.join(HERE, "aiohttp_app.py"), str(port)]
        bptest.serve(argv, port)
    else:
        bptest.fail(f"unknown server {kind!r}")


if __name__ == "__main__":
    main()
