//! The interpreters the scenarios run on, and the macro that runs a scenario on each.

use std::path::{Path, PathBuf};
use std::process::Command;

use blockprobe_pythons::{Interpreter, MATRIX, Source};

use crate::pydeps;

/// A Python interpreter the scenarios run on.
#[derive(Clone, Debug)]
pub struct Python {
    /// For messages: "pyenv 3.11.7", "debian 3.11".
    pub label: String,
    pub path: PathBuf,
    /// Extra environment for the scripts (after [`python_env`]'s).
    pub env: Vec<(String, String)>,
}

impl Python {
    /// A test interpreter of [`blockprobe_pythons::MATRIX`]; fails the test unless it is
    /// installed.
    #[track_caller]
    pub fn of(interpreter: &Interpreter) -> Python {
        let python = Python {
            label: interpreter.label(),
            path: interpreter.path(),
            env: Vec::new(),
        };
        python.check();
        python
    }

    /// The matrix interpreter `id` (`pyenv_3_11`), unless it may be skipped (see
    /// [`blockprobe_pythons::require`], which prints why).
    #[track_caller]
    pub fn matrix(id: &str) -> Option<Python> {
        let interpreter = blockprobe_pythons::by_id(id);
        blockprobe_pythons::require(interpreter).map(|_| Python::of(interpreter))
    }

    /// The pyenv build of `version` (`"3.11.7"`), under `$PYENV_ROOT`.
    #[track_caller]
    pub fn pyenv(version: &str) -> Python {
        Python::find(|i| i.source == Source::Pyenv && i.version == version)
    }

    /// Debian's own (stripped) `/usr/bin/python3.11`.
    #[track_caller]
    pub fn debian() -> Python {
        Python::find(|i| matches!(i.source, Source::System(_)))
    }

    /// Debian sid's `python3.X` unpacked by `cargo xtask pythons` (3.14, 3.15) into
    /// `$BLOCKPROBE_PYTHONS` (default `~/.cache/blockprobe/pythons`).
    #[track_caller]
    pub fn debian_sid(minor: &str) -> Python {
        Python::find(|i| i.source == Source::Sid && i.minor() == minor)
    }

    /// The one matrix interpreter `which` picks.
    #[track_caller]
    fn find(which: impl Fn(&Interpreter) -> bool) -> Python {
        let found: Vec<&Interpreter> = MATRIX.iter().filter(|i| which(i)).collect();
        assert_eq!(found.len(), 1, "not one test interpreter: {found:?}");
        Python::of(found[0])
    }

    /// The same interpreter with bptest's loops run by uvloop (`BPTEST_UVLOOP=1`): from
    /// `target/pyuvloop/3.X` (PyPI, `cargo xtask pythons`) when there, else the
    /// interpreter's own (Debian sid's `python3-uvloop` for 3.14).
    pub fn with_uvloop(self) -> Python {
        self.with_uvloop_mode("1", " + uvloop")
    }

    /// [`Python::with_uvloop`], the main loop run by `run_until_complete` from the script's
    /// own frame (`BPTEST_UVLOOP=by-hand`), as servers start uvloop.
    pub fn with_uvloop_by_hand(self) -> Python {
        self.with_uvloop_mode("by-hand", " + uvloop by hand")
    }

    /// Whether bptest's loops are uvloop loops ([`Python::with_uvloop`],
    /// [`Python::with_uvloop_by_hand`]).
    pub fn runs_uvloop(&self) -> bool {
        self.env.iter().any(|(k, _)| k == "BPTEST_UVLOOP")
    }

    fn with_uvloop_mode(mut self, mode: &str, label: &str) -> Python {
        self.env.push(("BPTEST_UVLOOP".into(), mode.into()));
        self.label.push_str(label);
        self.with_packages("pyuvloop", &["uvloop"], "cargo xtask pythons")
    }

    /// The same interpreter with the real servers' packages (FastAPI, uvicorn with
    /// uvloop and httptools, gunicorn, aiohttp) from `target/pyservers/3.X`
    /// (`cargo xtask setup`, for pyenv 3.11 and 3.13); fails the test without them.
    pub fn with_servers(self) -> Python {
        let modules = ["fastapi", "uvicorn", "gunicorn", "aiohttp", "uvloop"];
        self.with_packages("pyservers", &modules, "cargo xtask setup")
    }

    /// Puts `target/<dir>/3.X` on PYTHONPATH after the pydeps, when there, and checks
    /// that `modules` import (`how` installs them).
    fn with_packages(mut self, dir: &str, modules: &[&str], how: &str) -> Python {
        let (major, minor) = self.major_minor();
        let dir = pydeps()
            .parent()
            .expect("pydeps has a parent")
            .join(format!("{dir}/{major}.{minor}"));
        if dir.is_dir() {
            let path = format!("{}:{}", pydeps().display(), dir.display());
            self.env.push(("PYTHONPATH".into(), path));
        }
        let out = self
            .command(Path::new("-c"))
            .arg(format!("import {}", modules.join(", ")))
            .output()
            .expect("interpreter runs");
        assert!(
            out.status.success(),
            "{} missing for {} (run `{how}`): {}",
            modules.join(", "),
            self.label,
            String::from_utf8_lossy(&out.stderr)
        );
        self
    }

    fn check(&self) {
        assert!(
            self.path.is_file(),
            "interpreter {} not found at {}",
            self.label,
            self.path.display()
        );
    }

    /// The kernel's command name for a process of this interpreter.
    pub fn comm(&self) -> String {
        let name = self
            .path
            .file_name()
            .expect("interpreter has a file name")
            .to_string_lossy();
        name.chars().take(15).collect()
    }

    /// The interpreter's version, as `platform.python_version()` says ("3.11.7").
    pub fn version(&self) -> String {
        let out = Command::new(&self.path)
            .args(["-c", "import platform; print(platform.python_version())"])
            .output()
            .expect("interpreter runs");
        assert!(out.status.success(), "{} failed to start", self.label);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `(major, minor)` of [`Python::version`].
    pub fn major_minor(&self) -> (u32, u32) {
        let version = self.version();
        let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
    }

    /// The syscall `time.sleep()` blocks in: `clock_nanosleep` since 3.11, `select()`
    /// (glibc's `pselect6`) before.
    pub fn sleep_syscall(&self) -> &'static str {
        self.sleep_syscall_with_nr().0
    }

    /// [`Self::sleep_syscall`]'s number on x86_64, as `/proc/PID/syscall` shows it.
    pub fn sleep_syscall_nr(&self) -> u32 {
        self.sleep_syscall_with_nr().1
    }

    fn sleep_syscall_with_nr(&self) -> (&'static str, u32) {
        if self.major_minor() >= (3, 11) {
            ("clock_nanosleep", 230)
        } else {
            ("pselect6", 270)
        }
    }

    /// A command that runs a scenario script on this interpreter, with the scripts'
    /// environment (see [`python_env`]), for a test about a steady state: the script
    /// waits for `GO` before its scenario (`BPTEST_GO=1`).
    pub fn command(&self, script: &Path) -> Command {
        let mut cmd = self.command_at_once(script);
        wait_for_go(&mut cmd);
        cmd
    }

    /// [`Python::command`] for a script that runs its scenario at once, without waiting
    /// for the tracer.
    pub fn command_at_once(&self, script: &Path) -> Command {
        let mut cmd = Command::new(&self.path);
        cmd.arg(script);
        python_env(&mut cmd);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }
}

/// The environment for the scenario scripts (also set on blockprobe under `run`, whose
/// child inherits it): `requests` on PYTHONPATH, no `__pycache__` in the source tree.
pub fn python_env(cmd: &mut Command) {
    cmd.env("PYTHONPATH", pydeps())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("PYTHONHOME")
        .env_remove("PYTHONASYNCIODEBUG");
}

/// Generates one test per matrix interpreter for each scenario function
/// `fn name(&Python)`: `name::pyenv_3_11`, `name::debian_3_14`, … (see
/// [`blockprobe_pythons::MATRIX`]). Tests of full-matrix interpreters skip, saying so,
/// when theirs is missing and the full matrix is off.
#[macro_export]
macro_rules! python_matrix {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            $crate::with_matrix_ids!(matrix_tests!($scenario;));
        }
    )*};
}

/// Calls this crate's `callback!(args… ids…)` with the ids of
/// [`blockprobe_pythons::MATRIX`] as identifiers (a unit test checks that they agree).
#[doc(hidden)]
#[macro_export]
macro_rules! with_matrix_ids {
    ($callback:ident!($($args:tt)*)) => {
        $crate::$callback! {
            $($args)* pyenv_3_11 debian_3_11 debian_3_14 pyenv_3_9 pyenv_3_10 pyenv_3_12
            pyenv_3_13 debian_3_15
        }
    };
}

/// One test of `scenario` per id.
#[doc(hidden)]
#[macro_export]
macro_rules! matrix_tests {
    ($scenario:ident; $($id:ident)*) => {$(
        #[test]
        fn $id() {
            if let Some(python) = $crate::Python::matrix(stringify!($id)) {
                super::$scenario(&python);
            }
        }
    )*};
}

/// The ids as strings.
#[doc(hidden)]
#[macro_export]
macro_rules! matrix_id_strings {
    ($($id:ident)*) => { &[$(stringify!($id)),*] };
}

/// The ids `python_matrix!` generates tests for, in order.
pub const MATRIX_TEST_IDS: &[&str] = with_matrix_ids!(matrix_id_strings!());

/// Makes the scenario script `cmd` starts wait for `GO` on stdin before its scenario
/// (`BPTEST_GO=1`): for a test about a steady state, which says `GO` once the tracer is
/// ready.
pub fn wait_for_go(cmd: &mut Command) {
    cmd.env("BPTEST_GO", "1");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_matrix_tests_are_those_of_the_interpreter_list() {
        let ids: Vec<&str> = MATRIX.iter().map(|i| i.id).collect();
        assert_eq!(MATRIX_TEST_IDS, ids);
    }
}
