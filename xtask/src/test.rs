//! `cargo xtask test`: every stage from setup to the integration tests, and a summary
//! of what passed.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::{Workspace, describe, fmt_duration, is_root};

impl Workspace {
    /// `long`: insist on the full matrix (see [`matrix_mode`]).
    pub fn test(&self, long: bool) -> Result<ExitCode> {
        if !is_root() {
            bail!(
                "`cargo xtask test` must run as root: the integration tests load BPF \
                 programs and read other processes' memory (try `sudo -E cargo xtask test`)"
            );
        }
        let bin = self.binary(false);
        let pydeps = self.pydeps();
        let mut summary = Summary::default();
        // Setup first: it fetches interpreters.
        let set_up = summary.run("setup", || plain(self.setup()));
        let missing: Vec<String> = blockprobe_pythons::missing_full_matrix()
            .iter()
            .map(|i| i.label())
            .collect();
        let (full, mode) = matrix_mode(long, &missing);
        let mut tarball = None;
        eprintln!("test: {mode}");
        let full_env = (
            blockprobe_pythons::FULL_MATRIX_ENV,
            if full { "1" } else { "0" },
        );
        let ok = set_up
            && summary.run("lint", || plain(self.lint()))
            && summary.run("unit tests", || {
                cargo_test(
                    self.cargo()
                        .args([
                            "test",
                            "--workspace",
                            "--exclude",
                            "blockprobe-tests",
                            // A BPF-target crate (see `lint`).
                            "--exclude",
                            "blockprobe-ebpf",
                            "--no-fail-fast",
                        ])
                        .env(full_env.0, full_env.1),
                )
            })
            && summary.run("build blockprobe (debug)", || plain(self.build(false)))
            && summary.run("build the static binary (dist)", || {
                plain(self.dist().map(|dist| tarball = Some(dist.tarball)))
            })
            && summary.run(
                if full {
                    "integration tests (full matrix)"
                } else {
                    "integration tests"
                },
                || {
                    let mut cmd = self.cargo();
                    // Every test binary runs, so that one run reports every failure.
                    cmd.args([
                        "test",
                        "-p",
                        "blockprobe-tests",
                        "--no-fail-fast",
                        "--",
                        "--test-threads=1",
                    ]);
                    cmd.env("BLOCKPROBE_BIN", &bin)
                        .env(
                            "BLOCKPROBE_DIST_TARBALL",
                            tarball.as_deref().unwrap_or(Path::new("")),
                        )
                        .env("BLOCKPROBE_PYDEPS", &pydeps)
                        .env(full_env.0, full_env.1);
                    cargo_test(&mut cmd)
                },
            );
        summary.print();
        Ok(if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }
}

/// Whether `xtask test` runs the full matrix, given `--long` and the labels of the
/// full-matrix interpreters that are `missing`; and a line saying so.
fn matrix_mode(long: bool, missing: &[String]) -> (bool, String) {
    if missing.is_empty() {
        return (
            true,
            "full matrix: every test interpreter is installed".into(),
        );
    }
    let missing = missing.join(", ");
    if long {
        (
            true,
            format!("full matrix (--long): {missing} missing: their tests fail"),
        )
    } else {
        (
            false,
            format!(
                "not the full matrix: {missing} missing: their tests skip (`--long` makes \
                 them fail)"
            ),
        )
    }
}

/// Test counts read off cargo test's `test result:` lines, and the tests that skipped a
/// missing interpreter (which cargo counts as passed).
#[derive(Default, Clone, Copy)]
struct Counts {
    passed: u64,
    failed: u64,
    ignored: u64,
    skipped: u64,
}

impl Counts {
    fn add(&mut self, other: Counts) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.ignored += other.ignored;
        self.skipped += other.skipped;
    }
}

/// How one stage of `xtask test` went.
struct Outcome {
    counts: Option<Counts>,
    error: Option<String>,
}

fn plain(result: Result<()>) -> Outcome {
    Outcome {
        counts: None,
        error: result.err().map(|e| format!("{e:#}")),
    }
}

/// Runs `cargo test …`, echoing its stdout to ours and adding up its result lines.
fn cargo_test(cmd: &mut Command) -> Outcome {
    let line = describe(cmd);
    eprintln!("$ {line}");
    let mut counts = Counts::default();
    let mut child = match cmd.stdout(Stdio::piped()).spawn() {
        Ok(child) => child,
        Err(err) => {
            return Outcome {
                counts: None,
                error: Some(format!("cannot start `{line}`: {err}")),
            };
        }
    };
    if let Some(stdout) = child.stdout.take() {
        for text in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("{text}");
            counts.add(parse_test_result(&text));
        }
        counts.passed = counts.passed.saturating_sub(counts.skipped);
    }
    let error = match child.wait() {
        Ok(status) if status.success() => None,
        Ok(status) => Some(format!("`{line}` failed ({status})")),
        Err(err) => Some(format!("cannot wait for `{line}`: {err}")),
    };
    Outcome {
        counts: Some(counts),
        error,
    }
}

/// Reads "test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; …",
/// and counts a line about a skipped interpreter.
fn parse_test_result(line: &str) -> Counts {
    let mut counts = Counts::default();
    if line.contains(blockprobe_pythons::SKIP_MARK) {
        counts.skipped = 1;
    }
    let Some(rest) = line.trim().strip_prefix("test result: ") else {
        return counts;
    };
    for part in rest.split(';') {
        let mut words = part.split_whitespace().rev();
        let (Some(what), Some(n)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        match what {
            "passed" => counts.passed += n,
            "failed" => counts.failed += n,
            "ignored" => counts.ignored += n,
            _ => {}
        }
    }
    counts
}

#[derive(Default)]
struct Summary {
    rows: Vec<(String, Duration, Outcome)>,
}

impl Summary {
    /// Runs one stage of `xtask test`; returns whether it succeeded.
    fn run(&mut self, name: &str, f: impl FnOnce() -> Outcome) -> bool {
        eprintln!("\n==> {name}");
        let started = Instant::now();
        let outcome = f();
        let ok = outcome.error.is_none();
        self.rows
            .push((name.to_string(), started.elapsed(), outcome));
        ok
    }

    fn print(&self) {
        let mut total = Counts::default();
        eprintln!("\n==> summary");
        for (name, took, outcome) in &self.rows {
            let counts = outcome.counts.map_or(String::new(), |c| {
                total.add(c);
                format!(
                    ": {} passed, {} failed, {} ignored, {} skipped",
                    c.passed, c.failed, c.ignored, c.skipped
                )
            });
            match &outcome.error {
                None => eprintln!("  ok    {name} ({}){counts}", fmt_duration(*took)),
                Some(err) => eprintln!(
                    "  FAIL  {name} ({}){counts}\n        {err}",
                    fmt_duration(*took)
                ),
            }
        }
        let failed = self.rows.iter().any(|(_, _, o)| o.error.is_some());
        // One plain closing line: "<verdict>: N passed, N failed, N skipped".
        println!(
            "{}: {} passed, {} failed, {} skipped",
            if failed { "FAILED" } else { "ok" },
            total.passed,
            total.failed,
            total.ignored + total.skipped
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cargo_test_result_lines() {
        let c = parse_test_result(
            "test result: FAILED. 3 passed; 1 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.01s",
        );
        assert_eq!((c.passed, c.failed, c.ignored), (3, 1, 2));
        let c = parse_test_result("running 3 tests");
        assert_eq!((c.passed, c.failed, c.ignored), (0, 0, 0));
        let c = parse_test_result(&format!(
            "test x::pyenv_3_9 ... {} pyenv 3.9.18: … not found",
            blockprobe_pythons::SKIP_MARK
        ));
        assert_eq!((c.passed, c.skipped), (0, 1));
    }

    #[test]
    fn the_full_matrix_runs_when_nothing_is_missing_or_with_long() {
        let missing = ["Debian sid 3.15".to_string()];
        assert!(matrix_mode(false, &[]).0);
        assert!(matrix_mode(true, &[]).0);
        let (full, line) = matrix_mode(false, &missing);
        assert!(!full && line.contains("Debian sid 3.15 missing: their tests skip"));
        let (full, line) = matrix_mode(true, &missing);
        assert!(full && line.contains("their tests fail"));
    }
}
