//! The steps of the scripts' protocol (see the crate docs), and of starting and stopping
//! blockprobe around them.

use std::path::Path;
use std::process::ExitStatus;

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::{Blockprobe, CtxRef, Proc, Python, ScriptState, Stall, field_u32, kind, unix_now_ns};

impl CtxRef {
    /// Waits for a script's `READY <pid>` among `out`'s lines (the script's own stdout, or
    /// blockprobe's under `run`) and returns what it said.
    #[track_caller]
    pub fn wait_ready(&self, out: &Proc) -> ScriptState {
        self.wait_for("the script to print READY", || {
            let state = out.script_state();
            state.pid.is_some().then_some(state)
        })
    }

    /// Waits until blockprobe (`bp`) reported a `loop` event for each of `tids` in `pid`:
    /// tracing of those loops is live.
    #[track_caller]
    pub fn wait_loops_live(&self, bp: &Proc, pid: u32, tids: &[u32]) {
        self.ensure(!tids.is_empty(), || {
            "the script listed no loop thread".into()
        });
        let what = format!("blockprobe's `loop` events for pid {pid}, threads {tids:?}");
        self.wait_for(&what, || {
            let events = bp.events();
            tids.iter()
                .all(|tid| {
                    events.iter().any(|e| {
                        kind(e) == "loop"
                            && field_u32(e, "pid") == Some(pid)
                            && field_u32(e, "tid") == Some(*tid)
                    })
                })
                .then_some(())
        });
    }

    /// Waits for the script's `FINISHED` (all its `DONE` lines are then in).
    #[track_caller]
    pub fn wait_finished(&self, out: &Proc) -> ScriptState {
        self.wait_for("the script to print FINISHED", || {
            let state = out.script_state();
            state.finished.then_some(state)
        })
    }

    /// Waits until the script `name` that `bp` runs is READY and blockprobe found each of
    /// the loops it listed; adopts the script's process. Returns what it said and its pid.
    #[track_caller]
    pub fn wait_live(&self, bp: &Proc, name: &str) -> (ScriptState, u32) {
        let ready = self.wait_ready(bp);
        let pid = ready.pid.expect("READY has a pid");
        self.adopt(pid, name);
        let tids: Vec<u32> = ready.loops.iter().map(|(_, tid)| *tid).collect();
        self.wait_loops_live(bp, pid, &tids);
        (ready, pid)
    }

    /// Starts host-wide `blockprobe trace` ([`Blockprobe::trace`] with no pid) and waits for
    /// its `ready` event: its probes are attached.
    #[track_caller]
    pub fn spawn_trace_host(&self) -> Proc {
        let bp = self.spawn("blockprobe trace (host)", &mut Blockprobe::trace(&[]));
        self.wait_for("blockprobe's `ready` event", || {
            bp.events().into_iter().find(|e| kind(e) == "ready")
        });
        bp
    }

    /// Runs sleep_in_coroutine.py (`script`, run by `py` on `python`, already READY)
    /// through the protocol while `bp` (`blockprobe trace`) traces it, lets it exit, and
    /// checks blockprobe's view of it: attached, its one stall besides any under way when
    /// blockprobe attached (see
    /// [`CtxRef::check_handler_sleep`]), detached at its exit.
    #[track_caller]
    pub fn drive_traced_sleep(&self, bp: &Proc, py: &Proc, python: &Python, script: &Path) {
        let pid = py.pid();
        let tids: Vec<u32> = py.script_state().loops.iter().map(|(_, t)| *t).collect();
        self.wait_loops_live(bp, pid, &tids);
        let go = unix_now_ns();
        py.send("GO");
        let state = self.wait_finished(py);
        self.wait_stalls(bp, pid, 1);
        // The stall is over by now: blockprobe reports it when the loop is back.
        let seen = unix_now_ns();
        self.quit_script(py);
        let detached = self.wait_event(bp, "detached", pid);
        self.ensure(detached["reason"] == "exit", || {
            format!("expected a detached event with reason \"exit\", got {detached}")
        });
        self.ensure(!bp.events_of("attached", pid).is_empty(), || {
            format!("no `attached` event for pid {pid}")
        });
        // A stall under way when the tracer attached (the script was busy) is the
        // caller's to check.
        let stalls: Vec<Stall> = (bp.stalls(pid).into_iter())
            .filter(|s| !s.started_before_tracing)
            .collect();
        self.ensure(stalls.len() == 1, || {
            format!("expected exactly one stall for pid {pid}, got {stalls:#?}")
        });
        self.check_handler_sleep(
            &stalls[0],
            script,
            python.sleep_syscall(),
            &state,
            (go, seen),
        );
    }

    /// Stops `blockprobe trace` with SIGINT (unless it already stopped by itself) and
    /// checks it exits 0 with clean output.
    #[track_caller]
    pub fn stop_trace(&self, bp: &Proc) {
        self.stop_trace_with(bp, Signal::SIGINT);
    }

    /// [`CtxRef::stop_trace`] with `signal` (SIGINT or SIGTERM: both end tracing cleanly).
    #[track_caller]
    pub fn stop_trace_with(&self, bp: &Proc, signal: Signal) {
        bp.may_exit();
        if bp.exited().is_none() {
            bp.signal(signal);
        }
        let status = bp.wait_exit();
        self.check_clean(bp);
        self.ensure(status.code() == Some(0), || {
            format!("blockprobe trace stopped by {signal} with {status}, expected exit code 0")
        });
    }

    /// Ends a script the test started itself (traced with `trace`): sends QUIT, closes
    /// its stdin and fails unless it exits 0.
    #[track_caller]
    pub fn quit_script(&self, script: &Proc) {
        script.send("QUIT");
        script.close_stdin();
        let status = script.wait_exit();
        self.ensure(status.success(), || {
            format!("the script exited with {status}")
        });
    }

    /// Ends a `blockprobe run` whose script waits for QUIT: sends QUIT, closes stdin,
    /// waits for blockprobe to exit and checks its output ([`CtxRef::check_clean`]).
    #[track_caller]
    pub fn quit(&self, bp: &Proc) -> ExitStatus {
        let status = self.quit_counting_losses(bp);
        self.check_clean(bp);
        status
    }

    /// [`CtxRef::quit`] for a load test: blockprobe may have lost events, as long as it
    /// counted them; checks [`CtxRef::check_whole`] only.
    #[track_caller]
    pub fn quit_counting_losses(&self, bp: &Proc) -> ExitStatus {
        bp.send("QUIT");
        bp.close_stdin();
        let status = bp.wait_exit();
        self.check_whole(bp);
        status
    }

    /// [`CtxRef::quit`], and fails unless blockprobe exited 0 (`why`: what a 0 says).
    #[track_caller]
    pub fn quit_ok(&self, bp: &Proc, why: &str) {
        let status = self.quit(bp);
        self.ensure(status.code() == Some(0), || {
            format!("blockprobe run exited with {status}, expected 0{why}")
        });
    }

    /// Waits until blockprobe reported at least `count` stalls for `pid`.
    #[track_caller]
    pub fn wait_stalls(&self, bp: &Proc, pid: u32, count: usize) -> Vec<Stall> {
        let what = format!("{count} stall event(s) for pid {pid}");
        self.wait_for(&what, || {
            let stalls = bp.stalls(pid);
            (stalls.len() >= count).then_some(stalls)
        })
    }

    /// Waits until blockprobe reported at least `count` stalls for `pid`, or fewer and
    /// counted the others as lost ([`Proc::lost`] `ringbuf_stall`, which names no pid: the
    /// test must trace only the processes it counts): every stall reported or counted.
    #[track_caller]
    pub fn wait_stalls_or_lost(&self, bp: &Proc, pid: u32, count: usize) -> Vec<Stall> {
        let what = format!("{count} stall event(s) for pid {pid}, or `lost` counts for them");
        self.wait_for(&what, || {
            let stalls = bp.stalls(pid);
            let lost = usize::try_from(bp.lost("ringbuf_stall")).unwrap_or(usize::MAX);
            (stalls.len().saturating_add(lost) >= count).then_some(stalls)
        })
    }

    /// Waits until blockprobe reported `event` (e.g. `attached`, `detached`) for `pid`.
    #[track_caller]
    pub fn wait_event(&self, bp: &Proc, event: &str, pid: u32) -> Value {
        let what = format!("a `{event}` event for pid {pid}");
        self.wait_for(&what, || bp.events_of(event, pid).into_iter().next())
    }
}
