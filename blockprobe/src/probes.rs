//! Loading blockprobe's BPF object, attaching its programs and handling its maps.

use std::{collections::BTreeMap, path::Path};

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        PerfEvent, RawTracePoint,
        perf_event::{
            PerfEventConfig, PerfEventLinkId, PerfEventScope, SamplePolicy, SoftwareEvent,
        },
    },
};
use blockprobe_common::{
    config::{GlobalConfig, PyProcess, Scope},
    counters::Counter,
    maps,
    thread::{LoopTiming, ThreadClass, class},
};

use crate::{
    hooks::{self, HookChoice, PollHook},
    tracefs,
};

/// How often the CPU sampler looks at a running loop thread (Hz): a 10 ms stall gets
/// ~10 samples; a sample outside a stall costs one hash lookup.
const SAMPLE_HZ: u64 = 997;

/// The compiled kernel side, built by aya-build from blockprobe-ebpf.
static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/blockprobe"));

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
    counters: PerCpuArray<MapData, u64>,
    threshold_ns: u64,
    events: Option<RingBuf<MapData>>,
    /// The CPU sampler's link per sampled loop thread, with the thread's process.
    samplers: BTreeMap<u32, (u32, PerfEventLinkId)>,
    /// How the pollers are hooked.
    poll_hook: HookChoice,
}

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
            reclassify_after_ns: 5_000_000_000,
            scope: settings.scope as u32,
            task_pid_offset: u32::try_from(kernel.task_pid)?,
            task_state_offset: u32::try_from(kernel.task_state)?,
            fd_path: kernel.fd_path,
            exit_has_group_dead: u32::from(
                tracefs::field_offset(tracefs, "sched", "sched_process_exit", "group_dead")?
                    .is_some(),
            ),
        };
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(maps::EVENTS, settings.ring_bytes)
            .map_max_entries(maps::LOOP_THREADS, loop_thread_words())
            .load(BPF_OBJECT)
            .context(
                "loading blockprobe's BPF programs (is this kernel ≥ 5.8 with BPF ring buffers?)",
            )?;
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
            threshold_ns: settings.threshold_ns,
            counters: PerCpuArray::try_from(take(&mut ebpf, maps::COUNTERS)?)?,
            events: Some(RingBuf::try_from(take(&mut ebpf, maps::EVENTS)?)?),
            samplers: BTreeMap::new(),
            poll_hook: HookChoice {
                hook: PollHook::Tracepoint,
                fentry_refused: None,
            },
            _ebpf: ebpf,
        };
        probes.attach_all()?;
        release_freed_heap();
        Ok(probes)
    }

    fn attach_all(&mut self) -> anyhow::Result<()> {
        let ebpf = &mut self._ebpf;
        self.poll_hook = hooks::attach(ebpf)?;
        // Raw tracepoints: cheaper per event than classic ones, and never skipped while a
        // BPF map syscall holds the CPU (classic tracepoint programs are).
        for (program, tracepoint) in [
            ("sched_switch", "sched_switch"),
            ("sched_wakeup", "sched_wakeup"),
            ("process_fork", "sched_process_fork"),
            ("process_exec", "sched_process_exec"),
            ("process_exit", "sched_process_exit"),
        ] {
            let tp: &mut RawTracePoint = program_mut(ebpf, program)?.try_into()?;
            tp.load()
                .with_context(|| format!("the kernel verifier rejected BPF program {program}"))?;
            tp.attach(tracepoint)
                .with_context(|| format!("attaching {program} to raw tracepoint {tracepoint}"))?;
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
        self.stop_sampling(|p, t| p == pid && !Path::new(&format!("/proc/{p}/task/{t}")).exists());
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
            Err(_) if !Path::new(&format!("/proc/{pid}/task/{tid}")).exists() => Ok(()),
            Err(e) => Err(e).with_context(|| format!("attaching the CPU sampler to thread {tid}")),
        }
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
    /// poll call on epoll fd `poll_fd`.
    pub fn classify_thread(
        &mut self,
        tid: u32,
        is_loop: bool,
        poll_fd: u32,
        now_ns: u64,
    ) -> anyhow::Result<()> {
        let value = ThreadClass {
            class: if is_loop {
                class::LOOP
            } else {
                class::NOT_LOOP
            },
            poll_fd,
            since_ns: now_ns,
        };
        self.thread_class
            .insert(tid, value, 0)
            .with_context(|| format!("classifying thread {tid}"))
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
        self.thread_class
            .insert(tid, value, 0)
            .with_context(|| format!("re-examining thread {tid}"))
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

/// Size of the loop-thread flags in words: one byte per possible thread id, up to the
/// host's `pid_max` (a tid beyond it, after `pid_max` is raised, is counted, not traced).
fn loop_thread_words() -> u32 {
    /// `PID_MAX_LIMIT` on 64-bit kernels, if `pid_max` cannot be read.
    const PID_MAX_LIMIT: u32 = 4 << 20;
    let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
        .unwrap_or(PID_MAX_LIMIT);
    pid_max.div_ceil(8).max(1)
}

/// The program `name` of the loaded object.
pub fn program_mut<'a>(
    ebpf: &'a mut Ebpf,
    name: &str,
) -> anyhow::Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name)
        .with_context(|| format!("BPF program {name} missing from the object"))
}

/// Takes the map `name` out of the loaded object.
fn take(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<aya::maps::Map> {
    ebpf.take_map(name)
        .ok_or_else(|| anyhow!("BPF map {name} missing from the object"))
}

/// Whether `err` (or an error it wraps) is the kernel's "no such process".
fn no_such_thread(err: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(err), |e| e.source()).any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(libc::ESRCH))
    })
}
