//! Process lifecycle: the `run` family, candidates for tracing, exec and exit.

use aya_ebpf::{bindings::BPF_NOEXIST, programs::RawTracePointContext};
use blockprobe_common::{
    config::Scope,
    counters::Counter,
    event::{CandidateEvent, EventKind, ProcessGoneEvent, candidate_reason, gone_reason},
};

use crate::{
    emit::{current_ids, header, now_ns, reserve},
    maps::{
        ANNOUNCED, FAMILY, GIL_WAITS, LOOP_TIMING, PROCESSES, THREAD_CLASS, config, count,
        is_loop_thread, mark_loop_thread,
    },
    task::{task_tgid, task_tid},
};

/// What [`announce_if_in_scope`] found.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Announce {
    /// The process is not in scope.
    OutOfScope,
    /// Userspace was told now.
    Now,
    /// Userspace was told before (or the ring buffer was full, counted). A process
    /// announced at its exec is told once more at its first poll call.
    Before,
}

/// Tells userspace, once per process, that an untraced process in scope may be Python.
#[inline(always)]
pub fn announce_if_in_scope(tgid: u32, reason: u32) -> Announce {
    let Some(config) = config() else {
        return Announce::OutOfScope;
    };
    let in_scope = match config.scope {
        s if s == Scope::Host as u32 => true,
        // SAFETY: read-only lookup.
        s if s == Scope::Family as u32 => unsafe { FAMILY.get(tgid) }.is_some(),
        _ => false,
    };
    if !in_scope {
        return Announce::OutOfScope;
    }
    // Host-wide, every untraced process polls here: a known one costs a lookup, not an
    // update attempt (which takes a node off the LRU's free list before it finds the key).
    if let Some(announced) = ANNOUNCED.get_ptr_mut(tgid) {
        // SAFETY: the pointer comes from a successful lookup in a map we own.
        let announced = unsafe { &mut *announced };
        // Announced at its exec, still untraced (its interpreter was starting up), now
        // polling: told once more, so that userspace tries it again now.
        if *announced != ANNOUNCED_AT_POLL && reason == candidate_reason::POLL {
            if !send_candidate(reason) {
                return Announce::Before;
            }
            *announced = ANNOUNCED_AT_POLL;
            return Announce::Now;
        }
        return Announce::Before;
    }
    let announced = if reason == candidate_reason::POLL {
        ANNOUNCED_AT_POLL
    } else {
        ANNOUNCED_AT_EXEC
    };
    if ANNOUNCED
        .insert(tgid, announced, BPF_NOEXIST as u64)
        .is_err()
    {
        return Announce::Before;
    }
    if send_candidate(reason) {
        return Announce::Now;
    }
    // Unsent (the ring buffer was full, counted): announced again at its next chance,
    // rather than marked announced and never traced.
    let _ = ANNOUNCED.remove(tgid);
    Announce::Before
}

/// [`crate::maps::ANNOUNCED`] value of a process announced at its exec.
const ANNOUNCED_AT_EXEC: u8 = 1;
/// [`crate::maps::ANNOUNCED`] value of a process announced at a poll call.
const ANNOUNCED_AT_POLL: u8 = 2;

/// Sends a candidate event for the current process (`reason`: a [`candidate_reason`]);
/// whether it was sent (else counted as lost).
#[inline(always)]
fn send_candidate(reason: u32) -> bool {
    let Some(mut entry) = reserve::<CandidateEvent>(Counter::LostCandidate) else {
        return false;
    };
    entry.write(CandidateEvent {
        header: header(EventKind::Candidate, now_ns()),
        reason,
        _pad: 0,
    });
    entry.submit(0);
    true
}

/// `sched_process_fork(parent, child)`: in `run` scope, a child process joins its
/// parent's family (a new thread is in it already, by its process).
#[inline(always)]
pub fn on_fork(ctx: &RawTracePointContext) {
    let Some(config) = config() else { return };
    if config.scope != Scope::Family as u32 {
        return;
    }
    let (tgid, _) = current_ids();
    // SAFETY: read-only lookup.
    if unsafe { FAMILY.get(tgid) }.is_none() {
        return;
    }
    let task: *const u8 = ctx.arg(1);
    let (Some(child), Some(child_tgid)) = (task_tid(config, task), task_tgid(config, task)) else {
        return;
    };
    // Threads are never inserted: only the process is removed at exit.
    if child != child_tgid {
        return;
    }
    if FAMILY.insert(child, 1u8, 0).is_err() {
        count(Counter::FamilyMapFull);
    }
}

/// `sched_process_exec(task, old_pid, bprm)`: the old image's walk recipe is void; in `run`
/// scope the new image may be Python.
///
/// The exec'ing thread's class and off-await timing belonged to the old image too: kept,
/// a thread that ran a loop there would count as a loop in the new image without being
/// classified (no `loop` event, even if the new image runs no loop), and the off-await
/// interval open across the exec would end in the new image's first poll as a stall made
/// of the exec and the new interpreter's start-up. A thread other than the leader that
/// execs takes the leader's tid (`de_thread`), so its old tid is forgotten as well.
#[inline(always)]
pub fn on_exec(ctx: &RawTracePointContext) {
    let (tgid, tid) = current_ids();
    forget_thread(tid);
    let old_tid = ctx.arg::<u64>(1) as u32;
    if old_tid != tid {
        forget_thread(old_tid);
    }
    let _ = ANNOUNCED.remove(tgid);
    if PROCESSES.remove(tgid).is_ok() {
        send_gone(gone_reason::EXEC);
    }
    if let Some(config) = config()
        && config.scope == Scope::Family as u32
    {
        let _ = announce_if_in_scope(tgid, candidate_reason::EXEC);
    }
}

/// `sched_process_exit(task[, group_dead])`: forget the thread, and the process when its
/// thread group is dead.
#[inline(always)]
pub fn on_exit(ctx: &RawTracePointContext) {
    let (tgid, tid) = current_ids();
    forget_thread(tid);
    let Some(config) = config() else { return };
    let group_dead = if config.exit_has_group_dead != 0 {
        ctx.arg::<u64>(1) & 1 != 0
    } else {
        tid == tgid
    };
    if !group_dead {
        return;
    }
    let _ = FAMILY.remove(tgid);
    let _ = ANNOUNCED.remove(tgid);
    if PROCESSES.remove(tgid).is_ok() {
        send_gone(gone_reason::EXIT);
    }
}

/// Drops what the loop-thread probes know about thread `tid` (a thread killed in the
/// middle of a GIL wait leaves one behind too).
#[inline(always)]
fn forget_thread(tid: u32) {
    if is_loop_thread(tid) {
        mark_loop_thread(tid, false);
    }
    let _ = THREAD_CLASS.remove(tid);
    let _ = LOOP_TIMING.remove(tid);
    let _ = GIL_WAITS.remove(tid);
}

/// Tells userspace a traced process is gone.
#[inline(always)]
fn send_gone(reason: u32) {
    if let Some(mut entry) = reserve::<ProcessGoneEvent>(Counter::LostProcessGone) {
        entry.write(ProcessGoneEvent {
            header: header(EventKind::ProcessGone, now_ns()),
            reason,
            _pad: 0,
        });
        entry.submit(0);
    }
}
