"""Runs a benchmark workload under an in-process peer tool (or none).

Usage: peer.py MODE SCRIPT [ARGS...], MODE one of none, asyncio-debug, loop-monitor,
aiodebug. With BENCH_WAIT=1 in the environment it prints READY and waits for a line on
stdin first, so a tracer can attach before the measured part starts."""
import os
import runpy
import sys

mode, script, *args = sys.argv[1:]

if mode == "asyncio-debug":
    # Read by asyncio when it is imported: set before anything imports it.
    os.environ["PYTHONASYNCIODEBUG"] = "1"
elif mode == "aiodebug":
    import aiodebug.log_slow_callbacks

    aiodebug.log_slow_callbacks.enable(0.01)
elif mode == "loop-monitor":
    import asyncio

    from asyncio_event_loop_monitor import event_loop_monitor_ctx

    original_run = asyncio.run

    def monitored_run(main, **kwargs):
        async def monitored():
            with event_loop_monitor_ctx(threshold_ms=10.0):
                return await main

        return original_run(monitored(), **kwargs)

    asyncio.run = monitored_run
elif mode != "none":
    sys.exit(f"unknown peer mode {mode!r}")

if os.environ.get("BENCH_WAIT"):
    print("READY", flush=True)
    sys.stdin.readline()

sys.argv = [script, *args]
runpy.run_path(script, run_name="__main__")
