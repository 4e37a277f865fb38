//! The maps; names and capacities come from `blockprobe_common::maps`.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use blockprobe_common::{
    config::{GlobalConfig, PyProcess},
    counters::Counter,
    event::GilWaitEvent,
    maps::{
        DEFAULT_RING_BYTES, MAX_ANNOUNCED, MAX_FAMILY, MAX_GIL_WAITS, MAX_PROCESSES, MAX_THREADS,
    },
    thread::{LoopTiming, ThreadClass},
};

/// See `blockprobe_common::maps::CONFIG`.
#[map]
pub static CONFIG: Array<GlobalConfig> = Array::with_max_entries(1, 0);

/// See `blockprobe_common::maps::PROCESSES`.
#[map]
pub static PROCESSES: HashMap<u32, PyProcess> = HashMap::with_max_entries(MAX_PROCESSES, 0);

/// See `blockprobe_common::maps::FAMILY`.
#[map]
pub static FAMILY: HashMap<u32, u8> = HashMap::with_max_entries(MAX_FAMILY, 0);

/// See `blockprobe_common::maps::ANNOUNCED`.
#[map]
pub static ANNOUNCED: LruHashMap<u32, u8> = LruHashMap::with_max_entries(MAX_ANNOUNCED, 0);

/// See `blockprobe_common::maps::THREAD_CLASS`.
#[map]
pub static THREAD_CLASS: HashMap<u32, ThreadClass> = HashMap::with_max_entries(MAX_THREADS, 0);

/// See `blockprobe_common::maps::LOOP_TIMING`.
#[map]
pub static LOOP_TIMING: HashMap<u32, LoopTiming> = HashMap::with_max_entries(MAX_THREADS, 0);

/// See `blockprobe_common::maps::GIL_WAITS`.
#[map]
pub static GIL_WAITS: HashMap<u32, GilWaitEvent> = HashMap::with_max_entries(MAX_GIL_WAITS, 0);

/// See `blockprobe_common::maps::GIL_SCRATCH`.
#[map]
pub static GIL_SCRATCH: PerCpuArray<GilWaitEvent> = PerCpuArray::with_max_entries(1, 0);

/// See `blockprobe_common::maps::EVENTS`; userspace may resize it before loading.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

/// See `blockprobe_common::maps::COUNTERS`.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// The global configuration (always present once userspace has written it).
#[inline(always)]
pub fn config() -> Option<&'static GlobalConfig> {
    CONFIG.get(0)
}

/// Adds one to a counter.
#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while we run.
        unsafe { *slot += 1 };
    }
}
