//! `cargo xtask lint`: rustfmt and clippy, warnings as errors.

use anyhow::Result;

use crate::{Workspace, checked};

impl Workspace {
    /// rustfmt check, clippy on the host crates and on the eBPF crate for the BPF target;
    /// warnings are errors.
    pub fn lint(&self) -> Result<()> {
        checked(self.cargo().args(["fmt", "--all", "--check"]))?;
        checked(self.cargo().args([
            "clippy",
            "--workspace",
            "--exclude",
            "blockprobe-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
        // The eBPF crate for its real target. (Not on the host, above: built in one
        // invocation with blockprobe, its blockprobe-common dependency gets the `user`
        // feature, hence aya and std, whose panic handler clashes with the crate's own.)
        checked(self.cargo_nightly().args([
            "clippy",
            "-p",
            "blockprobe-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ]))
    }
}
