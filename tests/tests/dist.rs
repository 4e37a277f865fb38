//! What ships: the static binary of `cargo xtask dist` (its tarball and checksum, and the
//! binary alone in an empty root tracing a host Python), and `blockprobe check`, which an
//! SRE runs before rolling it out.

use std::path::{Path, PathBuf};
use std::process::Command;

use blockprobe_tests::{
    AS_NOBODY, Ctx, CtxRef, Proc, Python, THRESHOLD, blockprobe_bin, dist_tarball, require_root,
    script, spawn_privileged, workspace_root,
};

/// The items of `blockprobe check` before its Python lines, in order.
const ITEMS: &[&str] = &[
    "kernel",
    "btf",
    "tracepoints",
    "syscalls",
    "fentry",
    "ring buffers",
    "perf sampler",
    "capabilities",
    "tracefs",
    "pid_max",
];

/// The tarball's `.sha256` matches it (checked by `sha256sum -c`, and refused once one
/// byte of a copy is changed); it unpacks to one directory holding the binary and the
/// README; the binary says the version, the commit it was built from and its target.
#[test]
fn the_tarball_checksum_matches_its_contents() {
    let tarball = dist_tarball();
    let dir = tarball.parent().expect("the tarball has a directory");
    let name = file_name(&tarball);
    let checked = sha256_check(dir, &name);
    assert_eq!(checked, Ok(format!("{name}: OK")), "sha256sum -c");

    let copy = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(&tarball).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    std::fs::write(copy.path().join(&name), &bytes).unwrap();
    std::fs::copy(
        dir.join(format!("{name}.sha256")),
        copy.path().join(format!("{name}.sha256")),
    )
    .unwrap();
    assert!(
        sha256_check(copy.path(), &name).is_err(),
        "sha256sum -c accepted a changed tarball"
    );

    let unpacked = tempfile::tempdir().unwrap();
    let binary = unpack(&tarball, unpacked.path());
    let top = binary.parent().unwrap();
    let mut files: Vec<String> = std::fs::read_dir(top)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["README.md", "blockprobe"], "in {}", top.display());
    let version = output(Command::new(&binary).arg("--version"));
    let head = output(
        Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .current_dir(workspace_root()),
    );
    assert_eq!(
        version.stdout.trim(),
        format!(
            "blockprobe {} (commit {}, x86_64-unknown-linux-musl)",
            env!("CARGO_PKG_VERSION"),
            head.stdout.trim()
        ),
        "--version of the shipped binary (a tarball built before the last commit?)"
    );
}

/// The static binary from the tarball, alone in an empty root (`unshare --mount`, then
/// `chroot`) that has only `/proc`, `/sys` and `/tmp` bound in: no libc, no loader, no
/// Python, no tracefs mount. There, `check` finds tracefs mountable and the host's Python
/// supported, and `trace -p` reports the Python's stall as the debug binary would.
#[test]
fn the_static_binary_alone_in_an_empty_root_traces_a_host_python() {
    require_root();
    let ctx = Ctx::new();
    let unpacked = tempfile::tempdir().unwrap();
    let binary = unpack(&dist_tarball(), unpacked.path());
    let root = tempfile::tempdir().unwrap();
    for dir in ["proc", "sys", "tmp"] {
        std::fs::create_dir(root.path().join(dir)).unwrap();
    }
    std::fs::copy(&binary, root.path().join("blockprobe")).unwrap();

    let python = Python::pyenv("3.11.7");
    let script_path = script("sleep_in_coroutine.py");
    let target = ctx.spawn("sleep_in_coroutine.py", &mut python.command(&script_path));
    ctx.wait_ready(&target);

    let check = in_empty_root(
        &ctx,
        root.path(),
        "blockprobe check (empty root)",
        &["check"],
    );
    let status = check.wait_exit();
    let lines = check.texts();
    let tracefs = item_line(&ctx, &lines, "tracefs");
    let python_line = format!("pid {} ", target.pid());
    ctx.ensure(
        status.code() == Some(0)
            && tracefs.contains("not mounted; mountable")
            && lines
                .iter()
                .any(|l| l.contains(&python_line) && l.contains("Python 3.11.7, supported")),
        || {
            format!(
                "check in the empty root: expected exit 0, tracefs mountable and pid {} \
                 supported, got {status}:\n{}\n{}",
                target.pid(),
                lines.join("\n"),
                check.stderr()
            )
        },
    );

    let pid = target.pid().to_string();
    let bp = in_empty_root(
        &ctx,
        root.path(),
        "blockprobe trace -p (empty root)",
        &[
            "trace",
            "--format",
            "jsonl",
            "--threshold",
            THRESHOLD,
            "-p",
            &pid,
        ],
    );
    ctx.drive_traced_sleep(&bp, &target, &python, &script_path);
    ctx.stop_trace(&bp);
}

/// `blockprobe check` as root on this host, with a Python running: one line for each
/// item, in order, then the Python's, each saying what to do unless it is ok; exit code
/// 0 exactly when no line is FAIL (here: 0). It leaves the mount table as it was (tracefs
/// or securityfs, when not mounted, are looked into privately).
#[test]
fn check_on_this_host_has_every_line_and_the_right_exit_code() {
    require_root();
    let ctx = Ctx::new();
    let python = Python::pyenv("3.11.7");
    let target = ctx.spawn("idle.py", &mut python.command(&script("idle.py")));
    ctx.wait_ready(&target);
    let mounts_before = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let check = ctx.spawn(
        "blockprobe check",
        Command::new(blockprobe_bin()).arg("check"),
    );
    let status = check.wait_exit();
    let lines = check.texts();
    let all = || lines.join("\n");
    for item in ITEMS {
        item_line(&ctx, &lines, item);
    }
    let items: Vec<String> = lines.iter().filter_map(|l| item_of(l)).collect();
    ctx.ensure(items[..ITEMS.len()] == *ITEMS, || {
        format!("items out of order: {items:?}\n{}", all())
    });
    check_advice(&ctx, &lines);
    let fentry = item_line(&ctx, &lines, "fentry");
    ctx.ensure(fentry.contains("lockdown: "), || {
        format!("the fentry line says no lockdown mode: {fentry}")
    });
    let python_line = format!("pid {} ", target.pid());
    ctx.ensure(
        lines.iter().any(|l| {
            item_of(l).as_deref() == Some("python")
                && l.contains(&python_line)
                && l.contains("Python 3.11.7, supported")
        }),
        || {
            format!(
                "no python line for idle.py (pid {}):\n{}",
                target.pid(),
                all()
            )
        },
    );
    let failed = lines.iter().any(|l| l.starts_with("FAIL "));
    ctx.ensure(
        status.code() == Some(i32::from(failed))
            && status.code() == Some(0)
            && lines.last().map(String::as_str) == Some("blockprobe can trace on this host"),
        || {
            format!(
                "expected exit 0 and no FAIL line as root here, got {status}:\n{}",
                all()
            )
        },
    );
    ctx.ensure(check.stderr().is_empty(), || {
        format!("check wrote to stderr: {}", check.stderr())
    });
    let mounts_after = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    ctx.ensure(mounts_before == mounts_after, || {
        format!("check changed the mount table:\n{mounts_before}\n---\n{mounts_after}")
    });
    target.send("GO");
    ctx.quit_script(&target);
}

/// `blockprobe check` as nobody: exit 1; the capabilities line FAILs naming each one
/// missing, tracefs FAILs as closed to this user, the ring buffer and perf sampler
/// lines are not ok; every line that is not ok says what to do.
#[test]
fn check_as_an_unprivileged_user_names_what_is_missing() {
    require_root();
    let ctx = Ctx::new();
    let (_bin, check) = spawn_privileged(
        &ctx,
        "blockprobe check (nobody)",
        AS_NOBODY,
        [std::ffi::OsStr::new("check")],
    );
    let status = check.wait_exit();
    let lines = check.texts();
    let all = || lines.join("\n");
    for item in ITEMS {
        item_line(&ctx, &lines, item);
    }
    check_advice(&ctx, &lines);
    let capabilities = item_line(&ctx, &lines, "capabilities");
    ctx.ensure(
        capabilities.starts_with("FAIL ")
            && capabilities
                .contains("lacks: CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH ("),
        || format!("the capabilities line should name all four missing: {capabilities}"),
    );
    let tracefs = item_line(&ctx, &lines, "tracefs");
    ctx.ensure(
        tracefs.starts_with("FAIL ") && tracefs.contains("closed to this user"),
        || format!("tracefs should be closed to nobody: {tracefs}"),
    );
    for item in ["ring buffers", "perf sampler"] {
        let line = item_line(&ctx, &lines, item);
        ctx.ensure(!line.starts_with("ok "), || {
            format!("nobody cannot have {item}: {line}")
        });
    }
    ctx.ensure(
        status.code() == Some(1)
            && lines
                .last()
                .is_some_and(|l| l.starts_with("blockprobe cannot trace on this host")),
        || {
            format!(
                "expected exit 1 and a last line saying so, got {status}:\n{}",
                all()
            )
        },
    );
}

// ------------------------------------------------------------------ helpers

/// The item of a `check` line (`ok    ring buffers  …` → `ring buffers`): the second
/// column, 13 characters wide.
fn item_of(line: &str) -> Option<String> {
    let verdict = line.get(..6)?.trim_end();
    ["ok", "note", "warn", "FAIL"]
        .contains(&verdict)
        .then(|| line.get(6..19).map(|item| item.trim().to_owned()))?
}

/// The one line of `item` among `check`'s `lines`.
#[track_caller]
fn item_line(ctx: &CtxRef, lines: &[String], item: &str) -> String {
    let found: Vec<&String> = (lines.iter())
        .filter(|l| item_of(l).as_deref() == Some(item))
        .collect();
    ctx.ensure(found.len() == 1, || {
        format!(
            "expected one `{item}` line from check, got {}:\n{}",
            found.len(),
            lines.join("\n")
        )
    });
    found[0].clone()
}

/// Every line of `check` that is not ok says what to do after ` -> `; ok lines do not.
#[track_caller]
fn check_advice(ctx: &CtxRef, lines: &[String]) {
    for line in lines.iter().filter(|l| item_of(l).is_some()) {
        let ok = line.starts_with("ok ");
        ctx.ensure(ok != line.contains(" -> "), || {
            format!("a line that is not ok must say what to do, an ok one not: {line}")
        });
    }
}

/// Starts `/blockprobe ARGS` chrooted into `root` in a new mount namespace where only
/// `/proc`, `/sys` and `/tmp` are bound into it (not recursively: no tracefs below).
fn in_empty_root(ctx: &CtxRef, root: &Path, name: &str, args: &[&str]) -> Proc {
    ctx.spawn(
        name,
        Command::new("unshare")
            .args(["--mount", "--", "sh", "-c"])
            .arg(
                r#"r=$1; shift
                for d in proc sys tmp; do mount --bind "/$d" "$r/$d" || exit 120; done
                exec chroot "$r" /blockprobe "$@""#,
            )
            .arg("sh")
            .arg(root)
            .args(args),
    )
}

/// Unpacks `tarball` into `into`; returns the path of the binary in it.
fn unpack(tarball: &Path, into: &Path) -> PathBuf {
    let unpacked = output(
        Command::new("tar")
            .arg("-xzf")
            .arg(tarball)
            .arg("-C")
            .arg(into),
    );
    assert!(
        unpacked.ok,
        "tar -xzf {}: {}",
        tarball.display(),
        unpacked.stderr
    );
    let name = file_name(tarball);
    into.join(name.trim_end_matches(".tar.gz"))
        .join("blockprobe")
}

/// `sha256sum -c NAME.sha256` in `dir`: its output, or why it failed.
fn sha256_check(dir: &Path, name: &str) -> Result<String, String> {
    let checked = output(
        Command::new("sha256sum")
            .args(["-c", &format!("{name}.sha256")])
            .current_dir(dir),
    );
    if checked.ok {
        Ok(checked.stdout.trim().to_owned())
    } else {
        Err(format!("{}{}", checked.stdout, checked.stderr))
    }
}

/// What a finished command wrote, and whether it succeeded.
struct Output {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` to its end.
fn output(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    Output {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .expect("a file name")
        .to_string_lossy()
        .into_owned()
}
