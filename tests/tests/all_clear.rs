//! Never a silent all-clear: "0 stalls" must mean that loops were watched and did not
//! stall. A process that polls from native code without a loop blockprobe recognizes is
//! a warning (live, in the summary and in the report); sync pollers through `selectors`
//! are not; a Python process that never polled is told apart in the summary.

use std::time::Duration;

use blockprobe_tests::{
    Ctx, Python, blockprobe_bin, kind, read_json, require_root, script, trace_command,
};

/// `trace -p` on three pyenv 3.11 processes, none with a loop blockprobe recognizes: a
/// hand-written epoll loop (asyncio imported), the same loop through `selectors`, and a
/// process that never polls. Only the first is warned about: a live `warning` event
/// naming its pid, the report's `warnings` (pid, reason `polls_without_loop`) and the
/// summary (`blockprobe report` of the report); the report says which processes polled;
/// the summary counts 0 loop threads watched and says why each process has none.
#[test]
fn a_loop_blockprobe_cannot_recognize_is_a_warning() {
    require_root();
    let python = Python::pyenv("3.11.7");
    let ctx = Ctx::new();
    let script = script("hand_written_loop.py");
    let start = |mode: &[&str]| {
        let py = ctx.spawn(
            &format!("hand_written_loop.py {mode:?}"),
            python.command(&script).args(mode),
        );
        ctx.wait_ready(&py);
        py
    };
    let native = start(&[]);
    let selectors = start(&["--selectors"]);
    let no_poll = start(&["--no-poll"]);
    let pids = [native.pid(), selectors.pid(), no_poll.pid()];
    let dir = tempfile::tempdir().expect("a temporary directory");
    let report = dir.path().join("report.json");
    let bp = ctx.spawn(
        "blockprobe trace -p -o",
        trace_command(&pids).args(["-o", &report.to_string_lossy()]),
    );
    let warning = ctx.wait_for("a `warning` event about the hand-written loop", || {
        bp.events_of("warning", pids[0]).into_iter().next()
    });
    ctx.ensure(
        warning["message"].as_str().is_some_and(|m| {
            m.contains(&format!("pid {}", pids[0])) && m.contains("no asyncio loop")
        }),
        || {
            format!(
                "the warning should name pid {} and say no loop was found: {warning}",
                pids[0]
            )
        },
    );
    // The others had as long to be warned about.
    std::thread::sleep(Duration::from_secs(2));
    ctx.stop_trace(&bp);
    for py in [&native, &selectors, &no_poll] {
        ctx.quit_script(py);
    }
    let others: Vec<_> = (bp.events().into_iter())
        .filter(|e| {
            kind(e) == "warning" && e["pid"].as_u64().is_some_and(|p| p != u64::from(pids[0]))
        })
        .collect();
    ctx.ensure(others.is_empty(), || {
        format!("only pid {} should be warned about: {others:?}", pids[0])
    });

    let report_path = report;
    let report = read_json(&ctx, &report_path);
    let warnings = report["warnings"].as_array().cloned().unwrap_or_default();
    ctx.ensure(
        warnings.len() == 1
            && warnings[0]["pid"] == pids[0]
            && warnings[0]["reason"] == "polls_without_loop",
        || {
            format!(
                "the report should warn about pid {} alone: {warnings:?}",
                pids[0]
            )
        },
    );
    let polled = |pid: u32| {
        (report["processes"].as_array().into_iter().flatten())
            .find(|p| p["pid"] == pid)
            .map(|p| p["polled"].clone())
    };
    let expected = [true, true, false];
    for (pid, expected) in pids.iter().zip(expected) {
        let polled = polled(*pid);
        ctx.ensure(polled == Some(expected.into()), || {
            format!("the report should say pid {pid} polled: {expected}, says {polled:?}")
        });
    }
    let rendered = std::process::Command::new(blockprobe_bin())
        .arg("report")
        .arg(&report_path)
        .output()
        .expect("blockprobe report runs");
    let summary = String::from_utf8_lossy(&rendered.stdout);
    for text in [
        "loop threads watched: 0".to_owned(),
        format!(
            "warning: pid {} polls (epoll), no asyncio loop found",
            pids[0]
        ),
        "none found (see the warning below)".to_owned(),
        "none (it polls, but through selectors: no asyncio loop)".to_owned(),
        "none (it never polled while traced: no loop ran)".to_owned(),
        "No stalls at or above the threshold (no loop was watched).".to_owned(),
    ] {
        ctx.ensure(summary.contains(&text), || {
            format!("the summary should say {text:?}:\n{summary}")
        });
    }
}
