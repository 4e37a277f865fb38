"""Scenario: a process whose files and argument area a tracer must not wait for.

Before its loop starts (and before any tracer looks), it

- points its argument and environment areas (``PR_SET_MM_MAP``, which needs no
  CAP_SYS_RESOURCE) into a page registered with userfaultfd whose faults nobody serves:
  its ``/proc/PID/cmdline`` and ``environ`` are what the kernel makes of that page;
- enters a mount namespace of its own and binds a FIFO over the file of its ``_asyncio``
  module (already imported and mapped): that path, seen through ``/proc/PID/root``, is
  now a FIFO, whose open for reading waits for a writer that never comes.

With ``--hung-fuse``, instead, it mounts a FUSE file system whose daemon never answers
(not even its first request, ``INIT``) on ``$VIRTUAL_ENV``, in a mount namespace of its
own: a look into its virtualenv (for a uvloop it may import) waits as long as it lives.

Then three 300 ms ``time.sleep`` calls, each in its own loop iteration (``blocked``).
"""

import _asyncio
import ctypes
import os
import struct
import sys
import tempfile
import time

import bptest
from unanswered_memory import BLOCK_S, STEADY_STALLS, unanswered_page

PR_SET_MM = 35
PR_SET_MM_MAP = 14
CLONE_NEWNS = 0x20000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000

libc = ctypes.CDLL(None, use_errno=True)
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                       ctypes.c_ulong]
libc.sbrk.restype = ctypes.c_void_p
libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]


def check(ok, what):
    if not ok:
        bptest.fail(f"{what}: {os.strerror(ctypes.get_errno())}")


def unanswered_arguments():
    """Points the argument and environment areas into a page nobody serves."""
    page = unanswered_page()
    stat = open("/proc/self/stat").read()
    fields = stat[stat.rindex(")") + 2:].split()
    field = lambda n: int(fields[n - 3])  # noqa: E731 (proc(5) numbers fields from 1)
    mm_map = struct.pack(
        "11QQII",
        field(26), field(27),  # start_code, end_code
        field(45), field(46),  # start_data, end_data
        field(47), libc.sbrk(0),  # start_brk, brk
        field(28),  # start_stack
        page, page + 64,  # arg_start, arg_end
        page + 64, page + 128,  # env_start, env_end
        0, 0, 0xFFFFFFFF,  # no auxv, the same executable
    )
    buf = ctypes.create_string_buffer(mm_map, len(mm_map))
    rc = libc.prctl(PR_SET_MM, PR_SET_MM_MAP, ctypes.addressof(buf), len(mm_map), 0)
    check(rc == 0, "prctl(PR_SET_MM_MAP)")


def own_mount_namespace():
    """Enters a mount namespace of its own, whose mounts nobody else sees."""
    check(libc.unshare(CLONE_NEWNS) == 0, "unshare(CLONE_NEWNS)")
    check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) == 0, "mount private")


def fifo_over_asyncio():
    """Binds a FIFO over the ``_asyncio`` module's file, in a mount namespace of its own."""
    own_mount_namespace()
    with tempfile.TemporaryDirectory() as tmp:
        fifo = os.path.join(tmp, "fifo")
        os.mkfifo(fifo)
        target = _asyncio.__file__.encode()
        check(libc.mount(fifo.encode(), target, None, MS_BIND, None) == 0, "bind the FIFO")


def hung_fuse_on_virtualenv():
    """Mounts a FUSE file system that never answers on ``$VIRTUAL_ENV``; the device stays
    open (and unread) as long as the process lives."""
    own_mount_namespace()
    fuse = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    options = f"fd={fuse},rootmode=40000,user_id=0,group_id=0".encode()
    target = os.environ["VIRTUAL_ENV"].encode()
    check(libc.mount(b"hung", target, b"fuse", 0, options) == 0, "mount fuse")
    return fuse


def blocked(n):
    started = time.monotonic_ns()
    time.sleep(BLOCK_S)  # BLOCK blocked
    bptest.done(f"blocked{n}", time.monotonic_ns() - started)


async def scenario():
    import asyncio

    for n in range(STEADY_STALLS):
        await asyncio.sleep(bptest.TICK_S)
        blocked(n)


if __name__ == "__main__":
    if "--hung-fuse" in sys.argv:
        sys.argv.remove("--hung-fuse")
        fuse = hung_fuse_on_virtualenv()
    else:
        unanswered_arguments()
        fifo_over_asyncio()
    bptest.run(scenario)
