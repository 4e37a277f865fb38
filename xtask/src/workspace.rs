//! The workspace xtask works on: where it is, where its build goes, how to run cargo.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result};

/// The workspace: its root, its target directory and the cargo that runs xtask.
pub struct Workspace {
    pub root: PathBuf,
    pub target: PathBuf,
    /// The cargo that runs xtask (stable toolchain).
    cargo: OsString,
}

impl Workspace {
    /// The workspace xtask was built in, and its target directory (`$CARGO_TARGET_DIR`,
    /// else `target/`).
    pub fn locate() -> Result<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask has no parent directory")?
            .to_path_buf();
        let target = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(dir) => {
                let dir = PathBuf::from(dir);
                if dir.is_absolute() {
                    dir
                } else {
                    std::env::current_dir()?.join(dir)
                }
            }
            None => root.join("target"),
        };
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        Ok(Self {
            root,
            target,
            cargo,
        })
    }

    /// Puts `$CARGO_HOME/bin` on PATH for everything xtask starts: that is where
    /// `cargo install` puts bpf-linker, and aya-build finds it through PATH.
    pub fn extend_path(&self) -> Result<()> {
        let bin = cargo_home().join("bin");
        let path = std::env::var_os("PATH").unwrap_or_default();
        if std::env::split_paths(&path).any(|p| p == bin) {
            return Ok(());
        }
        let joined = std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(&path)))
            .context("cannot extend PATH")?;
        // SAFETY: xtask is single-threaded; nothing reads the environment concurrently.
        unsafe { std::env::set_var("PATH", joined) };
        Ok(())
    }

    /// `cargo …` (the toolchain that runs xtask) in the workspace root.
    pub fn cargo(&self) -> Command {
        let mut cmd = Command::new(&self.cargo);
        cmd.current_dir(&self.root);
        cmd
    }

    /// `cargo +nightly …` through the rustup proxy (the `CARGO` xtask runs under is the
    /// stable toolchain's own binary, which does not understand `+toolchain`).
    pub fn cargo_nightly(&self) -> Command {
        let mut cmd = Command::new("cargo");
        cmd.arg("+nightly").current_dir(&self.root);
        cmd
    }

    /// The blockprobe binary of the release or the debug build.
    pub fn binary(&self, release: bool) -> PathBuf {
        self.target
            .join(if release { "release" } else { "debug" })
            .join("blockprobe")
    }

    /// Where setup installs the tests' Python dependencies.
    pub fn pydeps(&self) -> PathBuf {
        self.target.join("pydeps")
    }
}

/// `$CARGO_HOME`, else `~/.cargo`.
fn cargo_home() -> PathBuf {
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        return home.into();
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".cargo")
}
