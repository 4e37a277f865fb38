//! blockprobe's human output, end to end: the README's first command in the default text
//! format, `--help`, and `trace --duration` stopping by itself.

use std::collections::BTreeMap;
use std::path::Path;

use blockprobe_tests::{
    ABOVE, BELOW, Blockprobe, Ctx, CtxRef, Line, Proc, Python, nanos, require_root, script,
    workspace_root,
};

/// The bundled example, as the README runs it (relative to the workspace root).
const EXAMPLE: &str = "examples/blocking_sleep.py";
/// How many times the example calls its blocking helper, and how long each call sleeps.
const EXAMPLE_STALLS: usize = 3;
const EXAMPLE_SLEEP_MS: f64 = 200.0;
/// The header of the live text stream.
const HEADER: &str = "TIME             PID COMM                TID STALL_MS CAUSES           \
                      SYSCALL         CULPRIT";
/// The widest line of the end-of-run summary.
const SUMMARY_WIDTH: usize = 80;

/// The README's 30-second example: `blockprobe run -- python examples/blocking_sleep.py`
/// in the default text format. The example has no readiness protocol: `run` attaches its
/// probes before it starts the command, so the example is traced from its first line.
#[test]
fn readme_example_in_text() {
    require_root();
    let ctx = Ctx::new();
    let python = Python::pyenv("3.11.7");
    let line = sleep_line(&workspace_root().join(EXAMPLE));
    let mut cmd = Blockprobe::new(["run"]);
    cmd.current_dir(workspace_root())
        .arg("--")
        .arg(&python.path)
        .arg(EXAMPLE);
    let bp = ctx.spawn("blockprobe run (text)", &mut cmd);
    bp.close_stdin();
    let status = bp.wait_exit();
    ctx.ensure(status.code() == Some(0), || {
        format!("blockprobe run exited with {status}, expected the example's 0")
    });
    ctx.ensure(!bp.stderr().contains("panicked"), || {
        "blockprobe panicked".into()
    });

    let out = texts(&bp);
    let summary_at = out
        .iter()
        .position(|l| l.starts_with("blockprobe: ") && l.contains(" stalls >= "))
        .unwrap_or_else(|| ctx.fail("no summary header on stdout"));
    let (live, summary) = out.split_at(summary_at);

    let headers = live.iter().filter(|l| l.starts_with("TIME ")).count();
    ctx.ensure(headers == 1, || {
        format!("{headers} header lines, expected 1")
    });
    ctx.ensure(live.iter().any(|l| l == HEADER), || {
        format!("no header line {HEADER:?}")
    });
    let culprit = format!("load_user_profile ({EXAMPLE}:{line})");
    let stalls: Vec<&String> = live.iter().filter(|l| is_stall_line(l)).collect();
    ctx.ensure(stalls.len() == EXAMPLE_STALLS, || {
        format!("expected {EXAMPLE_STALLS} live stall lines, got {stalls:#?}")
    });
    for stall in stalls {
        check_sleep_line(&ctx, stall, &culprit);
    }

    check_summary(&ctx, summary, &workspace_root().join(EXAMPLE));
}

/// The line of `load_user_profile`'s `time.sleep` in the example.
fn sleep_line(example: &Path) -> usize {
    let text = std::fs::read_to_string(example).expect("the example is readable");
    let start = text
        .lines()
        .position(|l| l.starts_with("def load_user_profile("))
        .expect("the example defines load_user_profile");
    let offset = text
        .lines()
        .skip(start)
        .position(|l| l.contains("time.sleep("));
    start + offset.expect("load_user_profile sleeps") + 1
}

/// A live stall line starts with the time of day, `HH:MM:SS.mmm`.
fn is_stall_line(line: &str) -> bool {
    let b = line.as_bytes();
    b.len() > 12 && (b[2], b[5], b[8], b[12]) == (b':', b':', b'.', b' ')
}

/// Checks one live line: a `time.sleep(0.2)` in `culprit`, its duration within the
/// harness's bounds (see the crate docs): at least the sleep less [`BELOW`], at most
/// [`ABOVE`], its run-queue share (one point more for the rounding of the share) and the
/// host's steal time more.
#[track_caller]
fn check_sleep_line(ctx: &CtxRef, line: &str, culprit: &str) {
    let words: Vec<&str> = line.split_whitespace().collect();
    let bad = |why: &str| -> ! { ctx.fail(format!("live line {line:?}: {why}")) };
    let duration_ms: f64 = words
        .get(4)
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| {
            bad("no STALL_MS");
        });
    // CAUSES: `name N%` pairs, comma-separated, the largest first.
    let mut causes = Vec::new();
    let mut rest = &words[5..];
    while let [name, share, tail @ ..] = rest {
        let Some(percent) = share.trim_end_matches(',').strip_suffix('%') else {
            break;
        };
        let percent: f64 = percent.parse().unwrap_or_else(|_| bad("a bad cause share"));
        causes.push((*name, percent));
        rest = tail;
    }
    if causes.first().map(|c| c.0) != Some("sleep") {
        bad("the main cause is not sleep");
    }
    if rest.first() != Some(&"clock_nanosleep") {
        bad("the syscall is not clock_nanosleep");
    }
    if rest[1..].join(" ") != culprit {
        bad(&format!("the culprit is not {culprit}"));
    }
    let runqueue = causes
        .iter()
        .find(|c| c.0 == "runqueue")
        .map_or(0.0, |c| c.1);
    let ms = |d| nanos(d) as f64 / 1e6;
    let low = EXAMPLE_SLEEP_MS - ms(BELOW);
    let stolen = ctx.stolen_ns() as f64 / 1e6;
    let high = EXAMPLE_SLEEP_MS + ms(ABOVE) + duration_ms * (runqueue + 1.0) / 100.0 + stolen;
    if !(low..=high).contains(&duration_ms) {
        bad(&format!(
            "{duration_ms} ms is not within [{low}, {high:.1}] ms"
        ));
    }
}

/// Checks the end-of-run summary of the example (at `example`): 3 stalls, all blamed on
/// `load_user_profile`, with a log2 histogram, every line at most 80 columns.
#[track_caller]
fn check_summary(ctx: &CtxRef, summary: &[String], example: &Path) {
    let text = summary.join("\n");
    let wide: Vec<&String> = summary
        .iter()
        .filter(|l| l.chars().count() > SUMMARY_WIDTH)
        .collect();
    ctx.ensure(wide.is_empty(), || {
        format!("summary lines wider than {SUMMARY_WIDTH} columns: {wide:#?}")
    });
    ctx.ensure(
        summary[0].starts_with("blockprobe: 3 stalls >= 10.0 ms in "),
        || format!("summary header {:?}: expected 3 stalls", summary[0]),
    );
    // The file in full, or shortened from the left when the checkout's path is long.
    let top = format!(" 1. load_user_profile ({})", example.display());
    let (head, tail) = (" 1. load_user_profile (", "examples/blocking_sleep.py)");
    let at = summary
        .iter()
        .position(|l| *l == top || (l.starts_with(head) && l.ends_with(tail) && l.contains('…')))
        .unwrap_or_else(|| ctx.fail(format!("no {top:?} in the summary:\n{text}")));
    let block: Vec<&str> = summary[at + 1..]
        .iter()
        .take_while(|l| !l.is_empty())
        .map(String::as_str)
        .collect();
    let count_ok = block
        .first()
        .is_some_and(|l| l.starts_with("    3 stalls, total "));
    let causes_ok = block
        .get(1)
        .is_some_and(|l| l.starts_with("    causes: sleep "));
    let title_ok = block.get(2).is_some_and(|l| {
        l.split_whitespace().collect::<Vec<_>>() == ["msecs", ":", "count", "distribution"]
    });
    // 200 ms is in the log2 bucket [2^27, 2^28) ns: the only row, its bar full.
    let row_ok = block.get(3).is_some_and(|l| {
        l.split_whitespace().collect::<Vec<_>>()
            == [
                "134",
                "->",
                "268",
                ":",
                "3",
                &format!("|{}|", "*".repeat(36)),
            ]
    });
    ctx.ensure(
        count_ok && causes_ok && title_ok && row_ok && block.len() == 4,
        || format!("load_user_profile's summary is not 3 sleep stalls in one bucket:\n{text}"),
    );
}

/// Its stdout lines (in text format, none is an event).
fn texts(proc: &Proc) -> Vec<String> {
    proc.lines()
        .into_iter()
        .map(|line| match line {
            Line::Event(_, text) | Line::Garbled(text) | Line::Text(text) => text,
        })
        .collect()
}

/// `blockprobe --help`, `run --help` and `trace --help` exit 0 and end with EXAMPLES (bcc
/// style): real command lines, each of a subcommand that exists, with options it takes.
#[test]
fn help_has_examples() {
    let ctx = Ctx::new();
    let main = help(&ctx, &[]);
    let commands = subcommands(&ctx, &main);
    let mut helps = BTreeMap::new();
    for sub in [None, Some("run"), Some("trace")] {
        let text = match sub {
            None => main.clone(),
            Some(sub) => (helps.entry(sub.to_owned()))
                .or_insert_with(|| help(&ctx, &[sub]))
                .clone(),
        };
        let examples = examples(&ctx, &text);
        ctx.ensure(examples.len() >= 2, || {
            format!(
                "`blockprobe {} --help` has fewer than 2 examples:\n{text}",
                sub.unwrap_or_default()
            )
        });
        for example in examples {
            let words: Vec<&str> = example.split_whitespace().collect();
            let used = words.get(1).copied().unwrap_or_default();
            ctx.ensure(
                words[0] == "blockprobe"
                    && commands.iter().any(|c| c == used)
                    && sub.is_none_or(|s| s == used),
                || {
                    format!(
                        "example {example:?} is not a blockprobe {} command",
                        sub.unwrap_or("")
                    )
                },
            );
            // Every option it uses is one the subcommand documents. (Each help once: the
            // harness tells processes apart by name.)
            let options = helps
                .entry(used.to_owned())
                .or_insert_with(|| help(&ctx, &[used]));
            for flag in words
                .iter()
                .skip(2)
                .take_while(|w| **w != "--" && **w != "&&")
            {
                if flag.starts_with('-') && !documents(options, flag) {
                    ctx.fail(format!(
                        "example {example:?}: `{used} --help` has no {flag}"
                    ));
                }
            }
        }
    }
}

/// `blockprobe ARGS --help`, which must exit 0.
#[track_caller]
fn help(ctx: &CtxRef, args: &[&str]) -> String {
    let mut all = args.to_vec();
    all.push("--help");
    let name = format!("blockprobe {}", all.join(" "));
    let (status, stdout, stderr) = Blockprobe::new(&all).output(ctx, &name);
    ctx.ensure(status.success(), || {
        format!("`{name}` exited with {status}: {stderr}")
    });
    stdout
}

/// The subcommands listed under `Commands:` in `help`.
fn subcommands(ctx: &CtxRef, help: &str) -> Vec<String> {
    let listed: Vec<String> = help
        .lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_owned)
        .collect();
    ctx.ensure(listed.len() >= 3, || {
        format!("no Commands: list in\n{help}")
    });
    listed
}

/// The command lines of the EXAMPLES section ending `help`, without their comments.
fn examples(ctx: &CtxRef, help: &str) -> Vec<String> {
    let section: Vec<&str> = help
        .lines()
        .skip_while(|l| *l != "EXAMPLES:")
        .skip(1)
        .collect();
    ctx.ensure(!section.is_empty(), || {
        format!("no EXAMPLES: section in\n{help}")
    });
    section
        .iter()
        .map(|l| l.split(" # ").next().unwrap_or_default().trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

/// Whether a subcommand's help documents option `flag` (as `-o,` or `--output <FILE>`).
fn documents(help: &str, flag: &str) -> bool {
    help.lines().any(|l| {
        l.split([' ', ',', '=']).any(|word| word == flag) && l.trim_start().starts_with('-')
    })
}

/// `trace -p PID --duration 1s`, text format: it stops by itself after a second, exits 0
/// and prints the summary, naming the traced process.
#[test]
fn trace_duration_stops_by_itself() {
    require_root();
    let ctx = Ctx::new();
    let python = Python::pyenv("3.11.7");
    let py = ctx.spawn("idle.py", &mut python.command(&script("idle.py")));
    ctx.wait_ready(&py);
    let pid = py.pid().to_string();
    let bp = ctx.spawn(
        "blockprobe trace -p --duration 1s",
        &mut Blockprobe::new(["trace", "-p", &pid, "--duration", "1s"]),
    );
    let status = bp.wait_exit();
    ctx.ensure(status.code() == Some(0), || {
        format!("blockprobe trace --duration exited with {status}, expected 0")
    });
    let out = texts(&bp);
    let header = out.first().map_or("", String::as_str);
    let seconds: Option<f64> = header
        .strip_prefix("blockprobe: 0 stalls >= 10.0 ms in ")
        .and_then(|rest| rest.split(" s").next())
        .and_then(|s| s.parse().ok());
    ctx.ensure(seconds.is_some_and(|s| s >= 1.0), || {
        format!("summary header {header:?}: expected 0 stalls in at least 1 s")
    });
    let process = format!("    pid {pid} {} (Python 3.11.7", python.comm());
    ctx.ensure(out.iter().any(|l| l.starts_with(&process)), || {
        format!("the summary does not list {process:?}")
    });
    ctx.ensure(
        out.iter()
            .any(|l| l == "No stalls at or above the threshold."),
        || "the summary does not say there were no stalls".into(),
    );
    py.send("GO");
    ctx.quit_script(&py);
}

/// The hook blockprobe chose for the epoll syscalls is said at start, in the `ready`
/// event, and in the report; tracing works with it. Where the kernel is locked down
/// (this test VM: `lockdown=integrity` refuses BPF trampolines), that is the fallback:
/// the `syscalls:` tracepoints, with fentry's refusal named. The example's three stalls
/// are still found, with their syscall and culprit.
#[test]
fn ready_event_and_report_say_the_poll_hook() {
    require_root();
    let ctx = Ctx::new();
    let python = Python::pyenv("3.11.7");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let report = dir.path().join("report.json");
    let mut cmd = Blockprobe::new(["run", "--format", "jsonl", "-o"]);
    cmd.current_dir(workspace_root())
        .arg(&report)
        .arg("--")
        .arg(&python.path)
        .arg(EXAMPLE);
    let bp = ctx.spawn("blockprobe run (jsonl)", &mut cmd);
    bp.close_stdin();
    let status = bp.wait_exit();
    ctx.ensure(status.code() == Some(0), || {
        format!("blockprobe run exited with {status}, expected the example's 0")
    });
    let events = bp.events();
    let ready = events
        .iter()
        .find(|e| blockprobe_tests::kind(e) == "ready")
        .unwrap_or_else(|| ctx.fail("no ready event"));
    let hook = ready["poll_hook"].as_str().unwrap_or_default().to_owned();
    let refused = ready["fentry_refused"].as_str();
    let locked_down = std::fs::read_to_string("/sys/kernel/security/lockdown")
        .is_ok_and(|l| !l.contains("[none]"));
    match hook.as_str() {
        "tracepoint" => ctx.ensure(refused.is_some_and(|r| !r.is_empty()), || {
            format!("the fallback does not say why fentry was refused: {ready}")
        }),
        "fentry" => ctx.ensure(!locked_down && refused.is_none(), || {
            format!("fentry chosen on a locked-down kernel, or with a refusal: {ready}")
        }),
        _ => ctx.fail(format!("unknown poll_hook in {ready}")),
    }
    if locked_down {
        ctx.ensure(hook == "tracepoint", || {
            format!("a locked-down kernel refuses fentry: {ready}")
        });
    }
    let text = std::fs::read_to_string(&report).expect("the report was written");
    let json: serde_json::Value = serde_json::from_str(&text).expect("the report is JSON");
    ctx.ensure(json["poll_hook"] == hook.as_str(), || {
        format!(
            "report poll_hook {} is not the ready event's {hook:?}",
            json["poll_hook"]
        )
    });
    let stalls = events
        .iter()
        .filter(|e| blockprobe_tests::kind(e) == "stall")
        .filter(|e| {
            e["syscall"] == "clock_nanosleep" && e["culprit"]["function"] == "load_user_profile"
        })
        .count();
    ctx.ensure(stalls == EXAMPLE_STALLS, || {
        format!("expected {EXAMPLE_STALLS} sleep stalls blamed on load_user_profile: {events:#?}")
    });
}
