//! What blockprobe collects: code names, never argument values, locals or other memory.

use std::time::Duration;

use blockprobe_tests::{Line, Python, Scenario, python_matrix, run_sleep_scenario, unix_now_ns};

python_matrix!(secrets_in_arguments_and_locals_never_leave);

/// The loop blocks in `f(secret=S)` with S, and strings made from it, in an argument and
/// local variables of the blocked frames (secret_args.py; S is `S3CRET-…`, fresh per run,
/// passed in the environment): the stall blames `f` as usual, and neither the JSONL live
/// stream, blockprobe's stderr nor the JSON report contains `S3CRET` anywhere.
fn secrets_in_arguments_and_locals_never_leave(python: &Python) {
    const TAG: &str = "S3CRET";
    let secret = format!("{TAG}-{:x}-{}", unix_now_ns(), std::process::id());
    let mut python = python.clone();
    python.env.push(("BPTEST_SECRET".into(), secret));
    let dir = tempfile::tempdir().expect("temporary directory");
    let report = dir.path().join("report.json");
    let report_arg = report.to_string_lossy().into_owned();
    let (ran, _) = run_sleep_scenario(
        &Scenario {
            python: &python,
            script: "secret_args.py",
            script_args: &[],
            blockprobe_args: &["-o", &report_arg],
            stalls: 1,
        },
        "f",
        Duration::from_millis(200),
    );
    let ctx = &ran.ctx;
    let leaks: Vec<String> = (ran.bp.lines().into_iter())
        .filter_map(|line| match line {
            Line::Event(_, text) | Line::Garbled(text) => Some(text),
            Line::Text(_) => None,
        })
        .chain(ran.bp.stderr().lines().map(str::to_owned))
        .filter(|text| text.contains(TAG))
        .collect();
    ctx.ensure(leaks.is_empty(), || {
        format!("blockprobe's output holds the secret: {leaks:#?}")
    });
    let text = std::fs::read_to_string(&report)
        .unwrap_or_else(|e| ctx.fail(format!("cannot read {report_arg}: {e}")));
    ctx.ensure(text.contains("\"stalls\"") && !text.contains(TAG), || {
        format!("the report holds the secret: {text}")
    });
}
