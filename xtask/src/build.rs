//! `cargo xtask build` and `cargo xtask run`: blockprobe built, and run.

use std::ffi::OsString;
use std::os::unix::process::CommandExt as _;
use std::process::Command;

use anyhow::{Result, anyhow};

use crate::{Workspace, checked};

impl Workspace {
    /// `cargo build -p blockprobe`, with the release profile when `release`.
    pub fn build(&self, release: bool) -> Result<()> {
        let mut cmd = self.cargo();
        cmd.args(["build", "-p", "blockprobe"]);
        if release {
            cmd.arg("--release");
        }
        checked(&mut cmd)
    }

    /// Runs the release or debug binary with `args` in place of xtask (`exec`): signals,
    /// stdin and the exit code are blockprobe's. Returns only on failure.
    pub fn exec(&self, release: bool, args: &[OsString]) -> anyhow::Error {
        let bin = self.binary(release);
        let mut cmd = Command::new(&bin);
        cmd.args(args);
        // Cargo's own variables for xtask are no business of blockprobe's or of the
        // program it traces.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("CARGO_") {
                cmd.env_remove(key);
            }
        }
        let err = cmd.exec();
        anyhow!("cannot run {}: {err}", bin.display())
    }
}
