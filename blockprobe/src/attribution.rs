//! Turning kernel measurements into stalls: which blocking calls happened inside a
//! stall, what the loop was doing (cause), and who is to blame (culprit).

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::{
    model::{Cause, Frame, Stall},
    python::origin::{Origin, classify},
    syscalls,
};

/// Blocking calls remembered per thread while waiting for their stall to close.
const MAX_PENDING_PER_THREAD: usize = 256;

/// A long blocking syscall made by a loop thread off-await, symbolized.
#[derive(Clone, Debug)]
pub struct BlockedCall {
    /// Syscall number.
    pub nr: u32,
    /// Entry time (monotonic ns).
    pub start_ns: u64,
    /// Return time (monotonic ns).
    pub end_ns: u64,
    /// The Python stack that made it, innermost first.
    pub stack: Vec<Frame>,
}

/// The measured facts of a stall, before attribution.
#[derive(Clone, Debug)]
pub struct StallWindow {
    /// Process id.
    pub pid: u32,
    /// Loop thread id.
    pub tid: u32,
    /// The process's command name.
    pub comm: String,
    /// When the loop left its poller (monotonic ns).
    pub start_ns: u64,
    /// When it came back (monotonic ns).
    pub end_ns: u64,
}

/// Matches blocking calls to the stalls they happened in.
#[derive(Default)]
pub struct Attributor {
    /// Per loop thread: its process and its calls not yet matched to a stall.
    pending: HashMap<u32, (u32, VecDeque<BlockedCall>)>,
}

impl Attributor {
    /// Remembers a blocking call of loop thread `tid` of process `pid` until its stall closes.
    pub fn blocked_call(&mut self, pid: u32, tid: u32, call: BlockedCall) {
        let (owner, calls) = self
            .pending
            .entry(tid)
            .or_insert_with(|| (pid, VecDeque::new()));
        if *owner != pid {
            // The tid was reused by another process.
            *owner = pid;
            calls.clear();
        }
        if calls.len() == MAX_PENDING_PER_THREAD {
            calls.pop_front();
        }
        calls.push_back(call);
    }

    /// Forgets everything about the threads of process `pid` (it exited or exec'd).
    pub fn forget_process(&mut self, pid: u32) {
        self.pending.retain(|_, (owner, _)| *owner != pid);
    }

    /// Builds the stall for `window` from the calls made inside it; `to_unix_ns`
    /// converts monotonic to wall-clock time.
    pub fn close(&mut self, window: StallWindow, to_unix_ns: impl Fn(u64) -> u64) -> Stall {
        let calls: Vec<BlockedCall> = match self.pending.get_mut(&window.tid) {
            Some((_, pending)) => {
                // Calls that ended before this stall began belonged to short iterations.
                pending.retain(|c| c.end_ns >= window.start_ns);
                let (inside, later): (Vec<_>, Vec<_>) =
                    pending.drain(..).partition(|c| c.end_ns <= window.end_ns);
                pending.extend(later);
                inside
            }
            None => Vec::new(),
        };
        attribute(window, &calls, to_unix_ns)
    }
}

/// Attributes a stall to the calls made inside it.
fn attribute(window: StallWindow, calls: &[BlockedCall], to_unix_ns: impl Fn(u64) -> u64) -> Stall {
    let duration_ns = window.end_ns.saturating_sub(window.start_ns);
    let mut causes: BTreeMap<Cause, u64> = BTreeMap::new();
    for call in calls {
        let cause = syscalls::by_nr(call.nr).map_or(Cause::Other, |s| s.cause);
        let overlap = call
            .end_ns
            .min(window.end_ns)
            .saturating_sub(call.start_ns.max(window.start_ns));
        *causes.entry(cause).or_default() += overlap;
    }
    let blocked: u64 = causes.values().sum();
    if duration_ns > blocked {
        *causes.entry(Cause::Other).or_default() += duration_ns - blocked;
    }
    let cause = causes
        .iter()
        .max_by_key(|(cause, ns)| (**ns, std::cmp::Reverse(**cause)))
        .map_or(Cause::Other, |(c, _)| *c);
    let longest = calls.iter().max_by_key(|c| c.end_ns - c.start_ns);
    let stack = longest.map(|c| c.stack.clone()).unwrap_or_default();
    let culprit = culprit(&stack);
    Stall {
        pid: window.pid,
        tid: window.tid,
        comm: window.comm,
        start_unix_ns: to_unix_ns(window.start_ns),
        duration_ns,
        cause,
        syscall: longest
            .and_then(|c| syscalls::by_nr(c.nr))
            .map(|s| s.name.to_owned()),
        causes,
        stack,
        culprit,
    }
}

/// The innermost first-party frame of `stack`, else its innermost frame.
pub fn culprit(stack: &[Frame]) -> Option<Frame> {
    stack
        .iter()
        .find(|f| classify(&f.file) == Origin::FirstParty)
        .or_else(|| stack.first())
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(function: &str, file: &str) -> Frame {
        Frame {
            function: function.into(),
            file: file.into(),
            line: 3,
        }
    }

    fn window(start_ns: u64, end_ns: u64) -> StallWindow {
        StallWindow {
            pid: 1,
            tid: 2,
            comm: "python3".into(),
            start_ns,
            end_ns,
        }
    }

    fn sleep_call(start_ns: u64, end_ns: u64) -> BlockedCall {
        BlockedCall {
            nr: 230,
            start_ns,
            end_ns,
            stack: vec![
                frame("inner", "/app/svc.py"),
                frame("Handle._run", "/usr/lib/python3.11/asyncio/events.py"),
            ],
        }
    }

    #[test]
    fn a_sleep_inside_the_stall_is_its_cause_and_culprit() {
        let mut a = Attributor::default();
        a.blocked_call(1, 2, sleep_call(1_000_000, 201_000_000));
        let stall = a.close(window(500_000, 201_500_000), |t| t + 7);
        assert_eq!(stall.duration_ns, 201_000_000);
        assert_eq!(stall.cause, Cause::Sleep);
        assert_eq!(stall.causes[&Cause::Sleep], 200_000_000);
        assert_eq!(stall.causes[&Cause::Other], 1_000_000);
        assert_eq!(stall.syscall.as_deref(), Some("clock_nanosleep"));
        assert_eq!(stall.culprit.unwrap().function, "inner");
        assert_eq!(stall.start_unix_ns, 500_007);
    }

    #[test]
    fn calls_outside_the_window_do_not_count() {
        let mut a = Attributor::default();
        a.blocked_call(1, 2, sleep_call(0, 100));
        a.blocked_call(1, 2, sleep_call(5_000, 9_000));
        let stall = a.close(window(1_000, 2_000), |t| t);
        assert_eq!(stall.cause, Cause::Other);
        assert!(stall.stack.is_empty() && stall.culprit.is_none());
        // The later call is kept for the next stall.
        let next = a.close(window(4_000, 10_000), |t| t);
        assert_eq!(next.cause, Cause::Sleep);
        assert_eq!(next.causes[&Cause::Sleep], 4_000);
    }

    #[test]
    fn a_gone_process_leaves_nothing_behind() {
        let mut a = Attributor::default();
        a.blocked_call(1, 2, sleep_call(1_000, 9_000));
        a.forget_process(1);
        assert_eq!(a.close(window(500, 10_000), |t| t).cause, Cause::Other);
        // A reused tid in another process does not inherit the old calls.
        a.blocked_call(1, 2, sleep_call(1_000, 9_000));
        a.blocked_call(7, 2, sleep_call(20_000, 21_000));
        let stall = a.close(window(500, 30_000), |t| t);
        assert_eq!(stall.causes[&Cause::Sleep], 1_000);
    }

    #[test]
    fn culprit_skips_stdlib_and_site_packages() {
        let stack = [
            frame("socket.recv", "/usr/lib/python3.11/socket.py"),
            frame(
                "Session.get",
                "/venv/lib/python3.11/site-packages/requests/sessions.py",
            ),
            frame("fetch", "/srv/app/client.py"),
        ];
        assert_eq!(culprit(&stack).unwrap().function, "fetch");
        let only_stdlib = [frame("sleep", "<frozen time>")];
        assert_eq!(culprit(&only_stdlib).unwrap().function, "sleep");
    }
}
