//! (k) Errors: one clear line on stderr, a non-zero exit code, and no panic.

use std::process::{Command, ExitStatus};

use blockprobe_tests::{Blockprobe, Ctx, CtxRef, require_root};

/// `trace -p` with a pid no process has.
#[test]
fn trace_missing_pid() {
    require_root();
    let ctx = Ctx::new();
    let mut pid = 999_999u32;
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        pid += 1;
    }
    let pid = pid.to_string();
    let (status, _, stderr) =
        Blockprobe::new(["trace", "-p", &pid]).output(&ctx, "blockprobe trace -p (no such pid)");
    check_error(&ctx, status, &stderr, &pid);
}

/// `trace -p` with the pid of a process that is not Python (`sleep 60`).
#[test]
fn trace_non_python_pid() {
    require_root();
    let ctx = Ctx::new();
    let sleep = ctx.spawn("sleep 60", Command::new("sleep").arg("60"));
    let pid = sleep.pid().to_string();
    let (status, _, stderr) =
        Blockprobe::new(["trace", "-p", &pid]).output(&ctx, "blockprobe trace -p (sleep)");
    check_error(&ctx, status, &stderr, &pid);
}

/// `run` with a command that does not exist.
#[test]
fn run_missing_command() {
    require_root();
    let ctx = Ctx::new();
    let missing = "/nonexistent/blockprobe-test-program";
    let (status, _, stderr) =
        Blockprobe::new(["run", "--", missing]).output(&ctx, "blockprobe run (no such program)");
    check_error(&ctx, status, &stderr, missing);
}

/// A non-zero exit code (not a death by signal), exactly one line on stderr naming
/// `subject`, no panic.
fn check_error(ctx: &CtxRef, status: ExitStatus, stderr: &str, subject: &str) {
    ctx.ensure(status.code().is_some_and(|c| c != 0), || {
        format!("expected a non-zero exit code, got {status}")
    });
    ctx.ensure(!stderr.contains("panicked"), || {
        "blockprobe panicked".into()
    });
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    ctx.ensure(lines.len() == 1 && lines[0].contains(subject), || {
        format!("expected one line on stderr that names {subject:?}, got:\n{stderr}")
    });
}
