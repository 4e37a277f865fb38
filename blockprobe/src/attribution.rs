//! Turning kernel measurements into stalls: where the stall's time went (causes, from the
//! scheduler), and who is to blame (culprit, only from evidence of the main cause: its
//! longest blocking call, the commonest stack of the CPU samples, or the stack of the
//! thread that held the GIL). A stall without such evidence shows the latest stack seen
//! of the loop, and says so.
//!
//! Its length: about 400 lines of code; the rest are the tests of each rule.

use std::collections::BTreeMap;

use foldhash::HashMap;

use blockprobe_common::cause;

use crate::{
    evidence::{self, Weigh, stack_bytes},
    model::{Cause, CulpritFrom, FdKind, Frame, ShortCalls, Stall},
    python::origin::{Origin, classify},
    syscalls,
};

/// A long blocking syscall made by a loop thread off-await, symbolized.
#[derive(Clone, Debug)]
pub struct BlockedCall {
    /// Syscall number.
    pub nr: u32,
    /// What blocking in it counts as.
    pub cause: Cause,
    /// Entry time (monotonic ns).
    pub start_ns: u64,
    /// Return time (monotonic ns).
    pub end_ns: u64,
    /// What its file descriptor was, when it takes one.
    pub fd_kind: Option<FdKind>,
    /// The Python stack that made it, innermost first.
    pub stack: Vec<Frame>,
    /// The asyncio task that made it, when known.
    pub task: Option<String>,
    /// When it stands for many short calls of its cause (it is the last of them): how
    /// many, and their total time.
    pub short: Option<ShortCalls>,
}

/// A loop thread's long wait for the GIL: its own stack and the holder's.
#[derive(Clone, Debug)]
pub struct GilWait {
    /// When the wait began (monotonic ns).
    pub start_ns: u64,
    /// When it ended (monotonic ns).
    pub end_ns: u64,
    /// The holder's host tid, if the interpreter records it.
    pub holder_tid: Option<u32>,
    /// The holder's Python stack when the wait began, innermost first.
    pub holder_stack: Vec<Frame>,
    /// The loop thread's own Python stack, where it waited, innermost first.
    pub own_stack: Vec<Frame>,
    /// The asyncio task the loop thread was running, when known.
    pub task: Option<String>,
}

/// A timer sample of a loop thread running off-await.
#[derive(Clone, Debug)]
pub struct CpuSample {
    /// Sample time (monotonic ns).
    pub ts_ns: u64,
    /// The stack being executed, innermost first.
    pub stack: Vec<Frame>,
    /// The asyncio task being run, when known.
    pub task: Option<String>,
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
    /// Off-CPU time by `blockprobe_common::cause` index (CPU is the rest).
    pub off_cpu_ns: [u64; cause::COUNT],
}

/// Evidence of one loop thread not yet matched to a stall.
#[derive(Default)]
struct Pending {
    pid: u32,
    calls: evidence::Queue<BlockedCall>,
    gil_waits: evidence::Queue<GilWait>,
    samples: evidence::Queue<CpuSample>,
    /// The stack of the blocking call the thread was in when userspace walked it, and
    /// when that call began (monotonic ns).
    walked_call: Option<(u64, Vec<Frame>)>,
}

impl Weigh for BlockedCall {
    fn bytes(&self) -> usize {
        stack_bytes(&self.stack) + self.task.as_ref().map_or(0, String::capacity)
    }
}

impl Weigh for GilWait {
    fn bytes(&self) -> usize {
        stack_bytes(&self.holder_stack)
            + stack_bytes(&self.own_stack)
            + self.task.as_ref().map_or(0, String::capacity)
    }
}

impl Weigh for CpuSample {
    fn bytes(&self) -> usize {
        stack_bytes(&self.stack) + self.task.as_ref().map_or(0, String::capacity)
    }
}

/// Matches evidence to the stalls it happened in.
#[derive(Default)]
pub struct Attributor {
    threads: HashMap<u32, Pending>,
}

impl Attributor {
    /// The evidence queue of loop thread `tid` of process `pid`.
    fn pending(&mut self, pid: u32, tid: u32) -> &mut Pending {
        let pending = self.threads.entry(tid).or_default();
        if pending.pid != pid {
            // A new thread, or a tid reused by another process.
            *pending = Pending {
                pid,
                ..Pending::default()
            };
        }
        pending
    }

    /// Remembers a blocking call of loop thread `tid` of process `pid`. A call without a
    /// stack gets the one walked from userspace during it ([`Self::walked_call`]).
    pub fn blocked_call(&mut self, pid: u32, tid: u32, mut call: BlockedCall) {
        let pending = self.pending(pid, tid);
        if let Some((start_ns, stack)) = pending.walked_call.take() {
            if start_ns == call.start_ns && call.stack.is_empty() {
                call.stack = stack;
            } else if start_ns > call.start_ns {
                pending.walked_call = Some((start_ns, stack));
            }
        }
        pending.calls.push(call);
    }

    /// Loop thread `tid` of process `pid`, walked from userspace, is in a blocking call
    /// that began at `start_ns` (monotonic) and has `stack`. The kernel side reports
    /// that call when it ends, without a stack when the call began before the process
    /// was traced (it had no walk recipe then): it is given this one.
    pub fn walked_call(&mut self, pid: u32, tid: u32, start_ns: u64, stack: Vec<Frame>) {
        self.pending(pid, tid).walked_call = Some((start_ns, stack));
    }

    /// Remembers a GIL wait of loop thread `tid` of process `pid`.
    pub fn gil_wait(&mut self, pid: u32, tid: u32, wait: GilWait) {
        self.pending(pid, tid).gil_waits.push(wait);
    }

    /// Remembers a CPU sample of loop thread `tid` of process `pid`.
    pub fn cpu_sample(&mut self, pid: u32, tid: u32, sample: CpuSample) {
        self.pending(pid, tid).samples.push(sample);
    }

    /// The stack of the latest CPU sample of loop thread `tid`, if any is pending.
    pub fn latest_sample(&self, tid: u32) -> Option<&[Frame]> {
        let sample = self.threads.get(&tid)?.samples.newest()?;
        Some(&sample.stack)
    }

    /// Forgets the evidence of thread `tid` (it exited, or runs no loop).
    pub fn forget_thread(&mut self, tid: u32) {
        self.threads.remove(&tid);
    }

    /// Forgets everything about the threads of process `pid` (it exited or exec'd).
    pub fn forget_process(&mut self, pid: u32) {
        self.threads.retain(|_, pending| pending.pid != pid);
    }

    /// Builds the stall for `window` from the evidence gathered inside it; `to_unix_ns`
    /// converts monotonic to wall-clock time.
    pub fn close(&mut self, window: StallWindow, to_unix_ns: impl Fn(u64) -> u64) -> Stall {
        let (start, end) = (window.start_ns, window.end_ns);
        let (calls, gil_waits, samples) = match self.threads.get_mut(&window.tid) {
            Some(p) if p.pid == window.pid => (
                p.calls.take_window(start, end, |c| c.end_ns),
                p.gil_waits.take_window(start, end, |w| w.end_ns),
                p.samples.take_window(start, end, |s| s.ts_ns),
            ),
            _ => Default::default(),
        };
        let duration_ns = end.saturating_sub(start);
        let causes = causes(duration_ns, &window.off_cpu_ns);
        let cause = main_cause(&causes);
        let mut stall = Stall::unblamed(
            window.pid,
            window.tid,
            window.comm,
            to_unix_ns(start),
            duration_ns,
            cause,
            causes,
        );
        let blamed = match cause {
            // Stopped from outside: no code to blame, whatever ran around the stop.
            Cause::Stopped => false,
            Cause::Gil => blame_gil_wait(&mut stall, &gil_waits),
            Cause::Cpu | Cause::Runqueue => blame_samples(&mut stall, &samples),
            _ => blame_call(&mut stall, &calls),
        };
        if blamed {
            stall.culprit_from = Some(CulpritFrom::Evidence);
        } else if cause != Cause::Stopped
            && let Some((stack, task)) = last_seen(&calls, &gil_waits, &samples)
        {
            stall.stack = stack.to_vec();
            stall.task = task.cloned();
            stall.culprit = culprit(&stall.stack);
            stall.culprit_from = Some(CulpritFrom::LastSeen);
        }
        stall
    }
}

/// Blames a GIL stall on the holder of the longest GIL wait: its stack is the
/// culprit's, the loop's own stack the stall's. Whether there was such a wait.
fn blame_gil_wait(stall: &mut Stall, waits: &[GilWait]) -> bool {
    let Some(wait) = waits.iter().max_by_key(|w| w.end_ns - w.start_ns) else {
        return false;
    };
    stall.syscall = Some("futex".to_owned());
    stall.stack.clone_from(&wait.own_stack);
    stall.task.clone_from(&wait.task);
    stall.gil_holder_tid = wait.holder_tid;
    stall.gil_holder_stack.clone_from(&wait.holder_stack);
    stall.culprit = culprit(&wait.holder_stack);
    true
}

/// Blames a CPU or run-queue stall on the commonest stack of its samples. Whether there
/// were any.
fn blame_samples(stall: &mut Stall, samples: &[CpuSample]) -> bool {
    let Some(commonest) = commonest_stack(samples) else {
        return false;
    };
    stall.cpu_samples = samples.len() as u32;
    stall.stack_samples = commonest.samples;
    stall.stack.clone_from(&commonest.sample.stack);
    stall.task.clone_from(&commonest.sample.task);
    stall.culprit = culprit(&stall.stack);
    true
}

/// Blames a stall on the stack with the most time in blocking calls of the main cause:
/// a long call counts its duration, a report of short calls their total. The stack's
/// latest call gives the syscall. Whether there was any call of the cause.
fn blame_call(stall: &mut Stall, calls: &[BlockedCall]) -> bool {
    let cause = stall.cause;
    let mut short = ShortCalls {
        calls: 0,
        total_ns: 0,
    };
    // Sequence -> (time, latest call).
    let mut by_stack: HashMap<Vec<(&str, &str)>, (u64, &BlockedCall)> = HashMap::default();
    for call in calls.iter().filter(|c| c.cause == cause) {
        let took = match call.short {
            Some(s) => {
                short.calls += s.calls;
                short.total_ns += s.total_ns;
                s.total_ns
            }
            None => call.end_ns - call.start_ns,
        };
        let entry = by_stack.entry(sequence(&call.stack)).or_insert((0, call));
        *entry = (entry.0 + took, call);
    }
    let Some((_, (_, call))) =
        (by_stack.into_iter()).max_by_key(|&(_, (ns, call))| (ns, call.end_ns))
    else {
        return false;
    };
    stall.syscall = syscalls::name(call.nr).map(str::to_owned);
    stall.fd_kind = call.fd_kind;
    stall.stack.clone_from(&call.stack);
    stall.task.clone_from(&call.task);
    stall.culprit = culprit(&stall.stack);
    stall.short_calls = (short.calls > 0).then_some(short);
    true
}

/// The latest stack seen of the loop thread among the stall's evidence of any cause,
/// with its task: the latest blocking call, GIL wait or sample by the time it ended.
fn last_seen<'a>(
    calls: &'a [BlockedCall],
    gil_waits: &'a [GilWait],
    samples: &'a [CpuSample],
) -> Option<(&'a [Frame], Option<&'a String>)> {
    let calls = calls.iter().map(|c| (c.end_ns, &c.stack, &c.task));
    let waits = gil_waits.iter().map(|w| (w.end_ns, &w.own_stack, &w.task));
    let samples = samples.iter().map(|s| (s.ts_ns, &s.stack, &s.task));
    calls
        .chain(waits)
        .chain(samples)
        .filter(|(_, stack, _)| !stack.is_empty())
        .max_by_key(|&(at, _, _)| at)
        .map(|(_, stack, task)| (stack.as_slice(), task.as_ref()))
}

/// The stall's time by cause: off-CPU times as measured, on-CPU the rest. Causes with
/// no time are left out.
fn causes(duration_ns: u64, off_cpu_ns: &[u64; cause::COUNT]) -> BTreeMap<Cause, u64> {
    let off: u64 = off_cpu_ns.iter().sum();
    let mut by_cause: BTreeMap<Cause, u64> = off_cpu_ns
        .iter()
        .enumerate()
        .filter(|&(i, &ns)| i != cause::CPU && ns > 0)
        .map(|(i, &ns)| (Cause::from_index(i), ns))
        .collect();
    let on_cpu = duration_ns.saturating_sub(off);
    if on_cpu > 0 {
        by_cause.insert(Cause::Cpu, on_cpu);
    }
    by_cause
}

/// The cause with the most time (ties go to the earlier cause in `Cause` order).
fn main_cause(causes: &BTreeMap<Cause, u64>) -> Cause {
    causes
        .iter()
        .max_by_key(|&(cause, ns)| (*ns, std::cmp::Reverse(*cause)))
        .map_or(Cause::Other, |(cause, _)| *cause)
}

/// A stack's sequence of functions (name and file), innermost first: what makes two
/// stacks the same one, whatever lines they were at.
fn sequence(stack: &[Frame]) -> Vec<(&str, &str)> {
    (stack.iter())
        .map(|f| (f.function.as_str(), f.file.as_str()))
        .collect()
}

/// The commonest stack among a stall's samples.
struct Commonest<'a> {
    /// How many samples had its sequence of functions.
    samples: u32,
    /// The latest of them on the commonest line of its culprit frame.
    sample: &'a CpuSample,
}

/// The commonest stack of `samples`, counted by sequence of functions innermost first
/// (lines apart: a loop over a C call moves between lines); ties go to the later stack.
/// Of that stack's samples, the one shown is the latest at its culprit frame's
/// commonest line: where the time went, not wherever the last sample landed (e.g. the
/// statement after a long C call).
fn commonest_stack(samples: &[CpuSample]) -> Option<Commonest<'_>> {
    // Sequence -> its samples' indices, in order.
    let mut by_stack: HashMap<Vec<(&str, &str)>, Vec<usize>> = HashMap::default();
    for (i, sample) in samples.iter().enumerate() {
        by_stack.entry(sequence(&sample.stack)).or_default().push(i);
    }
    let same = (by_stack.into_values()).max_by_key(|same| (same.len(), same.last().copied()))?;
    // The culprit frame's index is the same in every sample of one sequence.
    let at = culprit_index(&samples[same[0]].stack);
    // Line -> (samples, latest index).
    let mut by_line: HashMap<u32, (u32, usize)> = HashMap::default();
    for &i in &same {
        let line = samples[i].stack.get(at).map_or(0, |f| f.line);
        let entry = by_line.entry(line).or_insert((0, i));
        *entry = (entry.0 + 1, i);
    }
    let (_, latest) = by_line.into_values().max()?;
    Some(Commonest {
        samples: same.len() as u32,
        sample: &samples[latest],
    })
}

/// The innermost first-party frame of `stack`, else its innermost frame.
pub fn culprit(stack: &[Frame]) -> Option<Frame> {
    stack.get(culprit_index(stack)).cloned()
}

/// Where [`culprit`] is in `stack`: its innermost first-party frame, else 0.
fn culprit_index(stack: &[Frame]) -> usize {
    (stack.iter())
        .position(|f| classify(&f.file) == Origin::FirstParty)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures;

    /// Frame `function` of `file`, at line 3.
    fn frame(function: &str, file: &str) -> Frame {
        fixtures::frame(function, file, 3)
    }

    fn window(start_ns: u64, end_ns: u64, off: &[(usize, u64)]) -> StallWindow {
        let mut off_cpu_ns = [0; cause::COUNT];
        for &(i, ns) in off {
            off_cpu_ns[i] = ns;
        }
        StallWindow {
            pid: 1,
            tid: 2,
            comm: "python3".into(),
            start_ns,
            end_ns,
            off_cpu_ns,
        }
    }

    fn sleep_call(start_ns: u64, end_ns: u64) -> BlockedCall {
        BlockedCall {
            nr: 230,
            cause: Cause::Sleep,
            start_ns,
            end_ns,
            fd_kind: None,
            stack: vec![
                frame("inner", "/app/svc.py"),
                frame("Handle._run", "/usr/lib/python3.11/asyncio/events.py"),
            ],
            task: Some("Task-7".into()),
            short: None,
        }
    }

    fn sample(ts_ns: u64, function: &str) -> CpuSample {
        sample_at(ts_ns, function, 3)
    }

    fn sample_at(ts_ns: u64, function: &str, line: u32) -> CpuSample {
        CpuSample {
            ts_ns,
            stack: vec![fixtures::frame(function, "/app/svc.py", line)],
            task: None,
        }
    }

    #[test]
    fn a_call_reported_without_a_stack_gets_the_one_walked_during_it() {
        let mut a = Attributor::default();
        let walked = sleep_call(0, 0).stack;
        // Walked during the call that began at 100; a later call keeps its own stack.
        a.walked_call(1, 2, 100, walked.clone());
        let bare = |start_ns, end_ns| BlockedCall {
            stack: Vec::new(),
            ..sleep_call(start_ns, end_ns)
        };
        a.blocked_call(1, 2, bare(100, 300));
        a.blocked_call(1, 2, bare(400, 600));
        let first = a.close(window(50, 350, &[(cause::SLEEP, 200)]), |ns| ns);
        assert_eq!(first.stack, walked);
        assert_eq!(first.syscall.as_deref(), Some("clock_nanosleep"));
        let second = a.close(window(380, 650, &[(cause::SLEEP, 200)]), |ns| ns);
        assert!(second.stack.is_empty(), "{second:?}");
        // A stack walked for another call is not given to this one.
        a.walked_call(1, 2, 700, walked.clone());
        a.blocked_call(1, 2, bare(690, 900));
        let third = a.close(window(680, 950, &[(cause::SLEEP, 200)]), |ns| ns);
        assert!(third.stack.is_empty(), "{third:?}");
    }

    #[test]
    fn a_sleep_inside_the_stall_is_its_cause_and_culprit() {
        let mut a = Attributor::default();
        a.blocked_call(1, 2, sleep_call(1_000_000, 201_000_000));
        let w = window(
            500_000,
            201_500_000,
            &[(cause::SLEEP, 199_900_000), (cause::RUNQUEUE, 50_000)],
        );
        let stall = a.close(w, |t| t + 7);
        assert_eq!(stall.duration_ns, 201_000_000);
        assert_eq!(stall.cause, Cause::Sleep);
        assert_eq!(stall.causes[&Cause::Sleep], 199_900_000);
        assert_eq!(stall.causes[&Cause::Runqueue], 50_000);
        assert_eq!(stall.causes[&Cause::Cpu], 1_050_000);
        assert_eq!(stall.causes.values().sum::<u64>(), stall.duration_ns);
        assert_eq!(stall.syscall.as_deref(), Some("clock_nanosleep"));
        assert_eq!(stall.culprit.unwrap().function, "inner");
        assert_eq!(stall.task.as_deref(), Some("Task-7"));
        assert_eq!(stall.start_unix_ns, 500_007);
    }

    #[test]
    fn a_stopped_loop_is_blamed_on_no_code() {
        let mut a = Attributor::default();
        // The stop interrupted a sleep: the call is there, but the stop is most of it.
        a.blocked_call(1, 2, sleep_call(1_000_000, 21_000_000));
        let w = window(
            500_000,
            721_000_000,
            &[(cause::SLEEP, 20_000_000), (cause::STOPPED, 700_000_000)],
        );
        let stall = a.close(w, |t| t);
        assert_eq!(stall.cause, Cause::Stopped);
        assert_eq!(stall.causes[&Cause::Stopped], 700_000_000);
        assert_eq!(
            (stall.culprit, stall.syscall, stall.task),
            (None, None, None)
        );
        assert!(stall.stack.is_empty());
    }

    #[test]
    fn evidence_outside_the_window_does_not_count() {
        let mut a = Attributor::default();
        a.blocked_call(1, 2, sleep_call(0, 100));
        a.blocked_call(1, 2, sleep_call(5_000, 9_000));
        let stall = a.close(window(1_000, 2_000, &[]), |t| t);
        assert_eq!(stall.cause, Cause::Cpu);
        assert!(stall.stack.is_empty() && stall.culprit.is_none());
        // The later call is kept for the next stall.
        let next = a.close(window(4_000, 10_000, &[(cause::SLEEP, 4_000)]), |t| t);
        assert_eq!(next.culprit.unwrap().function, "inner");
    }

    #[test]
    fn cpu_stalls_blame_the_most_sampled_function() {
        let mut a = Attributor::default();
        for (ts, f) in [
            (10, "hash_pw"),
            (20, "hash_pw"),
            (30, "log"),
            (40, "hash_pw"),
        ] {
            a.cpu_sample(1, 2, sample(ts, f));
        }
        a.cpu_sample(1, 2, sample(99_999, "later"));
        let stall = a.close(window(0, 50, &[]), |t| t);
        assert_eq!(stall.cause, Cause::Cpu);
        assert_eq!((stall.cpu_samples, stall.stack_samples), (4, 3));
        assert_eq!(stall.culprit.unwrap().function, "hash_pw");
        assert_eq!(stall.syscall, None);
    }

    #[test]
    fn cpu_stalls_blame_the_most_sampled_line_of_that_function() {
        let mut a = Attributor::default();
        // A long C call on line 25, then the last sample on the statement after it.
        for (ts, f, line) in [
            (10, "hash_pw", 25),
            (20, "hash_pw", 25),
            (25, "log", 7),
            (26, "log", 7),
            (30, "hash_pw", 25),
            (40, "hash_pw", 26),
        ] {
            a.cpu_sample(1, 2, sample_at(ts, f, line));
        }
        let stall = a.close(window(0, 50, &[]), |t| t);
        assert_eq!((stall.cpu_samples, stall.stack_samples), (6, 4));
        let culprit = stall.culprit.unwrap();
        assert_eq!((culprit.function.as_str(), culprit.line), ("hash_pw", 25));
    }

    #[test]
    fn gil_stalls_blame_the_holder_and_keep_the_loops_own_stack() {
        let mut a = Attributor::default();
        a.gil_wait(
            1,
            2,
            GilWait {
                start_ns: 100,
                end_ns: 900,
                holder_tid: Some(77),
                holder_stack: vec![frame("crunch", "/app/worker.py")],
                own_stack: vec![frame("handle_ping", "/app/svc.py")],
                task: Some("Task-3".into()),
            },
        );
        let stall = a.close(window(0, 1_000, &[(cause::GIL, 800)]), |t| t);
        assert_eq!(stall.cause, Cause::Gil);
        assert_eq!(stall.gil_holder_tid, Some(77));
        assert_eq!(stall.culprit.unwrap().function, "crunch");
        assert_eq!(stall.culprit_from, Some(CulpritFrom::Evidence));
        assert_eq!(stall.gil_holder_stack[0].function, "crunch");
        assert_eq!(stall.stack[0].function, "handle_ping");
        assert_eq!(stall.task.as_deref(), Some("Task-3"));
    }

    fn stack_sample(ts_ns: u64, stack: &[(&str, u32)]) -> CpuSample {
        CpuSample {
            ts_ns,
            stack: (stack.iter())
                .map(|&(function, line)| fixtures::frame(function, "/app/svc.py", line))
                .collect(),
            task: None,
        }
    }

    #[test]
    fn cpu_stalls_show_the_commonest_stack_not_the_latest() {
        let mut a = Attributor::default();
        // The C encoder runs under `iterencode` for most of the stall; the last sample
        // lands back in `encode`.
        for ts in [10, 20, 30] {
            a.cpu_sample(1, 2, stack_sample(ts, &[("iterencode", 9), ("handler", 4)]));
        }
        a.cpu_sample(1, 2, stack_sample(40, &[("encode", 5), ("handler", 4)]));
        let stall = a.close(window(0, 50, &[]), |t| t);
        assert_eq!((stall.cpu_samples, stall.stack_samples), (4, 3));
        let functions: Vec<&str> = stall.stack.iter().map(|f| f.function.as_str()).collect();
        assert_eq!(functions, ["iterencode", "handler"]);
        assert_eq!(stall.culprit.unwrap().function, "iterencode");
    }

    #[test]
    fn many_short_calls_are_evidence_of_their_cause() {
        let mut a = Attributor::default();
        // Reports of 0.5 ms sleeps, two by two: three from `n_plus_one`, one elsewhere.
        let short = |end_ns: u64, function: &str| BlockedCall {
            stack: vec![frame(function, "/app/svc.py")],
            short: Some(ShortCalls {
                calls: 2,
                total_ns: 1_000,
            }),
            ..sleep_call(end_ns - 500, end_ns)
        };
        for (end, function) in [
            (2_000, "n_plus_one"),
            (4_000, "warm_up"),
            (6_000, "n_plus_one"),
        ] {
            a.blocked_call(1, 2, short(end, function));
        }
        a.blocked_call(1, 2, short(8_000, "n_plus_one"));
        let stall = a.close(window(0, 9_000, &[(cause::SLEEP, 8_000)]), |t| t);
        assert_eq!(stall.culprit_from, Some(CulpritFrom::Evidence));
        assert_eq!(stall.culprit.unwrap().function, "n_plus_one");
        assert_eq!(stall.syscall.as_deref(), Some("clock_nanosleep"));
        let total = ShortCalls {
            calls: 8,
            total_ns: 4_000,
        };
        assert_eq!(stall.short_calls, Some(total));
        // A long call weighs its duration: 3 µs outweigh 2 µs of short calls.
        for end in [12_000, 14_000] {
            a.blocked_call(1, 2, short(end, "n_plus_one"));
        }
        a.blocked_call(1, 2, sleep_call(15_000, 18_000));
        let stall = a.close(window(10_000, 19_000, &[(cause::SLEEP, 8_000)]), |t| t);
        assert_eq!(stall.culprit.unwrap().function, "inner");
        let total = ShortCalls {
            calls: 4,
            total_ns: 2_000,
        };
        assert_eq!(stall.short_calls, Some(total));
    }

    #[test]
    fn a_stall_without_evidence_of_its_cause_shows_the_last_stack_seen() {
        let mut a = Attributor::default();
        // A short socket read in a stall that is almost all `other`.
        let mut read = sleep_call(1_000, 2_000);
        (read.nr, read.cause) = (0, Cause::Io);
        a.blocked_call(1, 2, read);
        let stall = a.close(window(0, 400_000, &[(cause::OTHER, 390_000)]), |t| t);
        assert_eq!(stall.cause, Cause::Other);
        assert_eq!(stall.syscall, None, "the read is not the stall's cause");
        assert_eq!(stall.culprit_from, Some(CulpritFrom::LastSeen));
        assert_eq!(stall.culprit.unwrap().function, "inner");
        // Nothing seen at all: no culprit, and nothing said about one.
        let empty = a.close(window(500_000, 900_000, &[(cause::OTHER, 390_000)]), |t| t);
        assert_eq!((empty.culprit, empty.culprit_from), (None, None));
    }

    #[test]
    fn a_gone_process_leaves_nothing_behind() {
        let mut a = Attributor::default();
        a.blocked_call(1, 2, sleep_call(1_000, 9_000));
        a.forget_process(1);
        assert!(a.close(window(500, 10_000, &[]), |t| t).culprit.is_none());
        // A reused tid in another process does not inherit the old calls.
        a.blocked_call(1, 2, sleep_call(1_000, 9_000));
        a.blocked_call(7, 2, sleep_call(20_000, 21_000));
        let reused = StallWindow {
            pid: 7,
            ..window(500, 30_000, &[])
        };
        assert_eq!(a.close(reused, |t| t).stack.len(), 2);
        assert!(a.close(window(500, 30_000, &[]), |t| t).culprit.is_none());
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
