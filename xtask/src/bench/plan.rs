//! What the benchmark measures: the workloads, and the modes each runs under.

/// One way of running a workload.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Mode {
    Bare,
    TracePid,
    TraceHost,
    Serve,
    /// A baseline blockprobe binary (`--baseline`), host-wide: the before of a change,
    /// measured in the same run as the after.
    BaselineTraceHost,
    /// The tracepoints blockprobe hooks, on with no BPF program and nothing recorded:
    /// what any tracer hooked there pays, through the kernel's traced syscall path.
    Floor,
    /// blocksnoop: an eBPF epoll-gap tracer correlating with Austin samples.
    Blocksnoop,
    AsyncioDebug,
    LoopMonitor,
    Aiodebug,
    PySpy,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Bare => "bare",
            Mode::TracePid => "blockprobe trace -p PID --quiet",
            Mode::TraceHost => "blockprobe trace --quiet (host)",
            Mode::Serve => "blockprobe serve --quiet",
            Mode::BaselineTraceHost => "baseline blockprobe trace --quiet (host)",
            Mode::Floor => "floor: the hooked tracepoints, no BPF (ftrace, recording off)",
            Mode::Blocksnoop => "blocksnoop -t THRESHOLD PID",
            Mode::AsyncioDebug => "asyncio debug mode",
            Mode::LoopMonitor => "asyncio-event-loop-monitor",
            Mode::Aiodebug => "aiodebug slow callbacks",
            Mode::PySpy => "py-spy record -r 100",
        }
    }

    /// Whether this is (this build of) blockprobe, whose budgets apply.
    pub fn is_blockprobe(self) -> bool {
        matches!(self, Mode::TracePid | Mode::TraceHost | Mode::Serve)
    }

    /// Whether the mode runs a tracer process whose cost and BPF programs are measured.
    pub fn has_tracer(self) -> bool {
        self.is_blockprobe() || matches!(self, Mode::BaselineTraceHost | Mode::Blocksnoop)
    }

    /// The peer wrapper's name in `bench/workloads/peer.py`, for in-process peers.
    pub fn peer(self) -> &'static str {
        match self {
            Mode::AsyncioDebug => "asyncio-debug",
            Mode::LoopMonitor => "loop-monitor",
            Mode::Aiodebug => "aiodebug",
            _ => "none",
        }
    }
}

/// What a workload measures, and how.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Workload {
    /// aiohttp "hello" under wrk: requests/s (and p99 latency).
    Http,
    /// 200k asyncio.Queue ping-pongs: seconds.
    Queue,
    /// list(map(pyfunc, …)) and sorted(key=lambda): seconds.
    MapPyfunc,
    /// dd with 1-byte blocks, not Python: seconds.
    Syscalls,
    /// An asyncio loop stalling 1,000 times a second: what the tracer itself costs then.
    StallRate,
}

impl Workload {
    pub const ALL: [Workload; 5] = [
        Workload::Http,
        Workload::Queue,
        Workload::MapPyfunc,
        Workload::Syscalls,
        Workload::StallRate,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Http => "aiohttp hello under wrk (req/s)",
            Workload::Queue => "asyncio.Queue ping-pong 200k (s)",
            Workload::MapPyfunc => "list(map(pyfunc)) 4M + sorted(key) (s)",
            Workload::Syscalls => "dd bs=1 count=2M, not Python (s)",
            Workload::StallRate => "1,000 stalls/s for 5 s, --threshold 500us (s)",
        }
    }

    /// The short name `--workload` takes.
    pub fn key(self) -> &'static str {
        match self {
            Workload::Http => "http",
            Workload::Queue => "queue",
            Workload::MapPyfunc => "map",
            Workload::Syscalls => "dd",
            Workload::StallRate => "stalls",
        }
    }

    /// The workload `--workload KEY` names.
    pub fn by_key(key: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.key() == key)
    }

    /// The threshold tracers run with, in ms: the stall generator's stalls last 0.6 ms.
    pub fn threshold_ms(self) -> f64 {
        match self {
            Workload::StallRate => 0.5,
            _ => 10.0,
        }
    }

    /// [`Self::threshold_ms`] as blockprobe's `--threshold` takes it.
    pub fn threshold(self) -> String {
        format!("{}us", (self.threshold_ms() * 1000.0) as u64)
    }

    /// The most blockprobe may cost this workload beyond the floor, as a ratio (the
    /// tracer's own CPU at 1,000 stalls/s has a budget of its own).
    pub fn budget(self) -> Option<f64> {
        match self {
            Workload::Http => Some(1.01),
            Workload::Queue => Some(1.03),
            Workload::MapPyfunc => Some(1.01),
            Workload::Syscalls => Some(1.02),
            Workload::StallRate => None,
        }
    }

    /// Whether a larger number is better (throughput) rather than worse (time).
    pub fn higher_is_better(self) -> bool {
        self == Workload::Http
    }

    /// The modes it runs under; `baseline`: a baseline binary is measured too.
    pub fn modes(self, baseline: bool) -> Vec<Mode> {
        let tracers = [Mode::TracePid, Mode::TraceHost, Mode::Serve];
        let mut modes = vec![Mode::Bare];
        match self {
            // Not Python: only the system-wide modes say what it costs everyone else.
            Workload::Syscalls => modes.extend([Mode::TraceHost, Mode::Serve, Mode::Floor]),
            // The tracers' own CPU and memory under load.
            Workload::StallRate => modes.extend(tracers.into_iter().chain([Mode::Blocksnoop])),
            // No event loop: the in-process asyncio peers do not apply.
            Workload::MapPyfunc => modes.extend(tracers.into_iter().chain([
                Mode::Floor,
                Mode::Blocksnoop,
                Mode::PySpy,
            ])),
            Workload::Http | Workload::Queue => modes.extend(tracers.into_iter().chain([
                Mode::Floor,
                Mode::Blocksnoop,
                Mode::AsyncioDebug,
                Mode::LoopMonitor,
                Mode::Aiodebug,
                Mode::PySpy,
            ])),
        }
        if baseline {
            modes.push(Mode::BaselineTraceHost);
        }
        modes
    }
}
