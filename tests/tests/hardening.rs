//! blockprobe under pressure: losses are counted and reported, never silent; a killed
//! tracer leaves nothing attached.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use blockprobe_tests::{Blockprobe, Ctx, Python, kind, read_json, require_root, script};
use nix::sys::signal::Signal;
use serde_json::Value;

/// Stalls in `stall_storm.py`.
const STORM: u64 = 40;

/// With a one-page event buffer and the tracer stopped (SIGSTOP) during a storm of 40
/// stalls, the buffer overflows: every stall is then either reported or counted as lost,
/// the loss shows live (`lost` events) and in the report (`lost_events`, `lost`).
#[test]
fn losses_are_counted_never_silent() {
    require_root();
    let ctx = Ctx::new();
    let python = Python::pyenv("3.11.7");
    let dir = tempfile::tempdir().expect("temporary directory");
    let report = dir.path().join("report.json");
    let bp = ctx.spawn(
        "blockprobe run --ring-buffer-kib 4",
        &mut Blockprobe::run(
            &python,
            &script("stall_storm.py"),
            &[],
            &["--ring-buffer-kib", "4", "-o", &report.to_string_lossy()],
        )
        .steady(),
    );
    let (_, pid) = ctx.wait_live(&bp, "stall_storm.py");

    // The tracer stops reading; the script (sharing its stdin and stdout) goes on.
    bp.signal(Signal::SIGSTOP);
    bp.send("GO");
    ctx.wait_finished(&bp);
    bp.signal(Signal::SIGCONT);
    ctx.wait_for("a `lost` event", || {
        bp.events().into_iter().find(|e| kind(e) == "lost")
    });
    bp.send("QUIT");
    let status = bp.wait_exit();
    ctx.ensure(status.success(), || {
        format!("blockprobe run exited with {status}")
    });

    let report = read_json(&ctx, &report);
    let lost = |name: &str| report["lost"][name].as_u64().unwrap_or(0);
    let total: u64 = report["lost"]
        .as_object()
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    ctx.ensure(
        report["lost_events"].as_u64() == Some(total) && total > 0,
        || format!("lost_events should be the sum of `lost` and > 0: {report:#}"),
    );
    let seen = bp.stalls(pid).len() as u64;
    ctx.ensure(seen + lost("ringbuf_stall") >= STORM, || {
        format!(
            "{seen} stalls reported + {} counted lost < the {STORM} that happened",
            lost("ringbuf_stall")
        )
    });
    let live_lost: u64 = bp
        .events()
        .into_iter()
        .filter(|e| kind(e) == "lost")
        .filter_map(|e| e["count"].as_u64())
        .sum();
    ctx.ensure(live_lost == total, || {
        format!("live `lost` events add up to {live_lost}, the report says {total}")
    });
}

/// The BPF programs a process holds, by id (from its fds' fdinfo).
fn bpf_program_ids(pid: u32) -> BTreeSet<u32> {
    let mut ids = BTreeSet::new();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return ids;
    };
    for fd in fds.flatten() {
        let info = std::fs::read_to_string(fd.path()).unwrap_or_default();
        ids.extend(
            info.lines()
                .filter_map(|l| l.strip_prefix("prog_id:"))
                .filter_map(|v| v.trim().parse::<u32>().ok()),
        );
    }
    ids
}

/// The BPF links (`bpftool link show`) attaching any of the programs `ids`.
fn bpf_links(ctx: &Ctx, ids: &BTreeSet<u32>) -> Vec<Value> {
    let out = Command::new("bpftool")
        .args(["link", "show", "--json"])
        .output()
        .unwrap_or_else(|e| ctx.fail(format!("cannot run bpftool: {e}")));
    let links: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        ctx.fail(format!(
            "`bpftool link show --json` ({}) is not a JSON list ({e}): {}",
            out.status,
            String::from_utf8_lossy(&out.stdout)
        ))
    });
    links
        .into_iter()
        .filter(|l| {
            l["prog_id"]
                .as_u64()
                .and_then(|id| u32::try_from(id).ok())
                .is_some_and(|id| ids.contains(&id))
        })
        .collect()
}

/// The kprobe and uprobe events defined in tracefs (`kprobe_events`, `uprobe_events`; a
/// kernel without kprobes has no such file), one line each.
fn probe_events() -> BTreeSet<String> {
    ["kprobe_events", "uprobe_events"]
        .iter()
        .flat_map(|file| {
            let text = std::fs::read_to_string(Path::new("/sys/kernel/tracing").join(file))
                .unwrap_or_default();
            text.lines()
                .map(|l| format!("{file}: {l}"))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// SIGKILL gives blockprobe no chance to clean up: the kernel must drop its programs with
/// its file descriptors, leaving nothing attached: no BPF link to any of its programs
/// (`bpftool link`), the programs unloaded (`bpftool prog`), and no kprobe or uprobe event
/// it defined left in tracefs.
#[test]
fn sigkill_leaves_no_probes() {
    require_root();
    let ctx = Ctx::new();
    let events_before = probe_events();
    let bp = ctx.spawn_trace_host();
    let ids = bpf_program_ids(bp.pid());
    ctx.ensure(ids.len() >= 8, || {
        format!("blockprobe should hold its BPF programs, holds {ids:?}")
    });
    // The check below sees links when there are some.
    let links = bpf_links(&ctx, &ids);
    ctx.ensure(!links.is_empty(), || {
        format!("bpftool shows no link to blockprobe's programs {ids:?}")
    });
    bp.may_exit();
    bp.signal(Signal::SIGKILL);
    bp.wait_exit();
    // The kernel frees programs after the links that held them (RCU): wait, bounded.
    let loaded = || -> Vec<u32> {
        ids.iter()
            .copied()
            .filter(|id| {
                Command::new("bpftool")
                    .args(["prog", "show", "id", &id.to_string()])
                    .output()
                    .map(|o| o.status.success())
                    .unwrap_or_else(|e| ctx.fail(format!("cannot run bpftool: {e}")))
            })
            .collect()
    };
    ctx.wait_for(
        "blockprobe's BPF links to be gone and its programs unloaded after SIGKILL",
        || (bpf_links(&ctx, &ids).is_empty() && loaded().is_empty()).then_some(()),
    );
    let left: Vec<String> = probe_events().difference(&events_before).cloned().collect();
    ctx.ensure(left.is_empty(), || {
        format!("tracefs probe events left after SIGKILL: {left:?}")
    });
}

/// blockprobe's peak resident memory may not exceed this with 64 loop threads traced.
const SIXTY_FOUR_MAX_RSS_KIB: u64 = 64 * 1024;

/// 64 loop threads in one process, all stalling at once: every worker thread's 20 ms
/// sleep is either inside one of its own stalls or counted as lost (`ringbuf_stall`);
/// stalls whose main cause is the sleep blame the worker's own coroutine (or none, when
/// the evidence that names it was counted as lost); blockprobe's peak RSS stays under
/// 64 MiB. With 65 threads taking turns on the GIL, a loop may also wait for the GIL
/// longer than it slept (then the stall says `gil`, or `cpu` for the interpreter's own
/// work): those are real and allowed.
#[test]
fn sixty_four_loops_stall_at_once() {
    let python = Python::pyenv("3.11.7");
    let ran = blockprobe_tests::run_load_scenario(&blockprobe_tests::Scenario {
        python: &python,
        script: "many_loops.py",
        script_args: &[],
        blockprobe_args: &[],
        stalls: 64,
    });
    ran.expect_success();
    let workers: BTreeSet<u32> = ran
        .state
        .loops
        .iter()
        .filter(|(name, _)| name.starts_with('w'))
        .map(|(_, tid)| *tid)
        .collect();
    // Each worker's 20 ms sleep is inside one of its stalls. Not all of it need be
    // off-CPU sleep: Python fixes the deadline before it releases the GIL, and releasing
    // it with 64 threads on two CPUs can mean waiting for the GIL's mutex or for a taker
    // (`gil`) and being preempted (`runqueue`); the deadline runs on meanwhile. So those
    // 20 ms are sleep, GIL and run-queue time, and most of it sleep, but never on-CPU.
    let stalls = ran.stalls();
    let slept = |s: &&blockprobe_tests::Stall| {
        let part = |cause: &str| s.causes.get(cause).copied().unwrap_or(0);
        s.duration_ns >= 20_000_000
            && part("sleep") >= 10_000_000
            && part("sleep") + part("gil") + part("runqueue") >= 19_000_000
    };
    let sleeping: BTreeSet<u32> = stalls.iter().filter(slept).map(|s| s.tid).collect();
    let lost = ran.bp.lost("ringbuf_stall");
    eprintln!(
        "load: 64 loop threads: {} sleeps reported, {lost} stalls counted lost, \
         blockprobe's peak RSS {} KiB",
        sleeping.len(),
        ran.bp_peak_rss_kib
    );
    ran.ctx.ensure(
        workers.len() == 64
            && sleeping.is_subset(&workers)
            && (workers.len() - sleeping.len()) as u64 <= lost,
        || {
            format!(
                "each of the 64 worker threads should have a stall holding its 20 ms sleep, \
                 or be counted lost; {} threads do, {lost} stalls were counted lost",
                sleeping.len()
            )
        },
    );
    ran.ctx
        .ensure(ran.bp_peak_rss_kib <= SIXTY_FOUR_MAX_RSS_KIB, || {
            format!(
                "blockprobe's peak RSS is {} KiB with 64 loop threads",
                ran.bp_peak_rss_kib
            )
        });
    // Without its blocking-call event, a stall cannot name the function that blocked.
    let evidence_lost = ran.bp.lost("ringbuf_blocked_call") > 0;
    // A stack blockprobe could not read is an honest "don't know", not a wrong answer:
    // it is allowed once in 64 (seen once in many runs: every code object of one stall's
    // stack unreadable; under investigation), another function never.
    let mut unreadable = 0;
    for stall in stalls.iter().filter(|s| s.cause == "sleep") {
        let culprit = stall.culprit.as_ref().map(|f| f.function.as_str());
        if culprit == Some("<unreadable>") {
            unreadable += 1;
            continue;
        }
        if culprit.is_none() && evidence_lost {
            continue;
        }
        ran.ctx.ensure(culprit == Some("blocking_handler"), || {
            format!("a sleep stall blames another function: {stall:#?}")
        });
    }
    ran.ctx.ensure(unreadable <= 1, || {
        format!("{unreadable} sleep stalls have an unreadable stack")
    });
}

/// With a one-page event buffer, the stacks of 65 loop threads polling for the first
/// time at once cannot all be sent (each is 2 KiB): a thread whose stack was dropped is
/// examined again at its next poll, so every loop is still found, and the drops are
/// counted (`ringbuf_poll_stack`).
#[test]
fn loops_whose_first_stack_was_dropped_are_found() {
    let python = Python::pyenv("3.11.7");
    let ran = blockprobe_tests::run_load_scenario(&blockprobe_tests::Scenario {
        python: &python,
        script: "many_loops.py",
        script_args: &[],
        blockprobe_args: &["--ring-buffer-kib", "4"],
        stalls: 64,
    });
    ran.expect_success();
    let lost = ran.bp.lost("ringbuf_poll_stack");
    eprintln!("65 loops found, {lost} poll stacks counted lost on the way");
    ran.ctx.ensure(lost > 0, || {
        "a 4 KiB buffer should have dropped some of 65 simultaneous poll stacks".into()
    });
}
