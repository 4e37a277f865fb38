//! A scenario script under `blockprobe run`, driven through the whole protocol.

use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::time::Duration;

use crate::{
    Blockprobe, Ctx, CtxRef, ExpectStall, Proc, Python, ScriptState, Stall, peak_rss_kib,
    require_root, script, unix_now_ns,
};

/// A scenario script run under `blockprobe run`, driven through the whole protocol.
pub struct Scenario<'a> {
    pub python: &'a Python,
    /// File name in `tests/scripts`.
    pub script: &'a str,
    pub script_args: &'a [&'a str],
    /// More blockprobe options (after `run --format jsonl --threshold 10ms`).
    pub blockprobe_args: &'a [&'a str],
    /// How many stalls to wait for before letting the script exit.
    pub stalls: usize,
}

/// A scenario that ran to the end: blockprobe and the script have exited.
pub struct Ran {
    pub ctx: Ctx,
    pub bp: Proc,
    pub script: PathBuf,
    pub pid: u32,
    /// The script's final state: its loops and its measurements.
    pub state: ScriptState,
    pub status: ExitStatus,
    /// Unix ns when the test sent `GO`, and when it had read the stalls it waited for.
    pub window_unix_ns: (u64, u64),
    /// blockprobe's peak resident set size ([`peak_rss_kib`]) once the stalls were in.
    pub bp_peak_rss_kib: u64,
}

impl Ran {
    /// blockprobe's stalls for the script's process (all of them: it has exited).
    pub fn stalls(&self) -> Vec<Stall> {
        self.bp.stalls(self.pid)
    }

    /// The scenario's stalls: [`Ran::stalls`] but those the host's CPU contention alone
    /// made ([`Stall::made_by_contention`]).
    pub fn scenario_stalls(&self) -> Vec<Stall> {
        (self.stalls().into_iter())
            .filter(|s| !s.made_by_contention(&self.script))
            .collect()
    }

    /// What the script measured for `name`.
    #[track_caller]
    pub fn measured(&self, name: &str) -> u64 {
        self.ctx.measured(&self.state, name)
    }

    /// The one stall of the run: fails unless there is exactly one for the script
    /// ([`Ran::scenario_stalls`]).
    #[track_caller]
    pub fn only_stall(&self) -> Stall {
        let stalls = self.scenario_stalls();
        self.ctx.ensure(stalls.len() == 1, || {
            format!(
                "expected exactly one stall for pid {}, got {stalls:#?}",
                self.pid
            )
        });
        stalls.into_iter().next().expect("one stall")
    }

    /// Fails unless blockprobe exited 0 having reported exactly one stall, a
    /// `time.sleep` of `nominal` in `function` under `python` ([`Ran::check_stall`]).
    #[track_caller]
    pub fn only_sleep_stall(&self, python: &Python, function: &str, nominal: Duration) -> Stall {
        self.expect_success();
        let stall = self.only_stall();
        self.check_stall(&stall, function, "sleep", python.sleep_syscall(), nominal);
        stall
    }

    /// Checks a stall against the script's measurement of `function`, its `# BLOCK`
    /// line, the blocking time the script asked for (`nominal`), and the time window of
    /// the scenario.
    #[track_caller]
    pub fn check_stall(
        &self,
        stall: &Stall,
        function: &str,
        cause: &str,
        syscall: &str,
        nominal: Duration,
    ) {
        self.ctx.check_stall(
            stall,
            &ExpectStall {
                script: &self.script,
                function,
                cause,
                syscall,
                measured_ns: self.measured(function),
                nominal,
                window_unix_ns: Some(self.window_unix_ns),
            },
        );
    }

    /// Fails unless blockprobe exited 0 (what the script returned).
    #[track_caller]
    pub fn expect_success(&self) {
        self.ctx.ensure(self.status.code() == Some(0), || {
            format!("blockprobe run exited with {}, expected 0", self.status)
        });
    }
}

/// Runs a scenario under `blockprobe run`, the script running it at once: waits for the
/// script's READY and blockprobe's `loop` events, for FINISHED and the expected stalls,
/// sends QUIT, and waits for blockprobe to exit. Checks [`CtxRef::check_clean`].
#[track_caller]
pub fn run_scenario(scenario: &Scenario<'_>) -> Ran {
    drive(scenario, Losses::Forbidden)
}

/// Runs a scenario whose one stall is a `time.sleep` of `nominal` in `function` (its
/// `# BLOCK function` line) with [`run_scenario`], and fails unless blockprobe exited 0
/// having reported exactly that stall ([`Ran::check_stall`]). Returns the run and the
/// stall, for more checks.
#[track_caller]
pub fn run_sleep_scenario(
    scenario: &Scenario<'_>,
    function: &str,
    nominal: Duration,
) -> (Ran, Stall) {
    let ran = run_scenario(scenario);
    let stall = ran.only_sleep_stall(scenario.python, function, nominal);
    (ran, stall)
}

/// [`run_scenario`] for a load test, where the machine may not keep up: blockprobe may
/// lose events as long as it counts them. Waits until each expected stall is reported or
/// counted as lost (`ringbuf_stall`), and checks [`CtxRef::check_whole`].
#[track_caller]
pub fn run_load_scenario(scenario: &Scenario<'_>) -> Ran {
    drive(scenario, Losses::Counted)
}

/// Whether a test allows blockprobe to lose (and count) events.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Losses {
    Forbidden,
    Counted,
}

#[track_caller]
fn drive(scenario: &Scenario<'_>, losses: Losses) -> Ran {
    require_root();
    let mut cmd = Blockprobe::run(
        scenario.python,
        &script(scenario.script),
        scenario.script_args,
        scenario.blockprobe_args,
    );
    drive_command(
        scenario.python,
        scenario.script,
        &mut cmd,
        scenario.stalls,
        losses,
        |_, _| {},
    )
}

/// Starts `cmd` (a `blockprobe run` of tests/scripts/`name`, see [`Blockprobe::run`]) and
/// takes it through the protocol of [`run_scenario`].
#[track_caller]
pub fn drive_scenario(python: &Python, name: &str, cmd: &mut Command, stalls: usize) -> Ran {
    drive_command(python, name, cmd, stalls, Losses::Forbidden, |_, _| {})
}

/// [`drive_scenario`] for a script with steps of its own before its READY: `prelude`
/// takes it through them.
#[track_caller]
pub fn drive_scenario_after(
    python: &Python,
    name: &str,
    cmd: &mut Command,
    stalls: usize,
    prelude: impl FnOnce(&CtxRef, &Proc),
) -> Ran {
    drive_command(python, name, cmd, stalls, Losses::Forbidden, prelude)
}

#[track_caller]
fn drive_command(
    python: &Python,
    name: &str,
    cmd: &mut Command,
    stalls: usize,
    losses: Losses,
    prelude: impl FnOnce(&CtxRef, &Proc),
) -> Ran {
    let ctx = Ctx::new();
    let script = script(name);
    let go = unix_now_ns();
    let steady = cmd.get_envs().any(|(k, v)| k == "BPTEST_GO" && v.is_some());
    let bp = ctx.spawn(&format!("blockprobe run {name} ({})", python.label), cmd);
    prelude(&ctx, &bp);
    let (_, pid) = ctx.wait_live(&bp, name);
    let go = if steady {
        let go = unix_now_ns();
        bp.send("GO");
        go
    } else {
        go
    };
    let _ = ctx.wait_finished(&bp);
    match losses {
        Losses::Forbidden => drop(ctx.wait_stalls(&bp, pid, stalls)),
        Losses::Counted => drop(ctx.wait_stalls_or_lost(&bp, pid, stalls)),
    }
    // The stalls are over by now: blockprobe reports a stall when the loop is back.
    let seen = unix_now_ns();
    let bp_peak_rss_kib = peak_rss_kib(bp.pid());
    let status = match losses {
        Losses::Forbidden => ctx.quit(&bp),
        Losses::Counted => ctx.quit_counting_losses(&bp),
    };
    let state = bp.script_state();
    Ran {
        ctx,
        bp,
        script,
        pid,
        state,
        status,
        window_unix_ns: (go, seen),
        bp_peak_rss_kib,
    }
}
