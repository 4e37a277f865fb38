"""Scenario: a process whose memory does not answer. It maps a page registered with
userfaultfd (missing mode) whose faults nobody serves: a read of it, by the process or by
another one through ``process_vm_readv``, waits for ever (until the process exits).

Four 300 ms ``time.sleep`` calls, each in its own loop iteration:

- ``Slow.poisoned``: its code object's name (``co_qualname``, ``co_name`` before 3.11)
  points into that page while it blocks, and until the test, having seen the stall,
  sends ``RESTORE``: the name blockprobe reads to symbolize the stall never comes;
- ``steady`` three times, with every pointer intact.

With ``--stuck``, the loop's first iteration is stuck instead, long before any tracer
looks: ``Slow.stuck`` prints ``STUCK <native thread id>``, points its name into the page
and sleeps 30 s (no handshake with the tracer, started later).

The name's field is found by its value (the name object's address) in the code object,
so the scenario holds on every interpreter's layout. The process never reads the page
itself, and exits when blockprobe's ``run`` forwards it SIGTERM.
"""

import asyncio
import ctypes
import os
import struct
import sys
import threading
import time

import bptest

SYS_USERFAULTFD = 323  # x86_64
UFFD_API = 0xAA
UFFDIO_API = 0xC018AA3F  # _IOWR(0xAA, 0x3F, struct uffdio_api)
UFFDIO_REGISTER = 0xC020AA00  # _IOWR(0xAA, 0x00, struct uffdio_register)
UFFDIO_REGISTER_MODE_MISSING = 1
PAGE = 4096
BLOCK_S = 0.3
STEADY_STALLS = 3


def unanswered_page():
    """The address of a page whose faults wait for a userfaultfd nobody reads."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
        ctypes.c_long,
    ]
    libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]

    def check(ok, what):
        if not ok:
            bptest.fail(f"{what}: {os.strerror(ctypes.get_errno())}")

    uffd = libc.syscall(SYS_USERFAULTFD, os.O_CLOEXEC | os.O_NONBLOCK)
    check(uffd >= 0, "userfaultfd")
    api = ctypes.create_string_buffer(struct.pack("QQQ", UFFD_API, 0, 0), 24)
    check(libc.ioctl(uffd, UFFDIO_API, api) == 0, "UFFDIO_API")
    # PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS
    page = libc.mmap(None, PAGE, 0x3, 0x22, -1, 0)
    check(page not in (None, ctypes.c_void_p(-1).value), "mmap")
    register = struct.pack("QQQQ", page, PAGE, UFFDIO_REGISTER_MODE_MISSING, 0)
    register = ctypes.create_string_buffer(register, 32)
    check(libc.ioctl(uffd, UFFDIO_REGISTER, register) == 0, "UFFDIO_REGISTER")
    return page


def name_field(code, name):
    """The word of code object ``code`` that points to ``name``."""
    for offset in range(0, type(code).__basicsize__, 8):
        field = ctypes.c_uint64.from_address(id(code) + offset)
        if field.value == id(name):
            return field
    bptest.fail(f"no field of {code!r} points to its name")


def point_name_to(code, page):
    """Points the name blockprobe reads of code object ``code`` into ``page``; returns
    the field and its value, to restore it."""
    name = code.co_qualname if sys.version_info >= (3, 11) else code.co_name
    field = name_field(code, name)
    saved, field.value = field.value, page
    return field, saved


class Slow:
    def poisoned(self, page):
        """Points its own name into ``page``, blocks, and returns how to restore it."""
        field, saved = point_name_to(Slow.poisoned.__code__, page)
        started = time.monotonic_ns()
        time.sleep(BLOCK_S)  # BLOCK poisoned
        bptest.done("poisoned", time.monotonic_ns() - started)
        return field, saved

    def stuck(self, page):
        bptest.say(f"STUCK {threading.get_native_id()}")
        point_name_to(Slow.stuck.__code__, page)
        time.sleep(30)  # BLOCK stuck


def steady(n):
    started = time.monotonic_ns()
    time.sleep(BLOCK_S)  # BLOCK steady
    bptest.done(f"steady{n}", time.monotonic_ns() - started)


async def scenario():
    page = unanswered_page()
    field, saved = Slow().poisoned(page)  # CALL poisoned
    await bptest.expect("RESTORE")
    field.value = saved
    for n in range(STEADY_STALLS):
        await asyncio.sleep(bptest.TICK_S)
        steady(n)


async def stuck():
    Slow().stuck(unanswered_page())


if __name__ == "__main__":
    if sys.argv[1:] == ["--stuck"]:
        bptest.run_main(stuck)
    else:
        bptest.run(scenario)
