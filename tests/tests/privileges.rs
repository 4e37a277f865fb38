//! A user without the privileges blockprobe needs is refused with one clear line; one
//! with exactly those capabilities is not.

use blockprobe_tests::{AS_NOBODY, Blockprobe, Ctx, Python, require_root, script};

/// `trace -p PID` as an unprivileged user (nobody): exit 1 before anything else, with
/// exactly one line on stderr saying that root is needed and naming every capability it
/// lacks, not the "permission denied" that reading the process would give.
#[test]
fn not_root_is_one_clear_line() {
    refused_with_one_line(
        AS_NOBODY,
        "CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH",
    );
}

/// `trace -p PID` as root without CAP_BPF and CAP_PERFMON (dropped from the bounding and
/// inheritable sets, so root's exec does not get them back), and without CAP_SYS_ADMIN,
/// which the kernel accepts instead of either: exit 1 with one line naming exactly those
/// two. (Before the capability check, root passed and blockprobe failed later, loading
/// its programs.)
#[test]
fn missing_bpf_and_perfmon_is_one_line_naming_them() {
    let drop = "-bpf,-perfmon,-sys_admin";
    refused_with_one_line(
        &[
            &format!("--inh-caps={drop}"),
            &format!("--bounding-set={drop}"),
        ],
        "CAP_BPF, CAP_PERFMON",
    );
}

/// A user other than root (nobody) holding the capabilities blockprobe needs, as ambient
/// capabilities: not refused by any root check; `trace -p` of root's sleep_in_coroutine.py
/// finds its loop and reports its stall as usual.
#[test]
fn a_user_with_the_capabilities_is_not_refused() {
    require_root();
    let ctx = Ctx::new();
    let python = Python::pyenv("3.11.7");
    let script_path = script("sleep_in_coroutine.py");
    let target = ctx.spawn("sleep_in_coroutine.py", &mut python.command(&script_path));
    ctx.wait_ready(&target);
    let caps = "+bpf,+perfmon,+sys_ptrace,+dac_read_search";
    let granted = [
        format!("--inh-caps={caps}"),
        format!("--ambient-caps={caps}"),
    ];
    let setpriv: Vec<&str> = AS_NOBODY
        .iter()
        .copied()
        .chain(granted.iter().map(String::as_str))
        .collect();
    let (_bin, bp) = Blockprobe::trace(&[target.pid()]).spawn_as(
        &ctx,
        "blockprobe trace -p (nobody with capabilities)",
        &setpriv,
    );
    ctx.drive_traced_sleep(&bp, &target, &python, &script_path);
    ctx.stop_trace(&bp);
}

/// Runs `trace -p` (on a live idle.py) under `setpriv SETPRIV…`, and checks that it is
/// refused with exit code 1 and exactly one line on stderr that says root is needed and
/// lists exactly `missing` as what blockprobe lacks; nothing on stdout.
fn refused_with_one_line(setpriv: &[&str], missing: &str) {
    require_root();
    let ctx = Ctx::new();
    let python = Python::pyenv("3.11.7");
    let target = ctx.spawn("idle.py", &mut python.command(&script("idle.py")));
    ctx.wait_ready(&target);
    let (_bin, bp) = Blockprobe::new(["trace", "-p", &target.pid().to_string()]).spawn_as(
        &ctx,
        &format!("blockprobe trace -p (setpriv {})", setpriv.join(" ")),
        setpriv,
    );
    bp.close_stdin();
    let status = bp.wait_exit();
    let stderr = bp.stderr();
    ctx.ensure(status.code() == Some(1), || {
        format!("expected exit code 1, got {status}")
    });
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let lacks = lines.first().and_then(|l| {
        let (_, rest) = l.split_once("capabilities it lacks: ")?;
        Some(rest.split_once(" (").map_or(rest, |(names, _)| names))
    });
    ctx.ensure(
        lines.len() == 1
            && lines[0].contains("needs root")
            && lacks == Some(missing)
            && !stderr.contains("panicked"),
        || {
            format!(
                "expected one line on stderr saying root is needed and that blockprobe \
                 lacks exactly {missing}, got:\n{stderr}"
            )
        },
    );
    ctx.ensure(bp.lines().is_empty(), || {
        "blockprobe printed something on stdout".into()
    });
    target.send("GO");
    target.send("QUIT");
    ctx.ensure(target.wait_exit().success(), || "idle.py failed".into());
}
