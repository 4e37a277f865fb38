//! A function to probe in a traced process's file, found off the event pump: the file
//! held open (checked to be a regular file when opened), its identity, and the
//! function's offset in it. The probe is attached through `/proc/self/fd/N`, so the
//! kernel probes the very file that was read, whatever its path names by then, without
//! looking the path up again (a lookup on a hung file system would wait with it).

use std::fs::File;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;

use anyhow::Context as _;

/// A function in an open file, to probe.
#[derive(Debug)]
pub struct ProbeSite {
    /// The file, open.
    file: File,
    /// Its device and inode (read when found: a `stat` of a file on a hung file system
    /// would wait on the pump).
    identity: (u64, u64),
    /// Its path as the process sees it (for messages).
    pub path: String,
    /// The function's offset in the file.
    pub offset: u64,
}

impl ProbeSite {
    /// The function at `offset` of `file`, opened as `path` (its identity read now).
    pub fn new(file: File, path: String, offset: u64) -> anyhow::Result<Self> {
        let meta = file
            .metadata()
            .with_context(|| format!("cannot stat {path}"))?;
        Ok(ProbeSite {
            identity: (meta.dev(), meta.ino()),
            file,
            path,
            offset,
        })
    }

    /// The file's device and inode: the same file however it is named.
    pub fn identity(&self) -> (u64, u64) {
        self.identity
    }

    /// A path naming the open file itself, to attach the probe to.
    pub fn attach_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }
}
