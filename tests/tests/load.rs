//! Load: many traced processes at once. blockprobe must attach to each, find each loop,
//! report each stall with its own pid and culprit, lose nothing, and keep its memory
//! bounded.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use blockprobe_tests::{Ctx, Python, Stall, kind, require_root, run_command, script};

/// How many processes the fleet test starts (issue 7: "200 Python processes at once").
const FLEET: usize = 200;
/// blockprobe's resident memory may not exceed this while it traces the fleet.
const MAX_RSS_KIB: u64 = 200 * 1024;
/// How long starting the fleet (and blockprobe finding every loop) may take: about 10 s
/// bare on the 2-CPU CI machine.
const START_LIMIT: Duration = Duration::from_secs(90);

/// 200 Python processes under one `blockprobe run`, each with its own asyncio loop, all
/// blocking 50 ms at once: every child gets exactly its one stall, blamed on its own
/// coroutine, with nothing lost, and blockprobe's RSS stays under 200 MiB.
#[test]
fn two_hundred_processes_stall_at_once() {
    require_root();
    let ctx = Ctx::new();
    let python = Python::pyenv("3.11.7");
    let fleet = FLEET.to_string();
    let bp = ctx.spawn(
        "blockprobe run fleet_spawner.py",
        &mut run_command(&python, &script("fleet_spawner.py"), &[&fleet], &[]),
    );
    let children: BTreeMap<u32, u32> =
        ctx.wait_up_to(START_LIMIT, "the spawner's SPAWNED line", || {
            let texts = bp.texts();
            texts.iter().any(|t| t == "SPAWNED").then(|| {
                texts
                    .iter()
                    .filter_map(|t| {
                        let mut words = t.strip_prefix("CHILD ")?.split_whitespace();
                        Some((words.next()?.parse().ok()?, words.next()?.parse().ok()?))
                    })
                    .collect()
            })
        });
    for &pid in children.keys() {
        ctx.adopt(pid, "fleet_child.py");
    }
    ctx.ensure(children.len() == FLEET, || {
        format!(
            "the spawner listed {} children, not {FLEET}",
            children.len()
        )
    });
    ctx.wait_up_to(
        START_LIMIT,
        "a `loop` event for every child's loop thread",
        || {
            let live: BTreeSet<(u32, u32)> = bp
                .events()
                .iter()
                .filter(|e| kind(e) == "loop")
                .filter_map(|e| Some((e["pid"].as_u64()? as u32, e["tid"].as_u64()? as u32)))
                .collect();
            children
                .iter()
                .all(|(&pid, &tid)| live.contains(&(pid, tid)))
                .then_some(())
        },
    );
    bp.send("GO");
    ctx.wait_for("the spawner's FINISHED line", || {
        bp.texts().iter().any(|t| t == "FINISHED").then_some(())
    });
    let stalls: Vec<Stall> = ctx.wait_for("a stall from every child", || {
        let stalls: Vec<Stall> = bp
            .events()
            .into_iter()
            .filter(|e| kind(e) == "stall")
            .filter_map(|e| serde_json::from_value(e).ok())
            .collect();
        let pids: BTreeSet<u32> = stalls.iter().map(|s| s.pid).collect();
        children
            .keys()
            .all(|pid| pids.contains(pid))
            .then_some(stalls)
    });
    let rss_kib = resident_kib(bp.pid());
    ctx.ensure(rss_kib <= MAX_RSS_KIB, || {
        format!("blockprobe's RSS is {rss_kib} KiB with {FLEET} processes traced")
    });
    for (&pid, &tid) in &children {
        let mine: Vec<&Stall> = stalls.iter().filter(|s| s.pid == pid).collect();
        let culprit = mine
            .first()
            .and_then(|s| s.culprit.as_ref())
            .map(|f| f.function.as_str());
        ctx.ensure(
            mine.len() == 1
                && mine[0].tid == tid
                && mine[0].duration_ns >= 50_000_000
                && mine[0].causes.get("sleep").copied().unwrap_or(0) >= 45_000_000
                && culprit == Some("child_handler"),
            || format!("child {pid} (loop thread {tid}) should have one 50 ms sleep stall in child_handler: {mine:#?}"),
        );
    }
    ctx.quit_ok(&bp, "");
}

/// The resident set size of process `pid` in KiB.
fn resident_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(u64::MAX)
}
