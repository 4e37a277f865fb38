//! A raw Python stack as captured by BPF: code object and instruction pointers.

use crate::assert_size;

/// Most frames captured per stack; deeper stacks are truncated (and flagged).
pub const MAX_FRAMES: usize = 127;

/// One Python frame: the code object and where in it the frame is.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RawFrame {
    /// Address of the `PyCodeObject` in the target process; 0 for an interpreter shim
    /// frame (3.12+ C-stack entry frames), which symbolization skips.
    pub code: u64,
    /// Instruction pointer (3.11+) or instruction index (≤3.10) of the frame.
    pub instr: u64,
}
assert_size!(RawFrame, 16);

/// Bits of [`RawStack::flags`].
pub mod flags {
    /// The thread had no readable `PyThreadState` (not a Python thread, or unreadable).
    pub const NO_THREAD_STATE: u32 = 1 << 0;
    /// A frame pointer could not be read: the frames captured so far are still valid.
    pub const UNREADABLE_FRAME: u32 = 1 << 1;
    /// The stack was deeper than [`super::MAX_FRAMES`].
    pub const TRUNCATED: u32 = 1 << 2;
    /// The process's walk configuration was missing.
    pub const NO_PROCESS: u32 = 1 << 3;
}

/// A thread's Python stack, innermost frame first.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RawStack {
    /// Number of valid entries in `frames`.
    pub len: u32,
    /// [`flags`] bits.
    pub flags: u32,
    /// The thread's `PyThreadState*` (0 when not found).
    pub tstate: u64,
    /// The name object (`str`, or the `int` counter behind `Task-N`) of the asyncio task
    /// the thread was running (3.14+; 0 when unknown). Read in the kernel, at capture
    /// time: a task that ends right after blocking is gone before userspace could look.
    pub task_name: u64,
    /// Frames, innermost first; only the first `len` are meaningful.
    pub frames: [RawFrame; MAX_FRAMES],
}
assert_size!(RawStack, 24 + 16 * MAX_FRAMES);
