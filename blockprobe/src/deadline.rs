//! Work on what a target process controls (its files, which may sit on a FUSE mount
//! whose daemon never answers; its memory) run so that it cannot hang the tracer: on a
//! thread of its own, waited for at most a deadline. A worker that misses it is left
//! behind (a thread stuck in the kernel cannot be cancelled) and counted; past
//! [`MAX_HUNG`] such workers, later work is refused at once instead of piling up threads.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

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

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::bail;

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
