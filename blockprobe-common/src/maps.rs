//! Names and capacities of the BPF maps, shared by the kernel side and the loader.

/// `Array<GlobalConfig>` with one entry: settings written by userspace before attaching.
pub const CONFIG: &str = "CONFIG";
/// `HashMap<u32 tgid, PyProcess>`: the Python processes being traced and how to walk them.
pub const PROCESSES: &str = "PROCESSES";
/// `HashMap<u32 tgid, u8>`: the process tree of `blockprobe run` (children join on fork).
pub const FAMILY: &str = "FAMILY";
/// `LruHashMap<u32 tgid, u8>`: processes already announced to userspace as candidates.
pub const ANNOUNCED: &str = "ANNOUNCED";
/// `HashMap<u32 tid, ThreadClass>`: what each polling thread is (pending, loop, not a loop).
pub const THREAD_CLASS: &str = "THREAD_CLASS";
/// `Array<u64>` indexed by `tid / 8`: byte `tid % 8` of a word is 1 while thread `tid` is
/// a loop thread, or a polling thread of a traced process not yet classified. Every hot
/// hook (each syscall, each context switch) skips all other threads with one array load
/// instead of a hash lookup. Bytes, not bits: BPF programs on different CPUs set and
/// clear them with plain stores, without losing a neighbour's.
pub const LOOP_THREADS: &str = "LOOP_THREADS";
/// `HashMap<u32 tid, LoopTiming>`: per loop thread timestamps, written only by BPF.
pub const LOOP_TIMING: &str = "LOOP_TIMING";
/// `HashMap<u32 tid, GilWaitEvent>`: a loop thread's GIL wait in progress, with the
/// holder's stack captured when it began.
pub const GIL_WAITS: &str = "GIL_WAITS";
/// `LruHashMap<u32 tid, BlockingCall>`: the blocking syscall each loop thread is in (or
/// was last in), learned at `sched_switch`; rewritten whole at each new call.
pub const BLOCKING_CALLS: &str = "BLOCKING_CALLS";
/// `PerCpuArray<BlockingCall>` with one entry: scratch space to create a thread's entry.
pub const BLOCKING_SCRATCH: &str = "BLOCKING_SCRATCH";
/// `PerCpuArray<GilWaitEvent>` with one entry: scratch space to build a GIL wait.
pub const GIL_SCRATCH: &str = "GIL_SCRATCH";
/// `LruHashMap<u32 tid, ShortCalls>`: a loop thread's short blocking calls not reported
/// yet (an evicted entry loses only a partial sum).
pub const SHORT_CALLS: &str = "SHORT_CALLS";
/// `RingBuf`: every event sent to userspace.
pub const EVENTS: &str = "EVENTS";
/// `PerCpuArray<u64>` indexed by [`crate::counters::Counter`].
pub const COUNTERS: &str = "COUNTERS";

/// Capacity of [`PROCESSES`].
pub const MAX_PROCESSES: u32 = 4096;
/// Capacity of [`FAMILY`] (threads join too, so leave room).
pub const MAX_FAMILY: u32 = 65536;
/// Capacity of [`ANNOUNCED`].
pub const MAX_ANNOUNCED: u32 = 16384;
/// Default capacity of [`LOOP_THREADS`] in words (threads 0..32768, the default
/// `pid_max`); userspace sizes it to the host's `pid_max` before loading.
pub const DEFAULT_LOOP_THREAD_WORDS: u32 = 32768 / 8;
/// Capacity of [`THREAD_CLASS`] and [`LOOP_TIMING`].
pub const MAX_THREADS: u32 = 65536;
/// Capacity of [`GIL_WAITS`]: loop threads waiting for the GIL at the same time.
pub const MAX_GIL_WAITS: u32 = 1024;
/// Capacity of [`BLOCKING_CALLS`]: loop threads blocked at the same time (the least
/// recently used entry, a thread long gone, makes room).
pub const MAX_BLOCKING_CALLS: u32 = 4096;
/// Capacity of [`SHORT_CALLS`]: loop threads with short calls not reported yet.
pub const MAX_SHORT_CALLS: u32 = 4096;
/// Default size of [`EVENTS`] in bytes (a power of two multiple of the page size).
pub const DEFAULT_RING_BYTES: u32 = 4 << 20;
