//! Turning kernel measurements into stalls: where the stall's time went (causes, from the
//! scheduler), and who is to blame (culprit, from the evidence that fits the main cause:
//! the blocking call, the CPU samples, or the thread that held the GIL).

use std::collections::{BTreeMap, VecDeque};

use foldhash::HashMap;

use blockprobe_common::cause;

use crate::{
    model::{Cause, FdKind, Frame, Stall},
    python::origin::{Origin, classify},
    syscalls,
};

/// Evidence remembered per thread and kind while waiting for its stall to close.
const MAX_PENDING: usize = 256;

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
}

/// A loop thread's long wait for the GIL, with the holder's stack.
#[derive(Clone, Debug)]
pub struct GilWait {
    /// When the wait began (monotonic ns).
    pub start_ns: u64,
    /// When it ended (monotonic ns).
    pub end_ns: u64,
    /// The holder's native tid, if the interpreter records it.
    pub holder_tid: Option<u32>,
    /// The holder's Python stack when the wait began, innermost first.
    pub stack: Vec<Frame>,
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
    calls: VecDeque<BlockedCall>,
    gil_waits: VecDeque<GilWait>,
    samples: VecDeque<CpuSample>,
}

/// Appends to a bounded queue, dropping the oldest entry when full.
fn push_bounded<T>(queue: &mut VecDeque<T>, item: T) {
    if queue.len() == MAX_PENDING {
        queue.pop_front();
    }
    queue.push_back(item);
}

/// Takes the items of `queue` that ended inside `[start, end]`; drops older ones and
/// keeps later ones for the next stall.
fn take_window<T>(queue: &mut VecDeque<T>, start: u64, end: u64, at: impl Fn(&T) -> u64) -> Vec<T> {
    queue.retain(|item| at(item) >= start);
    let (inside, later): (Vec<T>, Vec<T>) = queue.drain(..).partition(|item| at(item) <= end);
    queue.extend(later);
    inside
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

    /// Remembers a blocking call of loop thread `tid` of process `pid`.
    pub fn blocked_call(&mut self, pid: u32, tid: u32, call: BlockedCall) {
        push_bounded(&mut self.pending(pid, tid).calls, call);
    }

    /// Remembers a GIL wait of loop thread `tid` of process `pid`.
    pub fn gil_wait(&mut self, pid: u32, tid: u32, wait: GilWait) {
        push_bounded(&mut self.pending(pid, tid).gil_waits, wait);
    }

    /// Remembers a CPU sample of loop thread `tid` of process `pid`.
    pub fn cpu_sample(&mut self, pid: u32, tid: u32, sample: CpuSample) {
        push_bounded(&mut self.pending(pid, tid).samples, sample);
    }

    /// The stack of the latest CPU sample of loop thread `tid`, if any is pending.
    pub fn latest_sample(&self, tid: u32) -> Option<&[Frame]> {
        let sample = self.threads.get(&tid)?.samples.back()?;
        Some(&sample.stack)
    }

    /// Forgets the evidence of thread `tid` (it runs no loop).
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
                take_window(&mut p.calls, start, end, |c| c.end_ns),
                take_window(&mut p.gil_waits, start, end, |w| w.end_ns),
                take_window(&mut p.samples, start, end, |s| s.ts_ns),
            ),
            _ => Default::default(),
        };
        let duration_ns = end.saturating_sub(start);
        let causes = causes(duration_ns, &window.off_cpu_ns);
        let cause = main_cause(&causes);
        let mut stall = Stall {
            pid: window.pid,
            tid: window.tid,
            comm: window.comm,
            start_unix_ns: to_unix_ns(start),
            duration_ns,
            cause,
            syscall: None,
            fd_kind: None,
            causes,
            stack: Vec::new(),
            culprit: None,
            gil_holder_tid: None,
            task: None,
            cpu_samples: 0,
            ongoing: false,
            started_before_tracing: false,
        };
        let longest_call = |want: Option<Cause>| {
            calls
                .iter()
                .filter(|c| want.is_none_or(|w| c.cause == w))
                .max_by_key(|c| c.end_ns - c.start_ns)
        };
        let longest_gil_wait = gil_waits.iter().max_by_key(|w| w.end_ns - w.start_ns);
        match cause {
            Cause::Gil if longest_gil_wait.is_some() => {
                let wait = longest_gil_wait.expect("checked above");
                stall.syscall = Some("futex".to_owned());
                stall.stack.clone_from(&wait.stack);
                stall.gil_holder_tid = wait.holder_tid;
            }
            Cause::Cpu | Cause::Runqueue if !samples.is_empty() => {
                let (count, sample) = most_frequent(&samples);
                stall.cpu_samples = count;
                if let Some(sample) = sample {
                    stall.stack.clone_from(&sample.stack);
                    stall.task.clone_from(&sample.task);
                }
            }
            _ => {
                if let Some(call) = longest_call(Some(cause)).or_else(|| longest_call(None)) {
                    stall.syscall = syscalls::name(call.nr).map(str::to_owned);
                    stall.fd_kind = call.fd_kind;
                    stall.stack.clone_from(&call.stack);
                    stall.task.clone_from(&call.task);
                }
            }
        }
        stall.culprit = culprit(&stall.stack);
        stall
    }
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

/// The number of samples sharing the most frequent culprit function, and the latest
/// sample on that function's most frequent line: the line where the time went, not
/// wherever the last sample happened to land (e.g. the statement after a long C call).
fn most_frequent(samples: &[CpuSample]) -> (u32, Option<&CpuSample>) {
    // Culprit function (line 0) -> (samples, latest index), and the same per line.
    let mut by_function: HashMap<Option<Frame>, (u32, usize)> = HashMap::default();
    let mut by_line: HashMap<Option<Frame>, (u32, usize)> = HashMap::default();
    for (i, sample) in samples.iter().enumerate() {
        let line = culprit(&sample.stack);
        let function = line.clone().map(|f| Frame { line: 0, ..f });
        for (map, key) in [(&mut by_function, function), (&mut by_line, line)] {
            let entry = map.entry(key).or_insert((0, i));
            entry.0 += 1;
            entry.1 = i;
        }
    }
    let best = |counts: HashMap<Option<Frame>, (u32, usize)>| {
        (counts.into_iter()).max_by_key(|&(_, (count, latest))| (count, latest))
    };
    let Some((function, (count, _))) = best(by_function) else {
        return (0, None);
    };
    let same_function = |line: &Option<Frame>| {
        line.as_ref().map(|f| (&f.function, &f.file))
            == function.as_ref().map(|f| (&f.function, &f.file))
    };
    by_line.retain(|line, _| same_function(line));
    let sample = best(by_line).and_then(|(_, (_, latest))| samples.get(latest));
    (count, sample)
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
        }
    }

    fn sample(ts_ns: u64, function: &str) -> CpuSample {
        sample_at(ts_ns, function, 3)
    }

    fn sample_at(ts_ns: u64, function: &str, line: u32) -> CpuSample {
        CpuSample {
            ts_ns,
            stack: vec![Frame {
                line,
                ..frame(function, "/app/svc.py")
            }],
            task: None,
        }
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
        assert_eq!(stall.cpu_samples, 3);
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
        assert_eq!(stall.cpu_samples, 4);
        let culprit = stall.culprit.unwrap();
        assert_eq!((culprit.function.as_str(), culprit.line), ("hash_pw", 25));
    }

    #[test]
    fn gil_stalls_blame_the_holder() {
        let mut a = Attributor::default();
        a.gil_wait(
            1,
            2,
            GilWait {
                start_ns: 100,
                end_ns: 900,
                holder_tid: Some(77),
                stack: vec![frame("crunch", "/app/worker.py")],
            },
        );
        let stall = a.close(window(0, 1_000, &[(cause::GIL, 800)]), |t| t);
        assert_eq!(stall.cause, Cause::Gil);
        assert_eq!(stall.gil_holder_tid, Some(77));
        assert_eq!(stall.culprit.unwrap().function, "crunch");
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
