"""Scenario: a process corrupts, with ctypes, the very data blockprobe reads to walk and
name its stack, while it blocks. CPython 3.11 only (its frame and code object layout).

Three 100 ms ``time.sleep`` calls, each in a plain function called from the scenario
coroutine, each in its own loop iteration:

- ``Victim.nameless``: its code object's ``co_qualname`` points to unmapped memory. blockprobe
  reads code objects after the call, so the name stays broken until the test, having seen
  the stall, sends ``RESTORE``; nothing reads it meanwhile;
- ``cut_victim``: its frame's ``previous`` points to unmapped memory;
- ``cycle_victim``: its frame's ``previous`` points to the frame itself.

Frames are walked during the call: the last two restore what they broke before they
return, so the interpreter, which follows the same pointer to return, never sees it.
"""

import asyncio
import ctypes
import sys
import time

import bptest

# CPython 3.11: PyCodeObject.co_qualname; PyFrameObject.f_frame;
# _PyInterpreterFrame.f_code and .previous.
CODE_QUALNAME = 128
FRAME_OBJECT_IFRAME = 24
IFRAME_CODE = 32
IFRAME_PREVIOUS = 48
# Below mmap_min_addr: never mapped.
GARBAGE = 0x1008


def word(addr):
    return ctypes.c_uint64.from_address(addr)


def own_frame():
    """The address of the caller's _PyInterpreterFrame, checked against its code and its
    caller's frame."""
    frame = sys._getframe(1)
    iframe = word(id(frame) + FRAME_OBJECT_IFRAME).value
    if word(iframe + IFRAME_CODE).value != id(frame.f_code):
        bptest.fail("unexpected frame layout: f_code")
    back = word(id(frame.f_back) + FRAME_OBJECT_IFRAME).value
    if word(iframe + IFRAME_PREVIOUS).value != back:
        bptest.fail("unexpected frame layout: previous")
    del frame
    return iframe


class Victim:
    def nameless(self):
        """Breaks its own name, blocks, and returns how to restore the name."""
        field = word(id(Victim.nameless.__code__) + CODE_QUALNAME)
        if field.value != id(Victim.nameless.__code__.co_qualname):
            bptest.fail("unexpected code object layout: co_qualname")
        saved, field.value = field.value, GARBAGE
        started = time.monotonic_ns()
        time.sleep(0.1)  # BLOCK nameless
        bptest.done("nameless", time.monotonic_ns() - started)
        return field, saved


def cut_victim():
    previous = word(own_frame() + IFRAME_PREVIOUS)
    saved, previous.value = previous.value, GARBAGE
    started = time.monotonic_ns()
    time.sleep(0.1)  # BLOCK cut_victim
    elapsed = time.monotonic_ns() - started
    previous.value = saved
    bptest.done("cut_victim", elapsed)


def cycle_victim():
    iframe = own_frame()
    previous = word(iframe + IFRAME_PREVIOUS)
    saved, previous.value = previous.value, iframe
    started = time.monotonic_ns()
    time.sleep(0.1)  # BLOCK cycle_victim
    elapsed = time.monotonic_ns() - started
    previous.value = saved
    bptest.done("cycle_victim", elapsed)


async def scenario():
    if sys.version_info[:2] != (3, 11):
        bptest.fail(f"hostile_frames.py knows CPython 3.11's layout only, not {sys.version}")
    field, saved = Victim().nameless()  # CALL nameless
    await bptest.expect("RESTORE")
    field.value = saved
    cut_victim()
    await asyncio.sleep(bptest.TICK_S)
    cycle_victim()


if __name__ == "__main__":
    bptest.run(scenario)
