//! `cargo xtask dist`: the one file an SRE copies onto a host. A static x86_64 musl build
//! of blockprobe (the BPF object embedded, symbols stripped), packed with the README in
//! `dist/blockprobe-VERSION-x86_64-unknown-linux-musl.tar.gz`, next to its `.sha256`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

use crate::{Workspace, capture, checked, fmt_duration};

/// The target of the static binary.
pub const TARGET: &str = "x86_64-unknown-linux-musl";
/// The cargo profile it is built with: release, stripped (see the workspace manifest).
const PROFILE: &str = "dist";
/// The version of blockprobe (the workspace's, which xtask shares).
const VERSION: &str = env!("CARGO_PKG_VERSION");
/// ELF program header type of the dynamic loader's path: a static binary has none.
const PT_INTERP: u32 = 3;

/// What `dist` made.
pub struct Dist {
    /// The directory packed: `dist/blockprobe-VERSION-TARGET/` (also an image's context).
    pub staging: PathBuf,
    /// The tarball (its checksum is the same path plus `.sha256`).
    pub tarball: PathBuf,
}

impl Workspace {
    /// `dist/` in the workspace (git-ignored).
    pub fn dist_dir(&self) -> PathBuf {
        self.root.join("dist")
    }

    /// The static binary's path in the target directory.
    pub fn static_binary(&self) -> PathBuf {
        self.target.join(TARGET).join(PROFILE).join("blockprobe")
    }

    /// Builds the static binary, checks it, and packs it with its checksum; prints the
    /// binary's size.
    pub fn dist(&self) -> Result<Dist> {
        let started = Instant::now();
        ensure_rust_target()?;
        checked(self.cargo().args([
            "build",
            "-p",
            "blockprobe",
            "--profile",
            PROFILE,
            "--target",
            TARGET,
        ]))?;
        let binary = self.static_binary();
        let bytes =
            std::fs::read(&binary).with_context(|| format!("reading {}", binary.display()))?;
        if has_program_header(&bytes, PT_INTERP)? {
            bail!(
                "{} asks for a dynamic loader: not a static binary",
                binary.display()
            );
        }
        let version = capture(Command::new(&binary).arg("--version"))?;
        if !version.contains(VERSION) || !version.contains(TARGET) {
            bail!("{} --version says {version:?}", binary.display());
        }
        let name = format!("blockprobe-{VERSION}-{TARGET}");
        let dist = self.dist_dir();
        let staging = dist.join(&name);
        if staging.exists() {
            std::fs::remove_dir_all(&staging)
                .with_context(|| format!("removing {}", staging.display()))?;
        }
        std::fs::create_dir_all(&staging)
            .with_context(|| format!("creating {}", staging.display()))?;
        for (from, to) in [
            (binary.as_path(), "blockprobe"),
            (&self.root.join("README.md"), "README.md"),
        ] {
            std::fs::copy(from, staging.join(to))
                .with_context(|| format!("copying {} to {}", from.display(), staging.display()))?;
        }
        let tarball = dist.join(format!("{name}.tar.gz"));
        self.pack(&dist, &name, &tarball)?;
        let tarball_name = format!("{name}.tar.gz");
        let sum = capture(
            Command::new("sha256sum")
                .arg(&tarball_name)
                .current_dir(&dist),
        )?;
        let checksum = dist.join(format!("{tarball_name}.sha256"));
        std::fs::write(&checksum, format!("{sum}\n"))
            .with_context(|| format!("writing {}", checksum.display()))?;
        eprintln!("dist: {version}");
        eprintln!(
            "dist: binary {} bytes ({:.1} MiB, static, stripped), tarball {} bytes, in {}",
            bytes.len(),
            bytes.len() as f64 / f64::from(1 << 20),
            std::fs::metadata(&tarball)?.len(),
            fmt_duration(started.elapsed())
        );
        eprintln!(
            "dist: wrote {} and {}",
            tarball.display(),
            checksum.display()
        );
        Ok(Dist { staging, tarball })
    }

    /// Packs `dir/name` into `tarball`, reproducibly: sorted names, root ownership, the
    /// commit's time as every file's mtime, no time stamp in the gzip header.
    fn pack(&self, dir: &Path, name: &str, tarball: &Path) -> Result<()> {
        let mtime = capture(
            Command::new("git")
                .args(["log", "-1", "--format=%ct"])
                .current_dir(&self.root),
        )
        .unwrap_or_else(|_| "0".into());
        let tar = tarball.with_extension("");
        checked(
            Command::new("tar")
                .args([
                    "--sort=name",
                    "--owner=0",
                    "--group=0",
                    "--numeric-owner",
                    &format!("--mtime=@{mtime}"),
                    "-cf",
                ])
                .arg(&tar)
                .arg(name)
                .current_dir(dir),
        )?;
        checked(Command::new("gzip").args(["-n", "-9", "-f"]).arg(&tar))
    }
}

/// Installs the musl target's standard library with rustup when missing.
fn ensure_rust_target() -> Result<()> {
    let installed = capture(Command::new("rustup").args(["target", "list", "--installed"]))
        .context("rustup is needed to add the musl target")?;
    if !installed.lines().any(|t| t.trim() == TARGET) {
        checked(Command::new("rustup").args(["target", "add", TARGET]))?;
    }
    Ok(())
}

/// Whether the 64-bit little-endian ELF file `elf` has a program header of type `kind`.
fn has_program_header(elf: &[u8], kind: u32) -> Result<bool> {
    let field = |at: usize, len: usize| -> Result<u64> {
        let bytes = elf.get(at..at + len).context("truncated ELF file")?;
        Ok(bytes
            .iter()
            .rev()
            .fold(0u64, |v, &b| (v << 8) | u64::from(b)))
    };
    if elf.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        bail!("not a 64-bit little-endian ELF file");
    }
    let (offset, size, count) = (field(0x20, 8)?, field(0x36, 2)?, field(0x38, 2)?);
    for i in 0..count {
        let at = usize::try_from(offset + i * size)?;
        if field(at, 4)? == u64::from(kind) {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loader's path is found in a dynamic executable (xtask itself) and the check
    /// refuses what is not ELF.
    #[test]
    fn tells_dynamic_executables() {
        let own = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(has_program_header(&own, PT_INTERP).unwrap());
        assert!(!has_program_header(&own, 0x7fff_ffff).unwrap());
        assert!(has_program_header(b"#!/bin/sh\n", PT_INTERP).is_err());
        assert!(has_program_header(&own[..0x30], PT_INTERP).is_err());
    }
}
