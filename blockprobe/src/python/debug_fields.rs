//! Where the offsets blockprobe needs sit in a 3.13+ interpreter's `_Py_DebugOffsets`,
//! per minor version: its shape is stable within a minor only. `debug_offsets` reads
//! them from the running interpreter.

/// Indices of the needed fields among the u64 fields that follow `free_threaded`.
#[derive(Clone, Copy, Debug)]
pub struct DebugFields {
    /// `runtime_state.size`.
    pub runtime_size: u16,
    /// `runtime_state.finalizing`.
    pub runtime_finalizing: u16,
    /// `runtime_state.interpreters_head`.
    pub runtime_interpreters_head: u16,
    /// `interpreter_state.size`.
    pub interp_size: u16,
    /// `interpreter_state.threads_head`.
    pub interp_threads_head: u16,
    /// `interpreter_state.ceval_gil`.
    pub interp_ceval_gil: u16,
    /// `thread_state.size`.
    pub tstate_size: u16,
    /// `thread_state.next`.
    pub tstate_next: u16,
    /// `thread_state.current_frame`.
    pub tstate_current_frame: u16,
    /// `thread_state.thread_id`.
    pub tstate_thread_id: u16,
    /// `thread_state.native_thread_id`.
    pub tstate_native_thread_id: u16,
    /// `interpreter_frame.size`.
    pub frame_size: u16,
    /// `interpreter_frame.previous`.
    pub frame_previous: u16,
    /// `interpreter_frame.executable`.
    pub frame_executable: u16,
    /// `interpreter_frame.instr_ptr`.
    pub frame_instr_ptr: u16,
    /// `interpreter_frame.owner`.
    pub frame_owner: u16,
    /// `code_object.size`.
    pub code_size: u16,
    /// `code_object.filename`.
    pub code_filename: u16,
    /// `code_object.qualname`.
    pub code_qualname: u16,
    /// `code_object.linetable`.
    pub code_linetable: u16,
    /// `code_object.firstlineno`.
    pub code_firstlineno: u16,
    /// `code_object.argcount` (`co_flags` is the int just before it).
    pub code_argcount: u16,
    /// `code_object.co_code_adaptive`.
    pub code_code_adaptive: u16,
}

/// 3.13: `runtime_state` {size, finalizing, interpreters_head}, `interpreter_state`
/// {size, id, next, threads_head, gc, imports_modules, sysdict, builtins, ceval_gil,
/// gil_runtime_state, …enabled, …locked, …holder}, `thread_state` {size, prev, next,
/// interp, current_frame, thread_id, native_thread_id, datastack_chunk, status},
/// `interpreter_frame` {size, previous, executable, instr_ptr, localsplus, owner},
/// `code_object` {size, filename, name, qualname, linetable, firstlineno, argcount,
/// localsplusnames, localspluskinds, co_code_adaptive}, …
pub const PY313: DebugFields = DebugFields {
    runtime_size: 0,
    runtime_finalizing: 1,
    runtime_interpreters_head: 2,
    interp_size: 3,
    interp_threads_head: 6,
    interp_ceval_gil: 11,
    tstate_size: 16,
    tstate_next: 18,
    tstate_current_frame: 20,
    tstate_thread_id: 21,
    tstate_native_thread_id: 22,
    frame_size: 25,
    frame_previous: 26,
    frame_executable: 27,
    frame_instr_ptr: 28,
    frame_owner: 30,
    code_size: 31,
    code_filename: 32,
    code_qualname: 34,
    code_linetable: 35,
    code_firstlineno: 36,
    code_argcount: 37,
    code_code_adaptive: 40,
};

/// 3.14: `interpreter_state` gains `threads_main` (after `threads_head`) and
/// `code_object_generation`, `tlbc_generation` (at its end); `interpreter_frame` gains
/// `stackpointer`, `tlbc_index`; `code_object` gains `co_tlbc`.
pub const PY314: DebugFields = DebugFields {
    runtime_size: 0,
    runtime_finalizing: 1,
    runtime_interpreters_head: 2,
    interp_size: 3,
    interp_threads_head: 6,
    interp_ceval_gil: 12,
    tstate_size: 19,
    tstate_next: 21,
    tstate_current_frame: 23,
    tstate_thread_id: 24,
    tstate_native_thread_id: 25,
    frame_size: 28,
    frame_previous: 29,
    frame_executable: 30,
    frame_instr_ptr: 31,
    frame_owner: 33,
    code_size: 36,
    code_filename: 37,
    code_qualname: 39,
    code_linetable: 40,
    code_firstlineno: 41,
    code_argcount: 42,
    code_code_adaptive: 45,
};

/// 3.15: `thread_state` gains `base_frame`, `last_profiled_frame` and one more before
/// `thread_id`, and `current_exception`, `exc_state`, `holds_gil`, `gil_requested` after
/// `status`; an `err_stackitem` group follows it.
pub const PY315: DebugFields = DebugFields {
    tstate_thread_id: 27,
    tstate_native_thread_id: 28,
    frame_size: 36,
    frame_previous: 37,
    frame_executable: 38,
    frame_instr_ptr: 39,
    frame_owner: 41,
    code_size: 44,
    code_filename: 45,
    code_qualname: 47,
    code_linetable: 48,
    code_firstlineno: 49,
    code_argcount: 50,
    code_code_adaptive: 53,
    ..PY314
};

impl DebugFields {
    /// How many u64 fields must be read to cover every index.
    pub fn count(&self) -> usize {
        let all = [
            self.runtime_size,
            self.runtime_finalizing,
            self.runtime_interpreters_head,
            self.interp_size,
            self.interp_threads_head,
            self.interp_ceval_gil,
            self.tstate_size,
            self.tstate_next,
            self.tstate_current_frame,
            self.tstate_thread_id,
            self.tstate_native_thread_id,
            self.frame_size,
            self.frame_previous,
            self.frame_executable,
            self.frame_instr_ptr,
            self.frame_owner,
            self.code_size,
            self.code_filename,
            self.code_qualname,
            self.code_linetable,
            self.code_firstlineno,
            self.code_argcount,
            self.code_code_adaptive,
        ];
        all.iter().map(|&i| usize::from(i) + 1).max().unwrap_or(0)
    }
}
