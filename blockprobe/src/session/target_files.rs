//! Reads of a traced process's files from the event pump: its command line and
//! environment (which the kernel reads from its memory), the files its loops run from
//! (its `_asyncio` module, uvloop's). Each look runs on a thread of its own, waited for at
//! most [`FILES_DEADLINE`] ([`deadline::run`]), because a file may sit on a file system
//! whose daemon never answers; a look that misses it is a warning naming the pid and what
//! was not read, counted as lost ([`FILE_TIMEOUT`]), and tracing goes on without it.
//!
//! `/proc/PID/stat`, `status`, `comm`, `maps` and `task/TID/syscall`, read on the pump,
//! are the kernel's own records of the process: none reads its memory pages or files.

use std::collections::HashSet;
use std::time::Duration;

use super::Session;
use super::losses::FILE_TIMEOUT;
use crate::{
    deadline,
    host::{self, IdentityOptions},
    python::{
        PythonProcess,
        maps::Maps,
        probe_site::ProbeSite,
        running_loop,
        uvloop::{self, MappedModule},
    },
    report::ProcessInfo,
    session::sink::Status,
};

/// The longest a look at a process's files may take: a few small files read, and the
/// headers and symbol tables of a few ELF files (milliseconds, seconds on a host whose
/// CPUs are shared by hundreds of busy processes).
const FILES_DEADLINE: Duration = Duration::from_secs(5);

/// What attaching reads of a process's files.
pub(super) struct AttachFiles {
    /// What the report says of the process (its command line, working directory,
    /// cgroup).
    pub(super) info: ProcessInfo,
    /// asyncio's `_set_running_loop` in its files.
    pub(super) asyncio: running_loop::Found,
    /// `uv_run` in the uvloop modules it may import.
    pub(super) importable_uvloop: Vec<ProbeSite>,
    /// The uvloop modules it maps.
    pub(super) mapped_uvloop: Vec<MappedModule>,
}

impl AttachFiles {
    /// Reads what attaching to process `pid` (`python`, named `comm`) needs of its files,
    /// labelled as `identity` says; files (device, inode) in `known_asyncio` were looked
    /// at already.
    fn read(
        pid: u32,
        python: (Maps, String, crate::python::version::Version),
        comm: String,
        identity: &IdentityOptions,
        known_asyncio: &HashSet<(u64, u64)>,
    ) -> Self {
        let (maps, binary, version) = python;
        AttachFiles {
            info: host::process_info(identity, pid, comm, version.to_string()),
            asyncio: running_loop::find(pid, &maps, &binary, version, known_asyncio),
            importable_uvloop: uvloop::importable(pid, &binary, version),
            mapped_uvloop: uvloop::mapped(pid, &maps).unwrap_or_default(),
        }
    }
}

impl Session {
    /// Reads what attaching to traced process `pid` (`python`, named `comm`) needs of its
    /// files; on a miss, what is known without them: its command line unknown (empty),
    /// no file of its loops found.
    pub(super) fn read_attach_files(
        &mut self,
        pid: u32,
        python: &PythonProcess,
        comm: &str,
    ) -> anyhow::Result<AttachFiles> {
        let identity = self.identity.clone();
        let known = self.asyncio_files.clone();
        let (maps, binary) = (python.maps().clone(), python.binary_path().to_owned());
        let version = python.version();
        let name = comm.to_owned();
        let read = self.read_files(
            pid,
            "its command line and the files its loops run from",
            "its command line is unknown, and its loops are found only at their polls",
            move || AttachFiles::read(pid, (maps, binary, version), name, &identity, &known),
        )?;
        Ok(read.unwrap_or_else(|| AttachFiles {
            info: host::unread_process_info(
                &self.identity,
                pid,
                comm.to_owned(),
                version.to_string(),
            ),
            asyncio: running_loop::Found::default(),
            importable_uvloop: Vec::new(),
            mapped_uvloop: Vec::new(),
        }))
    }

    /// The uvloop modules traced process `pid` maps now (its mappings read anew: it may
    /// have imported uvloop since); none when it cannot be told in time.
    pub(super) fn read_mapped_uvloop(&mut self, pid: u32) -> anyhow::Result<Vec<MappedModule>> {
        let read = self.read_files(
            pid,
            "the uvloop modules it maps",
            "its uvloop loops are found only at their polls",
            move || match Maps::read(pid) {
                Ok(maps) => uvloop::mapped(pid, &maps).unwrap_or_default(),
                // Exited meanwhile: nothing to probe.
                Err(_) => Vec::new(),
            },
        )?;
        Ok(read.unwrap_or_default())
    }

    /// Runs `read`, a look at process `pid`'s files (`what` it reads), on a thread of its
    /// own; `None` when it missed [`FILES_DEADLINE`] (or was refused, too many earlier
    /// looks being hung): then one warning names the pid, what was not read and the
    /// `consequence`, and the miss is counted.
    fn read_files<T: Send + 'static>(
        &mut self,
        pid: u32,
        what: &str,
        consequence: &str,
        read: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<Option<T>> {
        let look = format!("pid {pid}: reading {what}");
        match deadline::run(&look, FILES_DEADLINE, move || Ok(read())) {
            Ok(found) => Ok(Some(found)),
            Err(e) => {
                self.unanswered_files += 1;
                self.warn_of(
                    pid,
                    format!("{e:#}: {consequence} (counted as lost, {FILE_TIMEOUT})"),
                )?;
                Ok(None)
            }
        }
    }

    /// Says `message`, about process `pid`.
    pub(super) fn warn_of(&mut self, pid: u32, message: String) -> anyhow::Result<()> {
        self.sink.status(&Status::Warning {
            pid: Some(pid),
            message,
        })
    }
}
