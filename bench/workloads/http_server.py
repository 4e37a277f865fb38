"""aiohttp "hello" server on 127.0.0.1:PORT; prints LISTENING once bound, runs until killed."""
import asyncio
import sys

from aiohttp import web

PORT = int(sys.argv[1])


async def hello(_request):
    return web.Response(text="hello")


async def main():
    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", PORT).start()
    print("LISTENING", flush=True)
    await asyncio.Event().wait()


asyncio.run(main())
