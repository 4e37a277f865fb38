"""A FastAPI app whose start-up blocks its loop (a lifespan hook warming a cache
synchronously), with an ``async def`` endpoint that calls a sync helper (blocks the loop
at every request) and a plain ``def`` endpoint (run in FastAPI's thread pool: the loop
stays free). Run by server.py under gunicorn."""

import time
from contextlib import asynccontextmanager

from fastapi import FastAPI

LIFESPAN_S = 0.3
HELPER_S = 0.05


@asynccontextmanager
async def lifespan(app):
    time.sleep(LIFESPAN_S)  # BLOCK lifespan
    yield


app = FastAPI(lifespan=lifespan)


def render_report():
    time.sleep(HELPER_S)  # BLOCK render_report
    return {"report": "ok"}


@app.get("/async")
async def async_endpoint():
    return render_report()


@app.get("/sync")
def sync_endpoint():
    time.sleep(HELPER_S)  # BLOCK sync_endpoint
    return {"sync": "ok"}
