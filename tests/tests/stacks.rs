//! Every stall's stack held against an outside oracle: `py-spy dump`, taken in the middle
//! of the stall while the loop is blocked.
//!
//! `tests/scripts/pyspy_oracle.py` stalls its loop once per case, about 1.5 s each, and
//! says `INSIDE <case>` right before it blocks. The test waits a moment, dumps the
//! process with py-spy (`--nonblocking`: it does not pause the process), tries the case
//! again unless the dump fell inside the blocking stretch the script measured, and
//! demands of blockprobe's stall that held the loop during the dump that its stack of
//! the loop thread
//! equals py-spy's, function names innermost first, both cut the same way
//! ([`pyspy::above_the_loop`]); for a GIL stall also the holder's stack against py-spy's
//! stack of the holder thread. Each case names the function that must be innermost: a C
//! call shows the Python function that made it, as py-spy shows it.
//!
//! py-spy reads every interpreter of the matrix (pyenv 3.9–3.13, Debian's stripped 3.11,
//! sid 3.14 and 3.15), so the test runs on all of them (`python_matrix!`).

use std::time::Duration;

use blockprobe_tests::{
    Ctx, Proc, Python, Stall, pyspy, python_matrix, require_root, run_command, script, unix_now_ns,
};

python_matrix!(stacks_agree_with_pyspy);

/// One stall of the script, and what it must show.
struct Case {
    /// The case's name in the script.
    name: &'static str,
    /// The stall's main cause, one of these (a loop running on a busy machine waits for
    /// a CPU about as long as it runs).
    causes: &'static [&'static str],
    /// The innermost function of the loop thread's stack (its unqualified name).
    innermost: &'static str,
    /// For a GIL stall: the name of the thread that holds the GIL, and its innermost
    /// function.
    holder: Option<(&'static str, &'static str)>,
}

/// The causes of a loop running Python or C code.
const ON_CPU: &[&str] = &["cpu", "runqueue"];

const CASES: &[Case] = &[
    Case {
        name: "cpu",
        causes: ON_CPU,
        innermost: "spin",
        holder: None,
    },
    // The C encoder runs under `JSONEncoder.iterencode` for the whole call.
    Case {
        name: "json",
        causes: ON_CPU,
        innermost: "iterencode",
        holder: None,
    },
    Case {
        name: "pbkdf2",
        causes: ON_CPU,
        innermost: "derive",
        holder: None,
    },
    Case {
        name: "re",
        causes: ON_CPU,
        innermost: "scan",
        holder: None,
    },
    Case {
        name: "sqlite",
        causes: ON_CPU,
        innermost: "query",
        holder: None,
    },
    Case {
        name: "sleep",
        causes: &["sleep"],
        innermost: "nap_inner",
        holder: None,
    },
    Case {
        name: "socket",
        causes: &["io"],
        innermost: "read_reply",
        holder: None,
    },
    Case {
        name: "lock",
        causes: &["lock"],
        innermost: "update",
        holder: None,
    },
    Case {
        name: "gil",
        causes: &["gil"],
        innermost: "wait_for_gil",
        holder: Some(("hog", "crunch")),
    },
];

/// How long after the script said it is inside the stall py-spy takes its dump: the
/// blocking call is under way by then, and far from its end (about 1.5 s).
const INTO_THE_STALL: Duration = Duration::from_millis(300);

/// How many times a case is tried before its dump must have fallen inside its blocking
/// stretch (a busy machine makes the stretch shorter than sized, or the dump later).
const ATTEMPTS: usize = 3;

/// The name of the thread running the script's main loop.
const LOOP_THREAD: &str = "MainThread";

fn stacks_agree_with_pyspy(python: &Python) {
    require_root();
    let ctx = Ctx::new();
    let name = "pyspy_oracle.py";
    // Above a busy machine's run-queue hiccups: only the cases' stalls are reported.
    let mut cmd = run_command(python, &script(name), &[], &["--threshold", "100ms"]);
    let bp = ctx.spawn(
        &format!("blockprobe run {name} ({})", python.label),
        &mut cmd,
    );
    let (_, pid) = ctx.wait_live(&bp, name);
    bp.send("GO");
    let mut sent = 0;
    for case in CASES {
        let (stall, spy) = (1..=ATTEMPTS)
            .find_map(|attempt| {
                sent += 1;
                let caught = catch_in_the_act(&ctx, &bp, pid, case.name, sent);
                if caught.is_none() {
                    eprintln!(
                        "case {}: attempt {attempt}: the dump missed the stall",
                        case.name
                    );
                }
                caught
            })
            .unwrap_or_else(|| {
                ctx.fail(format!(
                    "case {}: no dump fell inside its blocking stretch in {ATTEMPTS} attempts",
                    case.name
                ))
            });
        check_case(&ctx, case, &stall, &spy);
    }
    bp.send("END");
    ctx.wait_finished(&bp);
    ctx.quit(&bp);
}

/// Runs case `name` (the `nth` case the script is sent) once and dumps the process with
/// py-spy in the middle of it: blockprobe's stall and py-spy's threads, unless the dump
/// did not fall inside the blocking stretch.
#[track_caller]
fn catch_in_the_act(
    ctx: &Ctx,
    bp: &Proc,
    pid: u32,
    name: &str,
    nth: usize,
) -> Option<(Stall, Vec<pyspy::SpyThread>)> {
    bp.send(name);
    let said = |word: &str| {
        bp.texts()
            .into_iter()
            .filter(|t| t.starts_with(word))
            .count()
    };
    ctx.wait_for(&format!("the script's INSIDE line #{nth}"), || {
        (said("INSIDE ") >= nth).then_some(())
    });
    std::thread::sleep(INTO_THE_STALL);
    let dumped_from = unix_now_ns();
    let spy = pyspy::dump(pid).unwrap_or_else(|e| ctx.fail(e));
    let dumped_to = unix_now_ns();
    let blocked = ctx.wait_for(&format!("the script's BLOCKED line #{nth}"), || {
        let line = bp
            .texts()
            .into_iter()
            .filter(|t| t.starts_with("BLOCKED "))
            .nth(nth - 1)?;
        let words: Vec<u64> = line
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        (words.len() == 2).then(|| (words[0], words[1]))
    });
    if !(blocked.0 <= dumped_from && dumped_to <= blocked.1) {
        return None;
    }
    // The stall that held the loop while py-spy looked.
    let what = format!("blockprobe's stall of case {name}");
    let stall = ctx.wait_for(&what, || {
        bp.stalls(pid).into_iter().find(|s| {
            s.start_unix_ns <= dumped_from && s.start_unix_ns + s.duration_ns >= dumped_to
        })
    });
    Some((stall, spy))
}

/// Checks one case's stall against py-spy's dump `spy`.
#[track_caller]
fn check_case(ctx: &Ctx, case: &Case, stall: &Stall, spy: &[pyspy::SpyThread]) {
    let thread = |name: &str| {
        spy.iter().find(|t| t.name == name).unwrap_or_else(|| {
            ctx.fail(format!(
                "case {}: py-spy shows no thread {name}: {spy:#?}",
                case.name
            ))
        })
    };
    ctx.ensure(case.causes.contains(&stall.cause.as_str()), || {
        format!(
            "case {}: cause {}, expected one of {:?}: {stall:#?}",
            case.name, stall.cause, case.causes
        )
    });
    let ours = pyspy::above_the_loop(&functions(&stall.stack));
    let theirs = pyspy::above_the_loop(&thread(LOOP_THREAD).functions);
    check_stack(
        ctx,
        case.name,
        "the loop's stack",
        &ours,
        &theirs,
        case.innermost,
    );
    if let Some((holder, innermost)) = case.holder {
        let ours = functions(&stall.gil_holder_stack);
        let theirs = &thread(holder).functions;
        check_stack(
            ctx,
            case.name,
            "the GIL holder's stack",
            &ours,
            theirs,
            innermost,
        );
    }
}

/// Fails unless blockprobe's stack `ours` equals py-spy's `theirs` and its innermost
/// function is `innermost` (qualified or not: `iterencode` is
/// `JSONEncoder.iterencode` on 3.11+).
#[track_caller]
fn check_stack(
    ctx: &Ctx,
    case: &str,
    what: &str,
    ours: &[String],
    theirs: &[String],
    innermost: &str,
) {
    ctx.ensure(ours == theirs, || {
        format!("case {case}: {what} differs from py-spy's\n  blockprobe: {ours:?}\n  py-spy:     {theirs:?}")
    });
    let first = ours.first().map(String::as_str).unwrap_or("");
    let unqualified = first.rsplit('.').next().unwrap_or(first);
    ctx.ensure(unqualified == innermost, || {
        format!("case {case}: {what} has {first:?} innermost, expected {innermost}: {ours:?}")
    });
}

/// A stack's function names, innermost first.
fn functions(stack: &[blockprobe_tests::Frame]) -> Vec<String> {
    stack.iter().map(|f| f.function.clone()).collect()
}
