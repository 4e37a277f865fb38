//! Starting blockprobe: [`Blockprobe`], the one builder of its command lines.

use std::ffi::OsStr;
use std::ops::{Deref, DerefMut};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, ExitStatus};

use crate::{CtxRef, Line, Proc, Python, blockprobe_bin, python_env, script};

/// The stall threshold every test passes to blockprobe.
pub const THRESHOLD: &str = "10ms";

/// What `setpriv` options make of blockprobe's privileges: another user (nobody) and the
/// capabilities it keeps or loses across the exec.
pub const AS_NOBODY: &[&str] = &["--reuid=65534", "--regid=65534", "--clear-groups"];

/// The command line of one blockprobe invocation (the binary under test,
/// [`blockprobe_bin`]). It derefs to its [`Command`] for more arguments, environment and
/// streams; start it with [`CtxRef::spawn`], [`Blockprobe::output`] or
/// [`Blockprobe::spawn_as`].
pub struct Blockprobe(Command);

impl Blockprobe {
    /// `blockprobe ARGS`.
    pub fn new<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Blockprobe {
        let mut cmd = Command::new(blockprobe_bin());
        cmd.args(args);
        Blockprobe(cmd)
    }

    /// `blockprobe trace` with JSON lines and the tests' threshold, on `pids` (none: every
    /// Python process on the host).
    pub fn trace(pids: &[u32]) -> Blockprobe {
        let mut bp = Blockprobe::new(["trace", "--format", "jsonl", "--threshold", THRESHOLD]);
        for pid in pids {
            bp.arg("-p").arg(pid.to_string());
        }
        bp
    }

    /// `blockprobe run` of `script` on `python` with JSON lines, the tests' threshold
    /// (unless `opts` sets one) and the scripts' environment ([`python_env`], then
    /// `python`'s). The script runs its scenario at once; see [`Blockprobe::steady`].
    pub fn run(python: &Python, script: &Path, script_args: &[&str], opts: &[&str]) -> Blockprobe {
        let mut bp = Blockprobe::new(["run", "--format", "jsonl"]);
        if !opts.contains(&"--threshold") {
            bp.args(["--threshold", THRESHOLD]);
        }
        bp.args(opts)
            .arg("--")
            .arg(&python.path)
            .arg(script)
            .args(script_args);
        python_env(&mut bp);
        bp.envs(python.env.iter().map(|(k, v)| (k, v)));
        bp
    }

    /// `blockprobe run` of exec_into.py on `python`, waiting for `GO` ([`Blockprobe::steady`]),
    /// then exec'ing with its loop off-await into `python` running the script `next`.
    pub fn run_exec_into(python: &Python, next: &Path) -> Blockprobe {
        let interpreter = python.path.to_string_lossy();
        let next = next.to_string_lossy();
        Blockprobe::run(
            python,
            &script("exec_into.py"),
            &["--", &interpreter, &next],
            &[],
        )
        .steady()
    }

    /// For a test about a steady state: the script waits for `GO` before its scenario
    /// (`BPTEST_GO=1`).
    pub fn steady(mut self) -> Blockprobe {
        crate::python::wait_for_go(&mut self);
        self
    }

    /// Runs it to completion (bounded by [`crate::TIMEOUT`]) and returns its exit status,
    /// stdout and stderr.
    #[track_caller]
    pub fn output(mut self, ctx: &CtxRef, name: &str) -> (ExitStatus, String, String) {
        let proc = ctx.spawn(name, &mut self);
        proc.close_stdin();
        let status = proc.wait_exit();
        let stdout = proc
            .lines()
            .iter()
            .map(|line| match line {
                Line::Event(_, text) | Line::Garbled(text) | Line::Text(text) => text.clone(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        (status, stdout, proc.stderr())
    }

    /// Starts it through `setpriv SETPRIV… --`, from a copy of the binary any user may run
    /// (the build's directory may be private), in a temporary directory that must live as
    /// long as the process.
    pub fn spawn_as(self, ctx: &CtxRef, name: &str, setpriv: &[&str]) -> (tempfile::TempDir, Proc) {
        let dir = tempfile::tempdir().expect("temporary directory");
        let bin = dir.path().join("blockprobe");
        let copied = std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .and_then(|()| std::fs::copy(self.get_program(), &bin))
            .and_then(|_| std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)));
        if let Err(err) = copied {
            ctx.fail(format!(
                "cannot copy blockprobe to {}: {err}",
                bin.display()
            ));
        }
        let bp = ctx.spawn(
            name,
            Command::new("setpriv")
                .args(setpriv)
                .arg("--")
                .arg(&bin)
                .args(self.get_args()),
        );
        (dir, bp)
    }
}

impl Deref for Blockprobe {
    type Target = Command;

    fn deref(&self) -> &Command {
        &self.0
    }
}

impl DerefMut for Blockprobe {
    fn deref_mut(&mut self) -> &mut Command {
        &mut self.0
    }
}
