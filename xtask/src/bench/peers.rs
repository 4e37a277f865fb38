//! The peer tools blockprobe is compared with, and the workloads' Python packages,
//! installed once (idempotently) under `target/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

/// PyPI packages of the workloads and of the in-process peers, for pyenv's 3.11.
const BENCH_PY_DEPS: &[&str] = &[
    "aiohttp",
    "py-spy",
    "aiodebug",
    "asyncio-event-loop-monitor",
];

/// blocksnoop and the Austin it samples with (pinned: the bench compares versions).
/// blocksnoop needs Python 3.12+ for itself.
const BLOCKSNOOP: &[&str] = &["blocksnoop==0.11.1", "austin-dist==4.0.0"];

/// Where the peers live.
pub struct Peers {
    /// The workloads' and in-process peers' packages (`PYTHONPATH`).
    pub deps: PathBuf,
    /// blocksnoop's virtual environment.
    pub blocksnoop: PathBuf,
}

impl Peers {
    /// Installs what is missing.
    pub fn ensure(target: &Path) -> Result<Self> {
        let peers = Peers {
            deps: target.join("benchdeps"),
            blocksnoop: target.join("blocksnoop"),
        };
        // pip_install moves the directory into place only once complete.
        if !peers.deps.is_dir() {
            crate::pip_install(&crate::pyenv_311(), &peers.deps, BENCH_PY_DEPS, &[])?;
        }
        peers.ensure_blocksnoop()?;
        Ok(peers)
    }

    /// The `blocksnoop` command.
    pub fn blocksnoop_bin(&self) -> PathBuf {
        self.blocksnoop.join("bin/blocksnoop")
    }

    /// `PATH` for blocksnoop: it finds `austin` there.
    pub fn blocksnoop_path(&self) -> std::ffi::OsString {
        let mut path = self.blocksnoop.join("bin").into_os_string();
        if let Some(rest) = std::env::var_os("PATH") {
            path.push(":");
            path.push(rest);
        }
        path
    }

    /// A virtual environment of pyenv's 3.12 with blocksnoop and Austin, Austin pointed
    /// at Debian sid's glibc (austin-dist 4.0.0 needs glibc 2.38), which `cargo xtask
    /// pythons` unpacks. Done when that Austin runs, which it does only after the last
    /// step: an interrupted set-up is started afresh.
    fn ensure_blocksnoop(&self) -> Result<()> {
        let venv = &self.blocksnoop;
        if austin_runs(venv) {
            return Ok(());
        }
        if venv.exists() {
            std::fs::remove_dir_all(venv)
                .with_context(|| format!("cannot remove {}", venv.display()))?;
        }
        let python = blockprobe_pythons::by_id("pyenv_3_12").path();
        crate::checked(Command::new(&python).arg("-m").arg("venv").arg(venv))?;
        crate::checked(
            Command::new(venv.join("bin/pip"))
                .args([
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "--no-input",
                ])
                .args(BLOCKSNOOP)
                .env("PIP_ROOT_USER_ACTION", "ignore"),
        )?;
        let austin = venv.join("bin/austin");
        crate::pythons::use_glibc_of(&blockprobe_pythons::sid_root(), &austin)?;
        if !austin_runs(venv) {
            bail!("{} does not run, even with sid's glibc", austin.display());
        }
        Ok(())
    }
}

/// Whether the Austin of the environment `venv` runs.
fn austin_runs(venv: &Path) -> bool {
    Command::new(venv.join("bin/austin"))
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}
