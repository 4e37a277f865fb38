//! Every stall's stack held against an outside oracle: `py-spy dump`, taken in the middle
//! of the stall while the loop is blocked.
//!
//! `tests/scripts/pyspy_oracle.py` stalls its loop once per case, about 1.5 s each, and
//! says `INSIDE <case>` right before it blocks. The test waits a moment, dumps the
//! process with py-spy (`--nonblocking`: it does not pause the process), and once
//! blockprobe reported the stall demands that blockprobe's stack of the loop thread
//! equals py-spy's, function names innermost first, both cut the same way
//! ([`pyspy::above_the_loop`]); for a GIL stall also the holder's stack against py-spy's
//! stack of the holder thread. Each case names the function that must be innermost: a C
//! call shows the Python function that made it, as py-spy shows it.
//!
//! py-spy reads every interpreter of the matrix (pyenv 3.9–3.13, Debian's stripped 3.11,
//! sid 3.14 and 3.15), so the test runs on all of them (`python_matrix!`).

use std::time::Duration;

use blockprobe_tests::{
    Ctx, Python, Stall, pyspy, python_matrix, require_root, run_command, script,
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

/// The name of the thread running the script's main loop.
const LOOP_THREAD: &str = "MainThread";

fn stacks_agree_with_pyspy(python: &Python) {
    require_root();
    let ctx = Ctx::new();
    let name = "pyspy_oracle.py";
    let mut cmd = run_command(python, &script(name), &[], &[]);
    let bp = ctx.spawn(
        &format!("blockprobe run {name} ({})", python.label),
        &mut cmd,
    );
    let (_, pid) = ctx.wait_live(&bp, name);
    bp.send("GO");
    for case in CASES {
        let before = bp.stalls(pid).len();
        bp.send(case.name);
        let inside = format!("INSIDE {}", case.name);
        ctx.wait_for(&format!("the script to print {inside}"), || {
            bp.texts().contains(&inside).then_some(())
        });
        std::thread::sleep(INTO_THE_STALL);
        let spy = pyspy::dump(pid).unwrap_or_else(|e| ctx.fail(e));
        let stalls = ctx.wait_stalls(&bp, pid, before + 1);
        ctx.ensure(stalls.len() == before + 1, || {
            format!(
                "case {}: expected one stall, got {:#?}",
                case.name,
                &stalls[before..]
            )
        });
        check_case(&ctx, case, &stalls[before], &spy);
    }
    bp.send("END");
    ctx.wait_finished(&bp);
    ctx.quit(&bp);
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
