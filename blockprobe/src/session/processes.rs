//! The traced processes' comings and goings: attaching to a Python process (inspecting
//! it, waiting while it starts, probing the files its loops run from, timing its threads
//! parked in a poll) and noticing that it, or one of its loop threads, left (its exit or
//! exec, also when the kernel side's event about it was lost).

use std::{collections::hash_map::Entry, time::Instant};

use anyhow::Context as _;

use super::{Session, Traced};
use crate::{
    deadline, host, namespaces,
    patience::Patience,
    proc_stat,
    python::{
        Inspection, PythonProcess, probe_site::ProbeSite, running_loop, uvloop::MappedModule,
    },
    report::ProcessInfo,
    session::sink::{DetachReason, Status},
    thread_now,
};

/// A Python process not traceable yet (its runtime is still initializing).
pub(super) struct Starting {
    /// Why it is not traceable yet.
    pub(super) why: String,
    /// When to try again, and when to give up.
    pub(super) patience: Patience,
    /// Its threads the kernel side times since a poll announced the process: their
    /// iteration under way is a stall once the process is traced, and their timing
    /// stops if it never is.
    pub(super) timed: Vec<u32>,
}

/// What happened when blockprobe tried to attach to a process.
pub enum Attach {
    /// Now traced.
    Attached,
    /// Not a Python process.
    NotPython,
    /// Python, but not ready to be traced yet; retried on ticks.
    Waiting,
}

impl Session {
    /// Tries to trace `pid`: Python processes are attached (or retried while starting).
    pub fn attach(&mut self, pid: u32) -> anyhow::Result<Attach> {
        if pid == self.own_pid {
            return Ok(Attach::Attached);
        }
        if self.processes.contains_key(&pid) {
            match self.departure(pid) {
                None => return Ok(Attach::Attached),
                // Its exit or exec event was lost: this is a new process or image.
                Some(reason) => self.process_gone(pid, reason)?,
            }
        }
        let inspected = match PythonProcess::inspect(pid) {
            // Other processes' reads are hung, not this one's: a Python is tried again.
            Err(e) if e.is::<deadline::Refused>() && looks_like_python(pid) => {
                Inspection::NotReady(format!("{e:#}"))
            }
            inspected => inspected?,
        };
        match inspected {
            Inspection::NotPython => {
                self.give_up_starting(pid);
                Ok(Attach::NotPython)
            }
            Inspection::NotReady(why) => {
                let count = self.starting.len() + usize::from(!self.starting.contains_key(&pid));
                match self.starting.entry(pid) {
                    Entry::Occupied(mut starting) => {
                        let starting = starting.get_mut();
                        starting.why = why;
                        starting.patience.failed_again(count);
                    }
                    Entry::Vacant(vacant) => {
                        vacant.insert(Starting {
                            why,
                            patience: Patience::new(pid, count),
                            timed: Vec::new(),
                        });
                    }
                }
                Ok(Attach::Waiting)
            }
            Inspection::Ready(python) => self.trace_ready(pid, python).map(|()| Attach::Attached),
        }
    }

    /// Traces `pid`, which `python` describes (an inspection that found it ready).
    pub fn trace_ready(&mut self, pid: u32, python: PythonProcess) -> anyhow::Result<()> {
        self.starting.remove(&pid);
        // The recipe first, and the timing and sampling of polling threads: the first
        // iteration of a loop that started meanwhile is timed already, and is a stall
        // only if it ends after the kernel side can walk its stack (what follows takes
        // tens of milliseconds, more on a busy host).
        self.probes.trace_process(pid, python.walk_config())?;
        self.time_threads_at_attach(pid)?;
        let comm = host::comm(pid);
        let version = python.version().to_string();
        let ns_pid = namespaces::ns_pid(pid);
        let files = self.read_attach_files(pid, &python, &comm)?;
        self.aggregator.register_process(ProcessInfo {
            ns_pid,
            ..files.info
        });
        self.processes.insert(
            pid,
            Traced {
                python,
                start_time: proc_stat::start_time(pid),
                comm: comm.clone(),
                ns_pid,
                uv_runs: Vec::new(),
            },
        );
        // A loop that stops before these probes are in place stays off-await until its
        // next poll, as one timed since the poll that announced its process does: a
        // short window, against a first iteration lost while they attach.
        self.probe_running_loop_set(pid, files.asyncio)?;
        for site in &files.importable_uvloop {
            self.probe_loop_runs(pid, site)?;
        }
        self.probe_mapped_uvloop(pid, files.mapped_uvloop)?;
        // Said once everything is in place: what the process does from now on is seen.
        self.sink.status(&Status::Attached {
            pid,
            ns_pid,
            comm,
            python_version: version,
        })?;
        self.find_running_loops(pid)
    }

    /// Times the threads of newly traced process `pid` that are parked in a poll call
    /// (an idle loop waits there for its next iteration, which may be a stall), and
    /// samples those the kernel side times already since a poll announced the process
    /// (a first iteration under way may be CPU-bound: its samples name the culprit).
    fn time_threads_at_attach(&mut self, pid: u32) -> anyhow::Result<()> {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return Ok(());
        };
        for task in tasks.flatten() {
            let Some(tid) = task
                .file_name()
                .to_str()
                .and_then(|t| t.parse::<u32>().ok())
            else {
                continue;
            };
            if thread_now::polled_fd(pid, tid).is_some() {
                self.probes.time_parked_thread(tid)?;
            } else if self.probes.loop_timing(tid).is_some() {
                self.sample(pid, tid)?;
            }
        }
        Ok(())
    }

    /// Probes asyncio's `_set_running_loop` where it was `found` in the files of traced
    /// process `pid` (each file once): an asyncio loop's off-await time then ends when the
    /// loop stops running. A file that may hold `_asyncio` but could not be read, or whose
    /// function could not be probed, is a warning: its loops' time between two runs counts
    /// until their next poll.
    fn probe_running_loop_set(
        &mut self,
        pid: u32,
        found: running_loop::Found,
    ) -> anyhow::Result<()> {
        self.asyncio_files.extend(found.examined);
        let probed = (found.sites.iter()).map(|site| self.probes.probe_running_loop_set(site));
        let failures: Vec<anyhow::Error> = (probed.filter_map(Result::err))
            .chain(found.failures)
            .collect();
        for e in failures {
            self.warn_of(
                pid,
                format!(
                    "pid {pid}: asyncio loops stopped between runs count as blocked until their next poll: {e:#}"
                ),
            )?;
        }
        Ok(())
    }

    /// Probes the uvloop modules traced process `pid` maps now, while it has none: its
    /// mappings are read anew (it may have imported uvloop since).
    pub(super) fn probe_newly_mapped_uvloop(&mut self, pid: u32) -> anyhow::Result<()> {
        if (self.processes.get(&pid)).is_some_and(|traced| traced.uv_runs.is_empty()) {
            let modules = self.read_mapped_uvloop(pid)?;
            self.probe_mapped_uvloop(pid, modules)?;
        }
        Ok(())
    }

    /// Probes `modules`, the uvloop modules traced process `pid` maps, once it has any,
    /// and remembers where their `uv_run` lies.
    fn probe_mapped_uvloop(&mut self, pid: u32, modules: Vec<MappedModule>) -> anyhow::Result<()> {
        if !(self.processes.get(&pid)).is_some_and(|traced| traced.uv_runs.is_empty()) {
            return Ok(());
        }
        for module in modules {
            self.probe_loop_runs(pid, &module.site)?;
            if let Some(traced) = self.processes.get_mut(&pid) {
                traced.uv_runs.push(module.run);
            }
        }
        Ok(())
    }

    /// Probes `uv_run` at `site` for process `pid`; a failure is a warning.
    fn probe_loop_runs(&mut self, pid: u32, site: &ProbeSite) -> anyhow::Result<()> {
        if let Err(e) = self.probes.probe_loop_runs(site) {
            self.warn_of(
                pid,
                format!(
                    "pid {pid}: uvloop loops of {} are found only at their polls: {e:#}",
                    site.path
                ),
            )?;
        }
        Ok(())
    }

    /// Attaches to every Python process already running on the host.
    pub fn attach_existing(&mut self) -> anyhow::Result<()> {
        for entry in std::fs::read_dir("/proc").context("listing /proc")? {
            let Some(pid) = entry?
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            self.attach_quietly(pid)?;
        }
        Ok(())
    }

    /// Attaches to `pid` if it is Python; an error becomes one warning, not a failure.
    pub(super) fn attach_quietly(&mut self, pid: u32) -> anyhow::Result<()> {
        if let Err(e) = self.attach(pid) {
            self.give_up_starting(pid);
            // A process that exited meanwhile (a pyenv shim) or that does not even look
            // like Python (an init we may not read) is no news.
            if looks_like_python(pid) && self.given_up.insert(pid) {
                self.warn(format!("not tracing pid {pid}: {e:#}"))?;
            }
        }
        Ok(())
    }

    /// Stops retrying `pid`, which will not be traced: its threads timed meanwhile are
    /// timed no more. Why it was not traceable, if it was starting.
    pub(super) fn give_up_starting(&mut self, pid: u32) -> Option<String> {
        let starting = self.starting.remove(&pid)?;
        for tid in starting.timed {
            self.probes.stop_timing(tid);
        }
        Some(starting.why)
    }

    /// Forgets process `pid`, which exited or exec'd; says so when it was traced.
    pub(super) fn process_gone(&mut self, pid: u32, reason: DetachReason) -> anyhow::Result<()> {
        self.starting.remove(&pid);
        self.given_up.remove(&pid);
        self.loop_tstates.retain(|_, (p, _)| *p != pid);
        self.loop_threads.retain(|_, p| *p != pid);
        self.verdicts.retain(|_, v| v.pid != pid);
        self.stuck_at_attach.retain(|_, (p, _)| *p != pid);
        self.forget_unwatched(pid);
        self.attributor.forget_process(pid);
        self.host_tids.forget_process(pid);
        self.probes.forget_process(pid);
        if self.processes.remove(&pid).is_some() {
            self.sink.status(&Status::Detached { pid, reason })?;
        }
        Ok(())
    }

    /// Whether traced process `pid` has left without the kernel side's event saying so
    /// (lost when its buffer was full): the kernel no longer walks it, and it exited
    /// (its pid is gone, or another process's) or exec'd.
    fn departure(&self, pid: u32) -> Option<DetachReason> {
        let traced = self.processes.get(&pid)?;
        let same_process = proc_stat::start_time(pid) == traced.start_time;
        departure(
            same_process,
            self.probes.is_tracing(pid),
            // A zombie: exited, its exit event maybe still on its way.
            !proc_stat::thread_lives(pid, pid),
        )
    }

    /// Forgets the loop threads that exited (or are zombies): their sampler, evidence
    /// and thread state go, and the metrics stop counting them. Short-lived loop threads
    /// (a thread and a loop per call, as asgiref's `async_to_sync`) leave nothing behind.
    pub(super) fn sweep_loop_threads(&mut self) -> anyhow::Result<()> {
        let gone: Vec<(u32, u32)> = (self.loop_threads.iter())
            .filter(|&(&tid, &pid)| !proc_stat::thread_lives(pid, tid))
            .map(|(&tid, &pid)| (tid, pid))
            .collect();
        for (tid, pid) in gone {
            self.loop_threads.remove(&tid);
            self.loop_tstates.remove(&tid);
            self.attributor.forget_thread(tid);
            self.probes.stop_sampling_thread(tid);
            self.sink.status(&Status::LoopGone { pid, tid })?;
        }
        Ok(())
    }

    /// Forgets the traced processes that left without the kernel side saying so.
    pub(super) fn sweep_gone(&mut self) -> anyhow::Result<()> {
        self.last_sweep = Instant::now();
        let gone: Vec<(u32, DetachReason)> = (self.processes.keys())
            .filter_map(|&pid| Some((pid, self.departure(pid)?)))
            .collect();
        for (pid, reason) in gone {
            self.process_gone(pid, reason)?;
        }
        self.given_up
            .retain(|&pid| proc_stat::start_time(pid).is_some());
        Ok(())
    }
}

/// How a traced process left, if it did: `same_process` when its pid still has the
/// start time it had when attached, `kernel_tracing` when the kernel side still walks it,
/// `leader_dead` when its main thread is gone or a zombie.
fn departure(same_process: bool, kernel_tracing: bool, leader_dead: bool) -> Option<DetachReason> {
    match (same_process, kernel_tracing, leader_dead) {
        (false, _, _) => Some(DetachReason::Exit),
        (true, true, _) => None,
        (true, false, true) => Some(DetachReason::Exit),
        (true, false, false) => Some(DetachReason::Exec),
    }
}

/// Whether `pid` still runs an executable whose name says Python (`python3.11`,
/// `python`, `pypy3`…): inspection failures of other processes are not worth a warning.
fn looks_like_python(pid: u32) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .and_then(|exe| exe.file_name().map(|n| n.to_string_lossy().to_lowercase()))
        .is_some_and(|name| name.contains("py"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_whose_exit_or_exec_was_lost_is_told_apart() {
        // Still walked: still there (its main thread may have exited before the others).
        assert_eq!(departure(true, true, false), None);
        assert_eq!(departure(true, true, true), None);
        // The kernel forgot it and the process runs on: it exec'd.
        assert_eq!(departure(true, false, false), Some(DetachReason::Exec));
        // The kernel forgot it and it is a zombie: it exited.
        assert_eq!(departure(true, false, true), Some(DetachReason::Exit));
        // Another start time (or none): it exited, maybe another process has its pid.
        assert_eq!(departure(false, true, false), Some(DetachReason::Exit));
        assert_eq!(departure(false, false, true), Some(DetachReason::Exit));
    }
}
