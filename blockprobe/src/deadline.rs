//! Work on what a target process controls (its files, which may sit on a FUSE mount
//! whose daemon never answers; its memory, which may be a page registered with
//! userfaultfd that nobody serves) run so that it cannot hang the tracer: on a thread of
//! its own, waited for at most a deadline. A thread stuck in the kernel cannot be
//! cancelled, so one that misses it is left behind:
//! - [`run`], for one-off work (inspecting a process), starts a thread per call and
//!   counts those left behind; past [`MAX_HUNG`], later work is refused at once instead
//!   of piling up threads;
//! - a [`Worker`], for a process's many reads (its stacks), is one thread that keeps
//!   its state (caches) between jobs; while a job that missed its deadline still runs,
//!   later jobs are refused at once: a hung target costs one thread and one wait.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};

/// Workers still running past their deadline, at most: beyond, work is refused.
pub const MAX_HUNG: usize = 4;

/// The error of work refused because [`MAX_HUNG`] earlier workers are still hung: it
/// says nothing of the work's own target, which may be tried again once they finish.
#[derive(Debug)]
pub struct Refused {
    what: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = &self.what;
        write!(
            f,
            "{what}: refused, {MAX_HUNG} earlier such reads are still hung"
        )
    }
}

impl std::error::Error for Refused {}

/// Workers started and not finished yet.
static RUNNING: AtomicUsize = AtomicUsize::new(0);

/// Runs `work` on a thread of its own and returns its result, or an error naming
/// `what` when it takes longer than `limit` (the thread is then left to finish alone).
pub fn run<T: Send + 'static>(
    what: &str,
    limit: Duration,
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    run_counted(&RUNNING, what, limit, work)
}

/// [`run`], counting workers in `running`.
fn run_counted<T: Send + 'static>(
    running: &'static AtomicUsize,
    what: &str,
    limit: Duration,
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    // Only this (single) caller starts workers: a count under the bound stays so.
    if running.load(Ordering::Acquire) >= MAX_HUNG {
        return Err(Refused { what: what.into() }.into());
    }
    running.fetch_add(1, Ordering::AcqRel);
    let (done, result) = mpsc::sync_channel(1);
    let spawned = std::thread::Builder::new()
        .name("blockprobe-read".into())
        .spawn(move || {
            let _ = done.send(work());
            running.fetch_sub(1, Ordering::AcqRel);
        });
    if let Err(e) = spawned {
        running.fetch_sub(1, Ordering::AcqRel);
        return Err(e).with_context(|| format!("{what}: cannot start a thread"));
    }
    match result.recv_timeout(limit) {
        Ok(result) => result,
        Err(_) => Err(anyhow!(
            "{what}: no answer after {limit:?} (a file on a hung file system?); given up"
        )),
    }
}

/// Stack size of a [`Worker`]'s thread: its jobs keep their data on the heap.
const WORKER_STACK_BYTES: usize = 256 * 1024;

/// A job of a [`Worker`] over state `S`.
type Job<S> = Box<dyn FnOnce(&mut S) + Send>;

/// Why a [`Worker`]'s job gave no answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoAnswer {
    /// It missed its deadline now (it goes on alone; the worker is busy until it ends).
    Missed,
    /// Not run: an earlier job missed its deadline and still runs, or did so recently.
    Refused,
}

/// A thread of its own that owns `S` (what the jobs need: a process's memory, caches)
/// and runs jobs on it one at a time, each waited for at most a deadline. After a miss,
/// jobs are refused at once while the late one runs, and for a pause after the miss (a
/// target that answers slowly, not never, costs one wait per pause). The thread ends
/// when the worker is dropped and its last job is done.
pub struct Worker<S> {
    jobs: mpsc::Sender<Job<S>>,
    /// Jobs sent and not done yet.
    pending: Arc<AtomicUsize>,
    /// How long a job is waited for.
    limit: Duration,
    /// How long jobs are refused after a miss.
    pause: Duration,
    /// When a job last missed its deadline.
    missed_at: Option<Instant>,
}

impl<S> fmt::Debug for Worker<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("pending", &self.pending.load(Ordering::Acquire))
            .field("limit", &self.limit)
            .field("missed_at", &self.missed_at)
            .finish()
    }
}

impl<S: Send + 'static> Worker<S> {
    /// Starts a worker owning `state`, whose jobs are waited for at most `limit`, and
    /// refused for `pause` after one missed it.
    pub fn new(state: S, limit: Duration, pause: Duration) -> anyhow::Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job<S>>();
        std::thread::Builder::new()
            .name("blockprobe-read".into())
            .stack_size(WORKER_STACK_BYTES)
            .spawn(move || {
                let mut state = state;
                while let Ok(job) = queue.recv() {
                    job(&mut state);
                }
            })
            .context("cannot start a thread to read a process")?;
        Ok(Worker {
            jobs,
            pending: Arc::new(AtomicUsize::new(0)),
            limit,
            pause,
            missed_at: None,
        })
    }

    /// Runs `job` on the worker's state and returns its result, or why there is none.
    pub fn run<T: Send + 'static>(
        &mut self,
        job: impl FnOnce(&mut S) -> T + Send + 'static,
    ) -> Result<T, NoAnswer> {
        let pausing = self.missed_at.is_some_and(|at| at.elapsed() < self.pause);
        if pausing || self.pending.load(Ordering::Acquire) > 0 {
            return Err(NoAnswer::Refused);
        }
        let (answer, result) = mpsc::sync_channel(1);
        self.pending.fetch_add(1, Ordering::AcqRel);
        let pending = Arc::clone(&self.pending);
        let sent = self.jobs.send(Box::new(move |state: &mut S| {
            let value = job(state);
            // Done before the answer: the next job, sent once it is received, runs.
            pending.fetch_sub(1, Ordering::AcqRel);
            let _ = answer.send(value);
        }));
        if sent.is_err() {
            // The thread is gone (a job panicked): nothing will run.
            self.missed_at = Some(Instant::now());
            return Err(NoAnswer::Refused);
        }
        result.recv_timeout(self.limit).map_err(|_| {
            self.missed_at = Some(Instant::now());
            NoAnswer::Missed
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::bail;

    #[test]
    fn a_worker_keeps_its_state_and_refuses_work_while_a_job_hangs() {
        let limit = Duration::from_millis(50);
        let pause = Duration::from_millis(200);
        let mut worker = Worker::new(0u32, limit, pause).unwrap();
        assert_eq!(worker.run(|n| *n += 1), Ok(()));
        assert_eq!(worker.run(|n| *n), Ok(1), "the state is kept");
        let (release, hung) = mpsc::channel::<()>();
        let late = worker.run(move |n| {
            let _ = hung.recv();
            *n += 1;
        });
        assert_eq!(late, Err(NoAnswer::Missed));
        // Refused at once while it hangs, however long after the miss.
        let since = Instant::now();
        assert_eq!(worker.run(|n| *n), Err(NoAnswer::Refused));
        assert!(since.elapsed() < limit, "a refusal does not wait");
        std::thread::sleep(pause);
        assert_eq!(worker.run(|n| *n), Err(NoAnswer::Refused));
        // Once the late job is done and the pause is over, jobs run again on its state.
        release.send(()).unwrap();
        let since = Instant::now();
        loop {
            match worker.run(|n| *n) {
                Ok(n) => break assert_eq!(n, 2),
                Err(e) => assert_eq!(e, NoAnswer::Refused),
            }
            assert!(since.elapsed() < Duration::from_secs(5));
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_worker_pauses_after_a_miss_even_once_the_late_job_is_done() {
        let limit = Duration::from_millis(20);
        let mut worker = Worker::new((), limit, Duration::from_secs(60)).unwrap();
        let late = worker.run(move |()| std::thread::sleep(2 * limit));
        assert_eq!(late, Err(NoAnswer::Missed));
        std::thread::sleep(4 * limit);
        assert_eq!(worker.run(|()| ()), Err(NoAnswer::Refused));
    }

    #[test]
    fn hung_work_is_abandoned_and_bounded() {
        static RUNNING: AtomicUsize = AtomicUsize::new(0);
        let limit = Duration::from_millis(50);
        assert_eq!(run_counted(&RUNNING, "quick", limit, || Ok(7)).unwrap(), 7);
        let failing = run_counted::<()>(&RUNNING, "failing", limit, || bail!("no"));
        assert_eq!(failing.unwrap_err().to_string(), "no");
        let (release, hung) = std::sync::mpsc::channel::<()>();
        let hung = std::sync::Arc::new(std::sync::Mutex::new(hung));
        for _ in 0..MAX_HUNG {
            let hung = hung.clone();
            let err = run_counted(&RUNNING, "reading f", limit, move || {
                let _ = hung.lock().unwrap().recv();
                Ok(())
            })
            .unwrap_err();
            assert!(err.to_string().contains("no answer after 50ms"), "{err}");
        }
        let err = run_counted(&RUNNING, "reading g", limit, || Ok(())).unwrap_err();
        assert!(err.to_string().contains("refused"), "{err}");
        assert!(err.is::<Refused>(), "{err}");
        // Once the hung ones finish, work runs again.
        for _ in 0..MAX_HUNG {
            release.send(()).unwrap();
        }
        let since = std::time::Instant::now();
        while RUNNING.load(Ordering::Acquire) > 0 {
            assert!(since.elapsed() < Duration::from_secs(5));
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(run_counted(&RUNNING, "again", limit, || Ok(1)).unwrap(), 1);
    }
}
