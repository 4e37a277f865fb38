//! What `blockprobe check` says of a running process: is it Python, which version, and
//! can blockprobe trace it.

use super::elf::{self, Discovery};
use super::maps::Maps;
use super::memory::ProcessMemory;
use super::process::{Inspection, PythonProcess, detect_version};
use super::version::Version;

/// A process as a survey of the host sees it.
#[derive(Debug)]
pub enum Survey {
    /// Not a Python process.
    NotPython,
    /// A python executable whose libpython is not loaded yet.
    Starting,
    /// A Python process whose interpreter was found, but not its version: why.
    VersionUnreadable(anyhow::Error),
    /// A Python process.
    Python {
        /// Its interpreter's version.
        version: Version,
        /// Whether blockprobe can trace it.
        support: Support,
    },
}

/// Whether blockprobe can trace a Python process.
#[derive(Debug)]
pub enum Support {
    /// Yes: inspected, ready to be traced.
    Supported,
    /// Its version is supported, but it cannot be inspected yet (starting, or its only
    /// thread holds the GIL): tracing retries.
    NotReady(String),
    /// No: why (an unsupported version or build, an unexpected layout).
    Unsupported(String),
}

/// Surveys process `pid`. Fails when its memory map, or the interpreter file it maps,
/// cannot be read.
pub fn survey(pid: u32) -> anyhow::Result<Survey> {
    let maps = Maps::read(pid)?;
    let binary = match elf::discover(pid, &maps)? {
        Discovery::Absent => return Ok(Survey::NotPython),
        Discovery::Loading => return Ok(Survey::Starting),
        Discovery::Found(binary) => binary,
    };
    let version = match detect_version(&ProcessMemory::new(pid), &binary) {
        Ok(version) => version,
        Err(e) => return Ok(Survey::VersionUnreadable(e)),
    };
    let support = match PythonProcess::inspect_found(pid, maps, &binary, version) {
        Ok(Inspection::Ready(_)) => Support::Supported,
        Ok(Inspection::NotReady(why)) => Support::NotReady(why),
        Ok(Inspection::NotPython) => return Ok(Survey::NotPython),
        Err(e) => Support::Unsupported(format!("{e:#}")),
    };
    Ok(Survey::Python { version, support })
}
