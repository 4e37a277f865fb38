//! Fleet features on real runs: report identity, `diff` as a deploy gate, `merge` adding
//! up, and the exports (`--format folded|svg|pprof`) opening in other tools' readers.
//!
//! `tests/scripts/fleet_blocking.py` blocks in `fleet_handler()` three times for
//! `--block-ms` each, then once in `steady()` for 15 ms: a "before" run with 20 ms and an
//! "after" run with 60 ms differ only in `fleet_handler`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use blockprobe_tests::{Blockprobe, CtxRef, Python, Ran, Scenario, read_json, run_scenario};
use serde_json::Value;

/// Runs the scenario under `blockprobe run -o DIR/NAME`; returns the run and the report.
fn run_fleet(python: &Python, out: &Path, block_ms: &str, extra: &[&str]) -> (Ran, Value) {
    let out_arg = out.to_str().expect("utf-8 temp path").to_owned();
    let mut bp_args = vec!["-o", out_arg.as_str()];
    bp_args.extend_from_slice(extra);
    let ran = run_scenario(&Scenario {
        python,
        script: "fleet_blocking.py",
        script_args: &["--block-ms", block_ms, "--times", "3"],
        blockprobe_args: &bp_args,
        stalls: 4,
    });
    ran.expect_success();
    let report = read_json(&ran.ctx, out);
    (ran, report)
}

/// The report's functions by (function, stable_file): (count, total_ns).
fn functions(report: &Value) -> BTreeMap<(String, String), (u64, u64)> {
    let mut out = BTreeMap::new();
    for f in report["functions"].as_array().expect("functions") {
        let key = (
            f["function"].as_str().unwrap_or("").to_owned(),
            f["stable_file"].as_str().unwrap_or("").to_owned(),
        );
        let e: &mut (u64, u64) = out.entry(key).or_default();
        e.0 += f["count"].as_u64().unwrap_or(0);
        e.1 += f["total_ns"].as_u64().unwrap_or(0);
    }
    out
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// Runs `blockprobe ARGS`: exit code, stdout, stderr. Each run gets a name of its own
/// (the harness finds a process to drain by its name).
#[track_caller]
fn bp(ctx: &CtxRef, args: &[&str]) -> (i32, String, String) {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let n = RUNS.fetch_add(1, Ordering::Relaxed);
    let (status, out, err) =
        Blockprobe::new(args).output(ctx, &format!("blockprobe {} #{n}", args[0]));
    (status.code().unwrap_or(-1), out, err)
}

/// Two runs of the same scenario, the second blocking 3x longer in `fleet_handler`:
/// `diff` names that function as the regression and exits 1 with
/// `--fail-on-regression`, 0 without a gate or the other way round; `merge` of the two
/// is their sum, in either order; mismatched reports are refused.
#[test]
fn diff_names_the_regression_and_merge_adds_up() {
    let python = Python::pyenv("3.11.7");
    let dir = tempfile::tempdir().expect("temp dir");
    let before_path = dir.path().join("before.json");
    let after_path = dir.path().join("after.json");
    let (_, before) = run_fleet(&python, &before_path, "20", &[]);
    let (ran, after) = run_fleet(&python, &after_path, "60", &[]);
    let ctx = &ran.ctx;

    // Report identity.
    let script = blockprobe_tests::script("fleet_blocking.py");
    let process = &after["processes"][0];
    ctx.ensure(
        after["processes"].as_array().map(Vec::len) == Some(1),
        || format!("one process expected: {}", after["processes"]),
    );
    ctx.ensure(process["pid"] == ran.pid, || format!("pid: {process}"));
    ctx.ensure(process["service"] == "fleet_blocking", || {
        format!("service derived from the command line: {process}")
    });
    ctx.ensure(
        process["python_version"] == python.version().as_str(),
        || format!("python_version: {process}"),
    );
    let cmdline: Vec<&str> = process["cmdline"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    ctx.ensure(cmdline.contains(&path_str(&script)), || {
        format!("cmdline holds the script: {process}")
    });
    ctx.ensure(
        process["cgroup"]
            .as_str()
            .is_some_and(|c| c.starts_with('/')),
        || format!("cgroup: {process}"),
    );
    ctx.ensure(
        process["app_root"] == path_str(script.parent().expect("scripts dir")),
        || format!("app_root is the script's directory: {process}"),
    );
    ctx.ensure(process["host"] == after["host"], || {
        format!("host: {process}")
    });
    for key in ["host", "kernel_release", "blockprobe_version"] {
        ctx.ensure(after[key].as_str().is_some_and(|s| !s.is_empty()), || {
            format!("report {key} is empty")
        });
    }
    let start = after["started_unix_ns"].as_u64().unwrap_or(0);
    let duration = after["duration_ns"].as_u64().unwrap_or(0);
    ctx.ensure(
        after["ended_unix_ns"].as_u64() == Some(start + duration),
        || "ended_unix_ns is started + duration".into(),
    );
    let fb = functions(&after);
    let handler = ("fleet_handler".to_owned(), "fleet_blocking.py".to_owned());
    ctx.ensure(fb.get(&handler).map(|e| e.0) == Some(3), || {
        format!("fleet_handler with its stable file, 3 stalls: {fb:?}")
    });

    // diff as a gate.
    let (b, a) = (path_str(&before_path), path_str(&after_path));
    let (code, out, err) = bp(ctx, &["diff", b, a, "--fail-on-regression", "50"]);
    ctx.ensure(code == 1, || {
        format!("diff with a crossed gate must exit 1, got {code}:\n{out}\n{err}")
    });
    let flagged: Vec<&str> = out.lines().filter(|l| l.ends_with("REGRESSION")).collect();
    ctx.ensure(
        flagged
            .iter()
            .any(|l| l.contains("fleet_handler (fleet_blocking.py)")),
        || format!("diff must flag fleet_handler:\n{out}"),
    );
    ctx.ensure(!flagged.iter().any(|l| l.contains("steady")), || {
        format!("steady did not change, it must not be flagged:\n{out}")
    });
    ctx.ensure(
        out.contains("function fleet_handler (fleet_blocking.py): stall time +"),
        || format!("the gate's verdict names fleet_handler:\n{out}"),
    );

    let (code, out, _) = bp(
        ctx,
        &[
            "diff",
            b,
            a,
            "--fail-on-regression",
            "50",
            "--format",
            "json",
        ],
    );
    ctx.ensure(code == 1, || format!("json diff exit {code}"));
    let d: Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| ctx.fail(format!("diff --format json is not JSON ({e}): {out}")));
    let first = &d["functions"][0];
    ctx.ensure(
        first["name"] == "fleet_handler" && first["regression"] == true,
        || format!("largest impact first, flagged: {first}"),
    );
    let pct = first["change_pct"].as_f64().unwrap_or(0.0);
    ctx.ensure((100.0..300.0).contains(&pct), || {
        format!("3x the blocking is about +200%, got {pct}: {first}")
    });
    let steady = d["functions"]
        .as_array()
        .and_then(|f| f.iter().find(|c| c["name"] == "steady"))
        .cloned()
        .unwrap_or(Value::Null);
    ctx.ensure(steady["regression"] == false, || {
        format!("steady: {steady}")
    });

    let (code, out, _) = bp(ctx, &["diff", b, a]);
    ctx.ensure(code == 0, || format!("no gate, exit 0; got {code}:\n{out}"));
    let (code, out, _) = bp(ctx, &["diff", a, b, "--fail-on-regression", "50"]);
    ctx.ensure(code == 0, || {
        format!("after -> before is an improvement, exit 0; got {code}:\n{out}")
    });
    let (code, _, err) = bp(ctx, &["diff", b, "/nonexistent.json"]);
    ctx.ensure(code == 2 && err.contains("no such file"), || {
        format!("an unreadable report exits 2: {code} {err}")
    });

    // merge adds up, in any order.
    let merged_path = dir.path().join("merged.json");
    let reversed_path = dir.path().join("reversed.json");
    let (code, _, err) = bp(ctx, &["merge", b, a, "-o", path_str(&merged_path)]);
    ctx.ensure(code == 0, || format!("merge failed ({code}): {err}"));
    let (code, _, err) = bp(ctx, &["merge", a, b, "-o", path_str(&reversed_path)]);
    ctx.ensure(code == 0, || format!("merge failed ({code}): {err}"));
    let merged = read_json(ctx, &merged_path);
    let reversed = read_json(ctx, &reversed_path);
    ctx.ensure(merged == reversed, || "merge is commutative".into());
    let mut sum = functions(&before);
    for (k, (n, ns)) in functions(&after) {
        let e = sum.entry(k).or_default();
        e.0 += n;
        e.1 += ns;
    }
    let got = functions(&merged);
    ctx.ensure(got == sum, || {
        format!("merged functions must be the sum:\n got {got:?}\nwant {sum:?}")
    });
    ctx.ensure(got.get(&handler).map(|e| e.0) == Some(6), || {
        format!("fleet_handler: 3 + 3 stalls: {got:?}")
    });
    ctx.ensure(
        merged["sources"].as_array().map(Vec::len) == Some(2),
        || format!("two sources: {}", merged["sources"]),
    );
    let stalls = |r: &Value| r["stalls"].as_array().map_or(0, Vec::len) as u64;
    ctx.ensure(stalls(&merged) == stalls(&before) + stalls(&after), || {
        "every kept stall is kept".into()
    });

    // Refusals.
    let mut other = before.clone();
    other["threshold_ns"] = Value::from(5_000_000u64);
    let other_path = dir.path().join("other-threshold.json");
    std::fs::write(&other_path, other.to_string()).expect("write");
    let (code, _, err) = bp(
        ctx,
        &[
            "merge",
            b,
            path_str(&other_path),
            "-o",
            path_str(&merged_path),
        ],
    );
    ctx.ensure(code == 1 && err.contains("same --threshold"), || {
        format!("another threshold is refused: {code} {err}")
    });
    let mut v2 = before.clone();
    v2["schema"] = Value::from("blockprobe.report/v2");
    let v2_path = dir.path().join("v2.json");
    std::fs::write(&v2_path, v2.to_string()).expect("write");
    let (code, _, err) = bp(
        ctx,
        &["merge", b, path_str(&v2_path), "-o", path_str(&merged_path)],
    );
    ctx.ensure(code == 1 && err.contains("unsupported schema"), || {
        format!("another schema is refused: {code} {err}")
    });
    ctx.ensure(read_json(ctx, &merged_path) == merged, || {
        "a refused merge leaves the output alone".into()
    });
}

/// The independent reading of a pprof profile: the messages and field numbers of
/// github.com/google/pprof's `profile.proto`, declared here rather than taken from
/// blockprobe.
mod pprof {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Profile {
        #[prost(message, repeated, tag = "1")]
        pub sample_type: Vec<ValueType>,
        #[prost(message, repeated, tag = "2")]
        pub sample: Vec<Sample>,
        #[prost(message, repeated, tag = "4")]
        pub location: Vec<Location>,
        #[prost(message, repeated, tag = "5")]
        pub function: Vec<Function>,
        #[prost(string, repeated, tag = "6")]
        pub string_table: Vec<String>,
        #[prost(int64, tag = "9")]
        pub time_nanos: i64,
        #[prost(int64, tag = "10")]
        pub duration_nanos: i64,
        #[prost(int64, tag = "14")]
        pub default_sample_type: i64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueType {
        #[prost(int64, tag = "1")]
        pub r#type: i64,
        #[prost(int64, tag = "2")]
        pub unit: i64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        #[prost(uint64, repeated, tag = "1")]
        pub location_id: Vec<u64>,
        #[prost(int64, repeated, tag = "2")]
        pub value: Vec<i64>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Location {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(message, repeated, tag = "4")]
        pub line: Vec<Line>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Line {
        #[prost(uint64, tag = "1")]
        pub function_id: u64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Function {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(int64, tag = "2")]
        pub name: i64,
        #[prost(int64, tag = "3")]
        pub system_name: i64,
        #[prost(int64, tag = "4")]
        pub filename: i64,
    }
}

/// `report --format svg` is well-formed SVG (parsed by Python's XML parser) naming the
/// culprit; `--format pprof` decodes with an independent pprof reader and with
/// `go tool pprof` (when `go` is on PATH), and its totals are the report's; `--format folded` adds up to the report's stall time.
#[test]
fn exports_open_in_other_tools() {
    use prost::Message as _;
    let python = Python::pyenv("3.11.7");
    let dir = tempfile::tempdir().expect("temp dir");
    let report_path = dir.path().join("r.json");
    let (ran, report) = run_fleet(&python, &report_path, "40", &[]);
    let ctx = &ran.ctx;
    let r = path_str(&report_path);
    let total_ns: u64 = functions(&report).values().map(|e| e.1).sum();
    let stall_count: u64 = functions(&report).values().map(|e| e.0).sum();
    ctx.ensure(stall_count == 4, || format!("4 stalls expected: {report}"));

    let svg_path: PathBuf = dir.path().join("flame.svg");
    let (code, _, err) = bp(
        ctx,
        &["report", r, "--format", "svg", "-o", path_str(&svg_path)],
    );
    ctx.ensure(code == 0, || format!("svg export failed ({code}): {err}"));
    let check = Command::new(&python.path)
        .args([
            "-c",
            "import sys, xml.etree.ElementTree as E; root = E.parse(sys.argv[1]).getroot(); \
             print(root.tag); print(sum(1 for t in root.iter() if (t.text or '').find('fleet_handler') >= 0))",
        ])
        .arg(&svg_path)
        .output()
        .expect("python runs");
    let parsed = String::from_utf8_lossy(&check.stdout);
    let mut lines = parsed.lines();
    ctx.ensure(
        check.status.success() && lines.next() == Some("{http://www.w3.org/2000/svg}svg"),
        || {
            format!(
                "the SVG does not parse as SVG: {parsed} {}",
                String::from_utf8_lossy(&check.stderr)
            )
        },
    );
    ctx.ensure(
        lines
            .next()
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(0)
            > 0,
        || "no SVG element names fleet_handler".into(),
    );

    let pb_path = dir.path().join("r.pb");
    let (code, _, err) = bp(
        ctx,
        &["report", r, "--format", "pprof", "-o", path_str(&pb_path)],
    );
    ctx.ensure(code == 0, || format!("pprof export failed ({code}): {err}"));
    let bytes = std::fs::read(&pb_path).expect("read pprof");
    let p = pprof::Profile::decode(bytes.as_slice())
        .unwrap_or_else(|e| ctx.fail(format!("the pprof profile does not decode: {e}")));
    let s = |i: i64| {
        usize::try_from(i)
            .ok()
            .and_then(|i| p.string_table.get(i))
            .cloned()
            .unwrap_or_else(|| ctx.fail(format!("string index {i} out of range")))
    };
    let types: Vec<(String, String)> = p
        .sample_type
        .iter()
        .map(|t| (s(t.r#type), s(t.unit)))
        .collect();
    ctx.ensure(
        types
            == [
                ("stalls".into(), "count".into()),
                ("delay".into(), "nanoseconds".into()),
            ],
        || format!("sample types: {types:?}"),
    );
    ctx.ensure(s(p.default_sample_type) == "delay", || {
        "default sample type".into()
    });
    let count: i64 = p.sample.iter().map(|x| x.value[0]).sum();
    let delay: i64 = p.sample.iter().map(|x| x.value[1]).sum();
    ctx.ensure(count as u64 == stall_count && delay as u64 == total_ns, || {
        format!("pprof totals {count} stalls / {delay} ns; the report has {stall_count} / {total_ns}")
    });
    let handler_fn = p
        .function
        .iter()
        .find(|f| s(f.system_name) == "fleet_handler" && s(f.filename) == "fleet_blocking.py")
        .unwrap_or_else(|| ctx.fail("no pprof function fleet_handler (fleet_blocking.py)"));
    let handler_delay: i64 = p
        .sample
        .iter()
        .filter(|x| {
            x.location_id.iter().any(|id| {
                p.location
                    .iter()
                    .any(|l| l.id == *id && l.line.iter().any(|ln| ln.function_id == handler_fn.id))
            })
        })
        .map(|x| x.value[1])
        .sum();
    let report_handler = functions(&report)
        .get(&("fleet_handler".to_owned(), "fleet_blocking.py".to_owned()))
        .map_or(0, |e| e.1);
    ctx.ensure(handler_delay as u64 == report_handler, || {
        format!("fleet_handler's delay {handler_delay} ns, report says {report_handler}")
    });
    ctx.ensure(
        p.time_nanos as u64 == report["started_unix_ns"].as_u64().unwrap_or(0),
        || "time_nanos is the run's start".into(),
    );
    go_pprof_reads(ctx, &pb_path, total_ns, report_handler);

    let (code, folded, err) = bp(ctx, &["report", r, "--format", "folded"]);
    ctx.ensure(code == 0, || {
        format!("folded export failed ({code}): {err}")
    });
    let folded_total: u64 = folded
        .lines()
        .map(|l| {
            l.rsplit_once(' ')
                .and_then(|(_, n)| n.parse::<u64>().ok())
                .unwrap_or_else(|| ctx.fail(format!("not a folded line: {l:?}")))
        })
        .sum();
    ctx.ensure(folded_total == total_ns, || {
        format!("folded total {folded_total}, report {total_ns}:\n{folded}")
    });
    ctx.ensure(
        folded.lines().any(|l| {
            l.starts_with("fleet_blocking;")
                && l.contains(";fleet_handler (fleet_blocking.py);[sleep: clock_nanosleep] ")
        }),
        || format!("folded stacks: service first, culprit, then the cause:\n{folded}"),
    );
}

/// `go` on PATH, if any.
fn go_on_path() -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("go"))
        .find(|go| go.is_file())
}

/// When `go` is on PATH, Go's own pprof reads the profile: `go tool pprof -top` of the
/// delay samples totals `total_ns` and shows `fleet_handler` with `handler_ns`
/// cumulative.
fn go_pprof_reads(ctx: &CtxRef, profile: &Path, total_ns: u64, handler_ns: u64) {
    let Some(go) = go_on_path() else {
        eprintln!("go is not on PATH: `go tool pprof` not tried (the prost decoding was)");
        return;
    };
    let home = tempfile::tempdir().expect("temp dir");
    let out = Command::new(&go)
        .args(["tool", "pprof", "-top", "-unit=ns", "-nodefraction=0"])
        .args(["-sample_index=delay"])
        .arg(profile)
        .env("HOME", home.path())
        .env("PPROF_TMPDIR", home.path())
        .output()
        .expect("go runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    ctx.ensure(out.status.success(), || {
        format!("go tool pprof rejects the profile:\n{err}\n{text}")
    });
    ctx.ensure(text.contains(&format!("of {total_ns}ns total")), || {
        format!("go tool pprof's total is not the report's {total_ns} ns:\n{text}")
    });
    // `flat flat% sum% cum cum% name`.
    let handler_cum = text.lines().find_map(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        (cols.len() == 6 && cols[5] == "fleet_handler").then(|| cols[3].to_owned())
    });
    ctx.ensure(
        handler_cum.as_deref() == Some(format!("{handler_ns}ns").as_str()),
        || format!("go tool pprof must list fleet_handler with {handler_ns}ns cumulative:\n{text}"),
    );
}

/// `--service` labels every process and `--redact-cmdline` keeps only argv[0].
#[test]
fn service_and_redaction_options() {
    let python = Python::pyenv("3.11.7");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("r.json");
    let (ran, report) = run_fleet(
        &python,
        &path,
        "20",
        &["--service", "checkout", "--redact-cmdline"],
    );
    let process = &report["processes"][0];
    ran.ctx
        .ensure(process["service"] == "checkout", || format!("{process}"));
    ran.ctx.ensure(
        process["cmdline"]
            == serde_json::json!([python.path.to_string_lossy(), "<5 arguments redacted>"]),
        || format!("redacted cmdline: {process}"),
    );
    ran.ctx.ensure(
        report["services"][0]["service"] == "checkout" && report["services"][0]["count"] == 4,
        || format!("services table: {}", report["services"]),
    );
}
