//! The Python interpreters blockprobe is tested on: the one list that the live unit tests,
//! the integration tests, `cargo xtask` and the README's support matrix all follow.
//!
//! Every interpreter is in one of two tiers. [`Tier::EveryRun`] ones (pyenv 3.11, Debian
//! 3.11, Debian sid 3.14) are needed by every test run: a test of one fails when it is
//! missing. [`Tier::FullMatrix`] ones (the other pyenv builds, sid 3.15, and pyenv 3.8 for
//! the refusal test) are the full matrix. `cargo xtask test` turns the full matrix on when
//! all of them are installed (or with `--long`) and says so to the tests through
//! [`FULL_MATRIX_ENV`]. With it on, a test of a missing interpreter fails; with it off,
//! the test prints one line saying why it skips ([`SKIP_MARK`]) and passes.

use std::io::Write as _;
use std::path::PathBuf;

/// The environment variable through which `cargo xtask test` turns the full matrix on
/// (`1`); anything else, or unset, is off.
pub const FULL_MATRIX_ENV: &str = "BLOCKPROBE_FULL_MATRIX";

/// Starts the line a test prints when it skips a missing interpreter (`cargo xtask test`
/// counts these lines).
pub const SKIP_MARK: &str = "[skipped interpreter]";

/// Whether a run needs an interpreter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    /// Needed by every run.
    EveryRun,
    /// Needed by the full matrix only.
    FullMatrix,
}

/// Where an interpreter comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A pyenv build, `$PYENV_ROOT/versions/<version>`.
    Pyenv,
    /// The system's own, at this path.
    System(&'static str),
    /// Debian sid's, unpacked by `cargo xtask pythons` into [`cache_dir`].
    Sid,
}

/// One test interpreter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interpreter {
    /// Its name in test names: `pyenv_3_11`, `debian_3_14`.
    pub id: &'static str,
    /// Its full version, as `platform.python_version()` says.
    pub version: &'static str,
    pub source: Source,
    pub tier: Tier,
}

const fn interpreter(
    id: &'static str,
    version: &'static str,
    source: Source,
    tier: Tier,
) -> Interpreter {
    Interpreter {
        id,
        version,
        source,
        tier,
    }
}

/// The interpreters every scenario of the integration tests runs on (`python_matrix!`),
/// each with a live unit test: every-run ones first.
pub const MATRIX: &[Interpreter] = &[
    interpreter("pyenv_3_11", "3.11.7", Source::Pyenv, Tier::EveryRun),
    interpreter(
        "debian_3_11",
        "3.11.2",
        Source::System("/usr/bin/python3.11"),
        Tier::EveryRun,
    ),
    interpreter("debian_3_14", "3.14.10", Source::Sid, Tier::EveryRun),
    interpreter("pyenv_3_9", "3.9.18", Source::Pyenv, Tier::FullMatrix),
    interpreter("pyenv_3_10", "3.10.13", Source::Pyenv, Tier::FullMatrix),
    interpreter("pyenv_3_12", "3.12.1", Source::Pyenv, Tier::FullMatrix),
    interpreter("pyenv_3_13", "3.13.0", Source::Pyenv, Tier::FullMatrix),
    interpreter("debian_3_15", "3.15.2", Source::Sid, Tier::FullMatrix),
];

/// The interpreter of the test that blockprobe names an unsupported version.
pub const REFUSED: Interpreter = interpreter(
    "pyenv_3_8_refused",
    "3.8.18",
    Source::Pyenv,
    Tier::FullMatrix,
);

/// Every test interpreter: [`MATRIX`] and [`REFUSED`].
pub fn all() -> impl Iterator<Item = &'static Interpreter> {
    MATRIX.iter().chain(std::iter::once(&REFUSED))
}

/// The interpreter called `id`; panics if there is none.
pub fn by_id(id: &str) -> &'static Interpreter {
    all()
        .find(|i| i.id == id)
        .unwrap_or_else(|| panic!("no test interpreter `{id}`"))
}

/// pyenv's root: `$PYENV_ROOT`, else `/root/.pyenv`.
pub fn pyenv_root() -> PathBuf {
    std::env::var_os("PYENV_ROOT").map_or_else(|| PathBuf::from("/root/.pyenv"), PathBuf::from)
}

/// Where `cargo xtask pythons` keeps the interpreters it fetches: `$BLOCKPROBE_PYTHONS`,
/// else `$XDG_CACHE_HOME/blockprobe/pythons`, else `~/.cache/blockprobe/pythons`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BLOCKPROBE_PYTHONS") {
        return dir.into();
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            PathBuf::from(home).join(".cache")
        });
    base.join("blockprobe/pythons")
}

/// Where the fetched interpreters are unpacked, like a root file system.
pub fn sid_root() -> PathBuf {
    cache_dir().join("root")
}

impl Interpreter {
    /// Its name for people, which the README's support matrix uses too: `pyenv 3.11.7`,
    /// `Debian 3.11` (the system's), `Debian sid 3.14`.
    pub fn label(&self) -> String {
        match self.source {
            Source::Pyenv => format!("pyenv {}", self.version),
            Source::System(_) => format!("Debian {}", self.minor()),
            Source::Sid => format!("Debian sid {}", self.minor()),
        }
    }

    /// `3.11` of `3.11.7`.
    pub fn minor(&self) -> &'static str {
        let mut dots = self.version.match_indices('.');
        match (dots.next(), dots.next()) {
            (Some(_), Some((second, _))) => &self.version[..second],
            _ => self.version,
        }
    }

    /// The interpreter's executable.
    pub fn path(&self) -> PathBuf {
        let exe = format!("python{}", self.minor());
        match self.source {
            Source::Pyenv => pyenv_root()
                .join("versions")
                .join(self.version)
                .join("bin")
                .join(exe),
            Source::System(path) => path.into(),
            Source::Sid => sid_root().join("usr/bin").join(exe),
        }
    }

    /// Whether its executable is there.
    pub fn is_present(&self) -> bool {
        self.path().is_file()
    }
}

/// Whether the full matrix is on: [`FULL_MATRIX_ENV`] is `1`.
pub fn full_matrix_on() -> bool {
    std::env::var_os(FULL_MATRIX_ENV).is_some_and(|v| v == "1")
}

/// The full-matrix interpreters that are not installed.
pub fn missing_full_matrix() -> Vec<&'static Interpreter> {
    all()
        .filter(|i| i.tier == Tier::FullMatrix && !i.is_present())
        .collect()
}

/// What a test of an interpreter does.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Runs: the interpreter is there.
    Run,
    /// Skips: a full-matrix interpreter is missing and the full matrix is off.
    Skip,
    /// Fails: the interpreter is missing and this run needs it.
    Fail,
}

/// What a test of an interpreter of `tier` does, when it is `present` or not, with the
/// full matrix on (`full`) or off.
pub fn decide(tier: Tier, present: bool, full: bool) -> Decision {
    match (present, tier, full) {
        (true, _, _) => Decision::Run,
        (false, Tier::FullMatrix, false) => Decision::Skip,
        (false, _, _) => Decision::Fail,
    }
}

/// For a test of `interpreter`: its path when it is there; `None` after printing one
/// [`SKIP_MARK`] line when it may be skipped ([`decide`]); panics when it must be there.
#[track_caller]
pub fn require(interpreter: &Interpreter) -> Option<PathBuf> {
    let path = interpreter.path();
    let present = path.is_file();
    let full = full_matrix_on();
    match decide(interpreter.tier, present, full) {
        Decision::Run => Some(path),
        Decision::Skip => {
            // Straight to the stdout file descriptor: the test harness captures what
            // `println!` prints in a passing test, and a skip must not look like a pass.
            let line = format!(
                "{SKIP_MARK} {}: {} not found ({FULL_MATRIX_ENV} is not 1)\n",
                interpreter.label(),
                path.display()
            );
            let _ = std::io::stdout().lock().write_all(line.as_bytes());
            None
        }
        Decision::Fail => panic!(
            "{} not found at {}{}",
            interpreter.label(),
            path.display(),
            if full {
                " (the full matrix is on: `cargo xtask pythons` fetches sid's, pyenv builds the others)"
            } else {
                " (every run needs it)"
            }
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_missing_full_matrix_interpreters_skip_and_only_without_the_full_matrix() {
        use Decision::*;
        use Tier::*;
        for full in [false, true] {
            assert_eq!(decide(EveryRun, true, full), Run);
            assert_eq!(decide(FullMatrix, true, full), Run);
            assert_eq!(decide(EveryRun, false, full), Fail);
        }
        assert_eq!(decide(FullMatrix, false, false), Skip);
        assert_eq!(decide(FullMatrix, false, true), Fail);
    }

    #[test]
    fn every_run_needs_pyenv_and_debian_3_11_and_sid_3_14() {
        let every: Vec<&str> = all()
            .filter(|i| i.tier == Tier::EveryRun)
            .map(|i| i.id)
            .collect();
        assert_eq!(every, ["pyenv_3_11", "debian_3_11", "debian_3_14"]);
        assert_eq!(by_id("debian_3_15").tier, Tier::FullMatrix);
        assert_eq!(REFUSED.tier, Tier::FullMatrix);
    }

    #[test]
    fn ids_and_labels_are_unique_and_name_the_minor() {
        let mut ids: Vec<&str> = all().map(|i| i.id).collect();
        let mut labels: Vec<String> = all().map(|i| i.label()).collect();
        ids.sort_unstable();
        ids.dedup();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(
            (ids.len(), labels.len()),
            (MATRIX.len() + 1, MATRIX.len() + 1)
        );
        for i in all() {
            let minor = i.minor().replace('.', "_");
            assert!(i.id.contains(&minor), "{i:?}");
            assert!(i.label().contains(i.minor()), "{i:?}");
        }
    }

    #[test]
    fn paths_follow_pyenv_root_and_the_cache() {
        assert_eq!(by_id("pyenv_3_10").minor(), "3.10");
        assert!(
            by_id("pyenv_3_10")
                .path()
                .starts_with(pyenv_root().join("versions/3.10.13"))
        );
        assert!(by_id("pyenv_3_10").path().ends_with("bin/python3.10"));
        assert_eq!(
            by_id("debian_3_15").path(),
            cache_dir().join("root/usr/bin/python3.15")
        );
        assert_eq!(
            by_id("debian_3_11").path(),
            PathBuf::from("/usr/bin/python3.11")
        );
    }
}
