"""An aiohttp app (``web.run_app``) whose ``on_startup`` hook blocks its loop (a sync
connect at start-up). Run by server.py; the port is the first argument."""

import sys
import time

from aiohttp import web

STARTUP_S = 0.3


async def on_startup(app):
    time.sleep(STARTUP_S)  # BLOCK on_startup


async def hello(request):
    return web.Response(text="ok")


def main():
    app = web.Application()
    app.on_startup.append(on_startup)
    app.router.add_get("/", hello)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)


if __name__ == "__main__":
    main()
