//! Knowledge of CPython: finding a process's interpreter, its version and layout,
//! configuring the BPF stack walk, and symbolizing the frames BPF captured.
//!
//! Public surface (used by the rest of blockprobe):
//! - `PythonProcess::inspect(pid) -> anyhow::Result<Inspection>`
//! - `PythonProcess::walk_config(&self) -> blockprobe_common::config::PyProcess`
//! - `PythonProcess::pid(&self)`, `PythonProcess::version(&self) -> version::Version`
//! - `PythonProcess::maps(&self) -> &maps::Maps`: the mappings its inspection read, which the
//!   finders of `running_loop` and `uvloop` look through at attach
//! - `PythonProcess::symbolize(&mut self, Vec<RawStack>) -> Result<Symbolized, NoAnswer>`,
//!   `walk_now`, `threads_now` (tids, thread states, stacks now), `stack_runs`,
//!   `running_loop_is_selector_loop`: reads of its memory, on its reader thread within
//!   `READ_DEADLINE`
//! - `running_loop::find`, `uvloop::importable`, `uvloop::mapped`: where to probe a
//!   loop's runs in a process's files, each a `probe_site::ProbeSite` (the file held
//!   open); they read its files, so the session runs them within a deadline
//! - `origin::classify(file) -> origin::Origin`
//! - `survey::survey(pid) -> anyhow::Result<survey::Survey>` (for `blockprobe check`)

mod asyncio_debug;
mod debug_fields;
mod debug_offsets;
mod elf;
mod header_offsets;
mod layout;
mod linetable;
mod mapped_file;
pub mod maps;
pub mod memory;
pub mod origin;
pub mod probe_site;
mod process;
pub mod running_loop;
pub mod survey;
mod symbolize;
mod tls;
pub mod uvloop;
pub mod version;

#[cfg(test)]
mod live_tests;

pub use process::{Inspection, PythonProcess, READ_DEADLINE, Symbolized};
