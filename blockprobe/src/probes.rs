//! Loading blockprobe's BPF object, attaching its programs and handling its maps.

use std::{
    collections::{BTreeMap, HashSet},
    path::Path,
};

use anyhow::Context as _;
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, RingBuf},
    programs::{
        PerfEvent, RawTracePoint, UProbe,
        perf_event::{
            PerfEventConfig, PerfEventLinkId, PerfEventScope, SamplePolicy, SoftwareEvent,
        },
        uprobe::{UProbeAttachLocation, UProbeScope},
    },
};
use blockprobe_common::{
    config::{GlobalConfig, PyProcess, Scope},
    counters::Counter,
    maps,
    thread::{LoopTiming, NO_FD, ThreadClass, class},
};

use crate::{
    bpf_object::{program_mut, take},
    hooks::{self, HookChoice},
    proc_stat,
    python::probe_site::ProbeSite,
    tracefs,
};

/// `bpf_map_update_elem` flag: update an existing entry only.
const BPF_EXIST: u64 = 2;

/// How often the CPU sampler looks at a running loop thread (Hz): a 10 ms stall gets
/// ~10 samples; a sample outside a stall costs one hash lookup.
pub const SAMPLE_HZ: u64 = 997;

/// The compiled kernel side, built by aya-build from blockprobe-ebpf.
static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/blockprobe"));

/// The BPF programs attached to raw tracepoints, each with its tracepoint.
pub const RAW_TRACEPOINTS: &[(&str, &str)] = &[
    ("sched_switch", "sched_switch"),
    ("sched_wakeup", "sched_wakeup"),
    ("process_fork", "sched_process_fork"),
    ("process_exec", "sched_process_exec"),
    ("process_exit", "sched_process_exit"),
];

/// What the kernel side needs to know before it is attached.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Which processes become candidates.
    pub scope: Scope,
    /// Stall threshold.
    pub threshold_ns: u64,
    /// Shortest blocking call reported.
    pub min_block_ns: u64,
    /// Size of the event ring buffer in bytes (power of two, multiple of the page size).
    pub ring_bytes: u32,
}

/// The loaded and attached BPF programs and the maps userspace writes.
pub struct Probes {
    /// Owns the programs and their links: dropping it detaches everything.
    _ebpf: Ebpf,
    processes: HashMap<MapData, u32, PyProcess>,
    family: HashMap<MapData, u32, u8>,
    thread_class: HashMap<MapData, u32, ThreadClass>,
    loop_timing: HashMap<MapData, u32, LoopTiming>,
    loop_threads: Array<MapData, u64>,
    counters: PerCpuArray<MapData, u64>,
    threshold_ns: u64,
    events: Option<RingBuf<MapData>>,
    /// The CPU sampler's link per sampled loop thread, with the thread's process.
    samplers: BTreeMap<u32, (u32, PerfEventLinkId)>,
    /// How the pollers are hooked.
    poll_hook: HookChoice,
    /// Files (device, inode) probed, with the first program probing each.
    probed_files: HashSet<(u64, u64, &'static str)>,
}

/// The programs probing a loop-run function (libuv's `uv_run`), at entry and return.
const LOOP_RUN_PROGRAMS: [&str; 2] = ["loop_run_enter", "loop_run_exit"];
/// The program probing asyncio's `_set_running_loop`.
const RUNNING_LOOP_PROGRAMS: [&str; 1] = ["running_loop_set"];

impl Probes {
    /// Loads the BPF object, writes its configuration and attaches every program.
    pub fn attach(tracefs: &Path, settings: &Settings) -> anyhow::Result<Self> {
        let kernel = crate::kernel::offsets()?;
        let config = GlobalConfig {
            threshold_ns: settings.threshold_ns,
            min_block_ns: settings.min_block_ns,
            task_fsbase_offset: kernel.task_fsbase,
            pt_regs_syscall_nr_offset: kernel.pt_regs_syscall_nr,
            pt_regs_arg0_offset: kernel.pt_regs_arg0,
            pt_regs_arg1_offset: kernel.pt_regs_arg1,
            pt_regs_sp_offset: kernel.pt_regs_sp,
            reclassify_after_ns: 5_000_000_000,
            scope: settings.scope as u32,
            task_pid_offset: u32::try_from(kernel.task_pid)?,
            task_state_offset: u32::try_from(kernel.task_state)?,
            task_jobctl_offset: u32::try_from(kernel.task_jobctl)?,
            task_tgid_offset: u32::try_from(kernel.task_tgid)?,
            fd_path: kernel.fd_path,
            exit_has_group_dead: u32::from(
                tracefs::field_offset(tracefs, "sched", "sched_process_exit", "group_dead")?
                    .is_some(),
            ),
        };
        // One parse of the kernel's BTF (~18 MiB while it lives) serves the loader's
        // relocations and the fentry hooks. `EbpfLoader::new` parses its own: it is
        // dropped, and its memory returned, before this one is made.
        let mut loader = EbpfLoader::new();
        loader.btf(None);
        release_freed_heap();
        let btf = Btf::from_sys_fs().ok();
        let mut ebpf = loader
            .btf(btf.as_ref())
            .map_max_entries(maps::EVENTS, settings.ring_bytes)
            .map_max_entries(maps::LOOP_THREADS, loop_thread_words(pid_max().0))
            .load(BPF_OBJECT)
            .context(
                "loading blockprobe's BPF programs (is this kernel ≥ 5.8 with BPF ring buffers?)",
            )?;
        // Before the ring buffer is mapped, the BTF dropped and its memory returned
        // before that: the start-up peak holds one BTF or the ring, not both.
        let poll_hook = hooks::attach(&mut ebpf, btf.as_ref())?;
        drop(btf);
        release_freed_heap();
        let mut config_map: Array<_, GlobalConfig> =
            Array::try_from(take(&mut ebpf, maps::CONFIG)?)?;
        config_map
            .set(0, config, 0)
            .context("writing the BPF configuration")?;

        let mut probes = Probes {
            processes: HashMap::try_from(take(&mut ebpf, maps::PROCESSES)?)?,
            family: HashMap::try_from(take(&mut ebpf, maps::FAMILY)?)?,
            thread_class: HashMap::try_from(take(&mut ebpf, maps::THREAD_CLASS)?)?,
            loop_timing: HashMap::try_from(take(&mut ebpf, maps::LOOP_TIMING)?)?,
            loop_threads: Array::try_from(take(&mut ebpf, maps::LOOP_THREADS)?)?,
            threshold_ns: settings.threshold_ns,
            counters: PerCpuArray::try_from(take(&mut ebpf, maps::COUNTERS)?)?,
            events: Some(RingBuf::try_from(take(&mut ebpf, maps::EVENTS)?)?),
            samplers: BTreeMap::new(),
            poll_hook,
            probed_files: HashSet::new(),
            _ebpf: ebpf,
        };
        probes.attach_all()?;
        release_freed_heap();
        Ok(probes)
    }

    fn attach_all(&mut self) -> anyhow::Result<()> {
        let ebpf = &mut self._ebpf;
        // Raw tracepoints: cheaper per event than classic ones, and never skipped while a
        // BPF map syscall holds the CPU (classic tracepoint programs are).
        for &(program, tracepoint) in RAW_TRACEPOINTS {
            let tp: &mut RawTracePoint = program_mut(ebpf, program)?.try_into()?;
            tp.load()
                .with_context(|| format!("the kernel verifier rejected BPF program {program}"))?;
            tp.attach(tracepoint)
                .with_context(|| format!("attaching {program} to raw tracepoint {tracepoint}"))?;
        }
        // Attached per file, as each is found (`probe_loop_runs`).
        for program in LOOP_RUN_PROGRAMS.iter().chain(&RUNNING_LOOP_PROGRAMS) {
            let probe: &mut UProbe = program_mut(ebpf, program)?.try_into()?;
            probe
                .load()
                .with_context(|| format!("the kernel verifier rejected BPF program {program}"))?;
        }
        // Attached per loop thread, as each is found (`sample_loop_thread`).
        let sampler: &mut PerfEvent = program_mut(ebpf, "cpu_sample")?.try_into()?;
        sampler
            .load()
            .context("the kernel verifier rejected BPF program cpu_sample")?;
        Ok(())
    }

    /// Starts sampling loop thread `tid` of process `pid` while it runs on a CPU. A timer
    /// bound to the thread, not to the CPUs: idle CPUs are never woken (on a VM each
    /// wake-up from halt costs a round trip through the hypervisor, which cost an
    /// aiohttp server a fifth of its throughput with per-CPU timers), and other
    /// programs are never interrupted. A thread gone meanwhile is not an error.
    pub fn sample_loop_thread(&mut self, pid: u32, tid: u32) -> anyhow::Result<()> {
        if self.samplers.contains_key(&tid) {
            return Ok(());
        }
        self.stop_sampling(|p, t| p == pid && !proc_stat::thread_lives(p, t));
        let sampler: &mut PerfEvent = program_mut(&mut self._ebpf, "cpu_sample")?.try_into()?;
        let attached = sampler.attach(
            PerfEventConfig::Software(SoftwareEvent::TaskClock),
            PerfEventScope::OneProcess {
                pid: tid,
                cpu: None,
            },
            SamplePolicy::Frequency(SAMPLE_HZ),
            false,
        );
        match attached {
            Ok(link) => {
                self.samplers.insert(tid, (pid, link));
                Ok(())
            }
            // Exited (ESRCH also for a zombie whose parent has not reaped it yet).
            Err(e) if no_such_thread(&e) => Ok(()),
            Err(_) if !proc_stat::thread_lives(pid, tid) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("attaching the CPU sampler to thread {tid}")),
        }
    }

    /// Probes a loop written in C (libuv's `uv_run`) at `site`, at entry and return;
    /// whether it was probed just now (see [`Probes::probe_file`]).
    pub fn probe_loop_runs(&mut self, site: &ProbeSite) -> anyhow::Result<bool> {
        self.probe_file(site, &LOOP_RUN_PROGRAMS)
    }

    /// Probes asyncio's `_set_running_loop` at `site`; whether it was probed just now
    /// (see [`Probes::probe_file`]).
    pub fn probe_running_loop_set(&mut self, site: &ProbeSite) -> anyhow::Result<bool> {
        self.probe_file(site, &RUNNING_LOOP_PROGRAMS)
    }

    /// Attaches uprobe `programs` at `site`, in every process that maps its file (the
    /// programs ignore untraced ones), once per file however it is named; whether they
    /// were attached just now. The kernel finds the file through the open one
    /// ([`ProbeSite::attach_path`]): neither the file's path nor its contents are read
    /// here, on the event pump.
    fn probe_file(&mut self, site: &ProbeSite, programs: &[&'static str]) -> anyhow::Result<bool> {
        let (dev, ino) = site.identity();
        if !(self.probed_files).insert((dev, ino, programs[0])) {
            return Ok(false);
        }
        for &program in programs {
            let probe: &mut UProbe = program_mut(&mut self._ebpf, program)?.try_into()?;
            let at = UProbeAttachLocation::AbsoluteOffset(site.offset);
            probe
                .attach(at, site.attach_path(), UProbeScope::AllProcesses)
                .with_context(|| format!("attaching {program} to {}", site.path))?;
        }
        Ok(true)
    }

    /// Stops sampling thread `tid` (it exited, or was found not to run a loop).
    pub fn stop_sampling_thread(&mut self, tid: u32) {
        self.stop_sampling(|_, t| t == tid);
    }

    /// Stops sampling the threads of process `pid` (it exited or exec'd).
    pub fn forget_process(&mut self, pid: u32) {
        self.stop_sampling(|p, _| p == pid);
    }

    /// Detaches the samplers of the threads `(pid, tid)` for which `gone` holds.
    fn stop_sampling(&mut self, gone: impl Fn(u32, u32) -> bool) {
        let tids: Vec<u32> = (self.samplers.iter())
            .filter(|&(&tid, &(pid, _))| gone(pid, tid))
            .map(|(&tid, _)| tid)
            .collect();
        let Ok(sampler) = program_mut(&mut self._ebpf, "cpu_sample")
            .and_then(|p| <&mut PerfEvent>::try_from(p).map_err(Into::into))
        else {
            return;
        };
        for tid in tids {
            if let Some((_, link)) = self.samplers.remove(&tid) {
                // Detaching closes the event; it cannot fail for a link we own.
                let _ = sampler.detach(link);
            }
        }
    }

    /// Hands out the event ring buffer (once).
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// Starts tracing process `pid` with the given stack-walk recipe.
    pub fn trace_process(&mut self, pid: u32, recipe: PyProcess) -> anyhow::Result<()> {
        self.processes
            .insert(pid, recipe, 0)
            .with_context(|| format!("tracing pid {pid}: process map full?"))
    }

    /// Whether the kernel side walks the stacks of `pid`: it forgets a process at its
    /// exit or exec.
    pub fn is_tracing(&self, pid: u32) -> bool {
        self.processes.get(&pid, 0).is_ok()
    }

    /// Adds `pid` to `blockprobe run`'s family: its future children join it.
    pub fn add_to_family(&mut self, pid: u32) -> anyhow::Result<()> {
        self.family
            .insert(pid, 1, 0)
            .with_context(|| format!("adding pid {pid} to the traced family"))
    }

    /// Removes `pid` from the family (its children stay in it).
    pub fn remove_from_family(&mut self, pid: u32) -> anyhow::Result<()> {
        self.family
            .remove(&pid)
            .with_context(|| format!("removing pid {pid} from the traced family"))
    }

    /// Records what userspace decided thread `tid` is (`LOOP` or `NOT_LOOP`) from its
    /// poll call on epoll fd `poll_fd`. The kernel side timed it meanwhile: a thread that
    /// runs no loop is timed no more.
    pub fn classify_thread(
        &mut self,
        tid: u32,
        is_loop: bool,
        poll_fd: u32,
        now_ns: u64,
    ) -> anyhow::Result<()> {
        self.update_class(tid, thread_class(is_loop, poll_fd, now_ns))
            .with_context(|| format!("classifying thread {tid}"))?;
        if !is_loop {
            self.stop_timing(tid);
        }
        Ok(())
    }

    /// Times thread `tid`, parked in a poll call since before its process was traced, from
    /// that call's exit: the iteration it wakes up to may be a loop's, and its stack goes
    /// to userspace at its next poll, before the stall that iteration may be. A thread the
    /// kernel side times already is left alone.
    ///
    /// The thread's flag shares a word of the flag array with 7 neighbours whose flags
    /// the kernel side may set at the same moment: a flag lost so is set again at that
    /// thread's next poll.
    pub fn time_parked_thread(&mut self, tid: u32) -> anyhow::Result<()> {
        let timing = LoopTiming {
            loop_fd: NO_FD,
            foreign_fd: NO_FD,
            unclassified: 1,
            ..LoopTiming::default()
        };
        /// The kernel's `BPF_NOEXIST` update flag: create only.
        const BPF_NOEXIST: u64 = 1;
        match self.loop_timing.insert(tid, timing, BPF_NOEXIST) {
            Ok(()) => {}
            Err(e) if has_errno(&e, libc::EEXIST) => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("timing thread {tid}")),
        }
        let word = self.loop_threads.get(&(tid / 8), 0).unwrap_or(0);
        let word = word | 1 << ((tid % 8) * 8);
        self.loop_threads
            .set(tid / 8, word, 0)
            .with_context(|| format!("flagging thread {tid}"))
    }

    /// Stops the kernel side's timing of thread `tid` (its loop thread flag is cleared at
    /// its next poll exit).
    pub fn stop_timing(&mut self, tid: u32) {
        // Absent when the thread was never timed or has exited: nothing to stop.
        let _ = self.loop_timing.remove(&tid);
    }

    /// Makes thread `tid`, found parked in its loop's poller (epoll fd `loop_fd`) when
    /// tracing began, a loop thread: the kernel side times it from its next poll exit,
    /// the wake-up it would otherwise miss (it never saw the poll begin).
    pub fn adopt_polling_loop(
        &mut self,
        tid: u32,
        loop_fd: u32,
        now_ns: u64,
    ) -> anyhow::Result<()> {
        self.set_class(tid, thread_class(true, loop_fd, now_ns))?;
        self.flag_loop_thread(tid)
    }

    /// Makes thread `tid`, found inside a running loop but away from its poller when
    /// tracing began, a loop thread in the middle of an iteration: `timing` says since
    /// when (a lower bound), which call it is in and its loop's epoll fd (`NO_FD` when
    /// unknown). Written before the thread's flag, so the kernel side, which skips
    /// unflagged threads, never sees half of it.
    pub fn adopt_stuck_loop(&mut self, tid: u32, timing: LoopTiming) -> anyhow::Result<()> {
        self.loop_timing
            .insert(tid, timing, 0)
            .with_context(|| format!("timing stuck loop thread {tid}"))?;
        self.set_class(tid, thread_class(true, timing.loop_fd, timing.poll_exit_ns))?;
        self.flag_loop_thread(tid)
    }

    /// Sets thread `tid`'s byte in the loop-thread flags. The word is read and written
    /// whole: a BPF program flipping a neighbour's byte in between is undone, and that
    /// thread is flagged (or unflagged) again at its next poll.
    fn flag_loop_thread(&mut self, tid: u32) -> anyhow::Result<()> {
        let index = tid / 8;
        let word = (self.loop_threads.get(&index, 0))
            .with_context(|| format!("thread {tid} is beyond the loop-thread flags"))?;
        let word = word | 1 << ((tid % 8) * 8);
        self.loop_threads
            .set(index, word, 0)
            .with_context(|| format!("flagging loop thread {tid}"))
    }

    /// Whether userspace already classified thread `tid` (it polled since tracing of
    /// its process began).
    pub fn classified(&self, tid: u32) -> bool {
        self.thread_class.get(&tid, 0).is_ok()
    }

    /// Sets thread `tid`'s class, only if the kernel side still knows the thread: one
    /// that exited (or closed its loop) meanwhile is not brought back, for a later thread
    /// on its tid to inherit.
    /// Writes thread `tid`'s class whether or not it has one: for a thread userspace has
    /// just seen alive in `/proc` (found at attach), which the kernel side never saw poll.
    fn set_class(&mut self, tid: u32, value: ThreadClass) -> anyhow::Result<()> {
        self.thread_class
            .insert(tid, value, 0)
            .with_context(|| format!("classifying thread {tid}"))
    }

    fn update_class(&mut self, tid: u32, value: ThreadClass) -> anyhow::Result<()> {
        match self.thread_class.insert(tid, value, BPF_EXIST) {
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(())
            }
            other => Ok(other?),
        }
    }

    /// What the kernel side measures of loop thread `tid`'s current loop iteration.
    pub fn loop_timing(&self, tid: u32) -> Option<LoopTiming> {
        self.loop_timing.get(&tid, 0).ok()
    }

    /// The stall threshold the kernel side reports at.
    pub fn threshold_ns(&self) -> u64 {
        self.threshold_ns
    }

    /// Has thread `tid` send its stack again at its next poll (its last one was walked
    /// without what its classification needs).
    pub fn reexamine_thread(&mut self, tid: u32) -> anyhow::Result<()> {
        let value = ThreadClass {
            class: class::NOT_LOOP,
            poll_fd: 0,
            // Examined "long ago": the next poll is past the re-examination delay.
            since_ns: 0,
        };
        self.update_class(tid, value)
            .with_context(|| format!("re-examining thread {tid}"))?;
        self.stop_timing(tid);
        Ok(())
    }

    /// How the pollers are hooked, chosen at attach.
    pub fn poll_hook(&self) -> &HookChoice {
        &self.poll_hook
    }

    /// How many program runs the kernel skipped so far (see [`hooks::skipped_runs`]).
    pub fn skipped_runs(&self) -> anyhow::Result<u64> {
        hooks::skipped_runs(&self._ebpf)
    }

    /// Current totals of the kernel side's loss counters (summed over CPUs).
    pub fn counters(&self) -> anyhow::Result<Vec<(Counter, u64)>> {
        Counter::ALL
            .iter()
            .map(|&c| {
                let per_cpu = self.counters.get(&(c as u32), 0)?;
                Ok((c, per_cpu.iter().sum()))
            })
            .collect()
    }
}

/// Hands the heap freed by loading back to the kernel. Reading the kernel's BTF (for
/// offsets, and by aya for relocations) allocates ~25 MiB that is freed at once but kept
/// by glibc's allocator: a long-running tracer would otherwise sit on 40 MiB of RSS
/// instead of ~14 MiB (8 of them the event ring buffer's double mapping).
fn release_freed_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free memory to the kernel; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The host's `pid_max`, and whether it could be read (else `PID_MAX_LIMIT` of 64-bit
/// kernels, the most it can be).
pub fn pid_max() -> (u32, bool) {
    const PID_MAX_LIMIT: u32 = 4 << 20;
    std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
        .map_or((PID_MAX_LIMIT, false), |pid_max| (pid_max, true))
}

/// Size of the loop-thread flags in words: one byte per possible thread id, up to
/// `pid_max` (a tid beyond it, after `pid_max` is raised, is counted, not traced).
pub fn loop_thread_words(pid_max: u32) -> u32 {
    pid_max.div_ceil(8).max(1)
}

/// Whether `err` (or an error it wraps) is the kernel's "no such process".
fn no_such_thread(err: &(dyn std::error::Error + 'static)) -> bool {
    has_errno(err, libc::ESRCH)
}

/// Whether `err` (or an error it wraps) is the kernel's error `errno`.
fn has_errno(err: &(dyn std::error::Error + 'static), errno: i32) -> bool {
    std::iter::successors(Some(err), |e| e.source()).any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(errno))
    })
}

/// The class of a thread userspace has examined: a loop polling epoll fd `poll_fd`, or
/// not a loop, as of `now_ns`.
fn thread_class(is_loop: bool, poll_fd: u32, now_ns: u64) -> ThreadClass {
    ThreadClass {
        class: if is_loop {
            class::LOOP
        } else {
            class::NOT_LOOP
        },
        poll_fd,
        since_ns: now_ns,
    }
}
