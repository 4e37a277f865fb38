//! Walking a thread's Python stack by the recipe userspace wrote for its process
//! ([`PyProcess`]). One walk serves both sides: BPF reads the target's memory from the
//! kernel as events happen; userspace reads it through `process_vm_readv` for a loop
//! still stuck when tracing stops (no event has walked that stack yet).

use crate::{
    config::PyProcess,
    stack::{RawFrame, RawStack, flags},
};

/// A traced process's memory, read without faulting.
pub trait UserMemory {
    /// The u64 at `addr`; `None` when it cannot be read.
    fn read_u64(&self, addr: u64) -> Option<u64>;
    /// The byte at `addr`; `None` when it cannot be read.
    fn read_u8(&self, addr: u64) -> Option<u8>;
}

/// The innermost frame pointer of `tstate`.
#[inline(always)]
fn innermost_frame(mem: &impl UserMemory, process: &PyProcess, tstate: u64) -> Option<u64> {
    let mut frame = mem.read_u64(tstate.wrapping_add(process.frame_path[0] as u64))?;
    if process.frame_path_len == 2 && frame != 0 {
        frame = mem.read_u64(frame.wrapping_add(process.frame_path[1] as u64))?;
    }
    Some(frame)
}

/// Fills `out` with the Python stack of the thread whose `PyThreadState*` is `tstate`,
/// innermost frame first.
#[inline(always)]
pub fn walk_thread(mem: &impl UserMemory, process: &PyProcess, tstate: u64, out: &mut RawStack) {
    out.len = 0;
    out.flags = 0;
    out.tstate = 0;
    out.task_name = 0;
    if tstate == 0 {
        out.flags = flags::NO_THREAD_STATE;
        return;
    }
    out.tstate = tstate;
    if process.running_task_offset != 0 {
        let task = mem
            .read_u64(tstate.wrapping_add(process.running_task_offset as u64))
            .unwrap_or(0);
        if task != 0 {
            out.task_name = mem
                .read_u64(task.wrapping_add(process.task_name_offset as u64))
                .unwrap_or(0);
        }
    }
    let Some(mut frame) = innermost_frame(mem, process, tstate) else {
        out.flags = flags::UNREADABLE_FRAME;
        return;
    };
    // One slot per frame examined, shim frames included (their code is stored as 0 and
    // userspace skips them): the slot index is the loop counter, which keeps the verifier's
    // state count linear in the stack depth.
    let mut len = 0usize;
    for slot in out.frames.iter_mut() {
        if frame == 0 {
            break;
        }
        let (Some(code), Some(instr), Some(previous)) = (
            mem.read_u64(frame.wrapping_add(process.frame_code as u64)),
            mem.read_u64(frame.wrapping_add(process.frame_instr as u64)),
            mem.read_u64(frame.wrapping_add(process.frame_previous as u64)),
        ) else {
            out.flags |= flags::UNREADABLE_FRAME;
            break;
        };
        let shim = process.owner_skip_min != 0
            && mem
                .read_u8(frame.wrapping_add(process.frame_owner as u64))
                .is_none_or(|owner| owner as u32 >= process.owner_skip_min);
        *slot = RawFrame {
            code: if shim { 0 } else { code & process.code_mask },
            instr,
        };
        len += 1;
        frame = previous;
    }
    if frame != 0 && out.flags == 0 {
        out.flags = flags::TRUNCATED;
    }
    out.len = len as u32;
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{boxed::Box, collections::BTreeMap};

    use super::*;

    /// Target memory: u64 values at addresses; anything else unreadable.
    struct Memory(BTreeMap<u64, u64>);

    impl UserMemory for Memory {
        fn read_u64(&self, addr: u64) -> Option<u64> {
            self.0.get(&addr).copied()
        }
        fn read_u8(&self, addr: u64) -> Option<u8> {
            self.read_u64(addr).map(|v| v as u8)
        }
    }

    #[test]
    fn a_frame_pointer_at_the_top_of_the_address_space_ends_the_walk() {
        let process = PyProcess {
            code_mask: u64::MAX,
            frame_path: [0x10, 0],
            frame_path_len: 1,
            frame_code: 0x20,
            frame_instr: 0x38,
            frame_previous: 0x8,
            ..PyProcess::default()
        };
        // The thread state's frame is readable; its caller link points just below 2^64,
        // where adding a field offset would overflow.
        let memory = Memory(BTreeMap::from([
            (0x1010, 0x2000),
            (0x2020, 0xc0de),
            (0x2038, 7),
            (0x2008, u64::MAX - 4),
        ]));
        // SAFETY: RawStack is plain old data: all zeroes is a valid empty stack.
        let mut stack: Box<RawStack> = Box::new(unsafe { core::mem::zeroed() });
        walk_thread(&memory, &process, 0x1000, &mut stack);
        assert_eq!(stack.len, 1);
        assert_eq!(stack.frames[0].code, 0xc0de);
        assert_eq!(stack.flags, flags::UNREADABLE_FRAME);
    }
}
