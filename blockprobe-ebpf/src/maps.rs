//! The maps; names and capacities come from `blockprobe_common::maps`.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use blockprobe_common::{
    blocking::BlockingCall,
    config::{GlobalConfig, PyProcess},
    counters::Counter,
    event::GilWaitEvent,
    maps::{
        DEFAULT_LOOP_THREAD_WORDS, DEFAULT_RING_BYTES, MAX_ANNOUNCED, MAX_BLOCKING_CALLS,
        MAX_FAMILY, MAX_GIL_WAITS, MAX_PROCESSES, MAX_SHORT_CALLS, MAX_THREADS,
    },
    thread::{LoopTiming, ShortCalls, ThreadClass},
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

/// See `blockprobe_common::maps::LOOP_THREADS`; userspace sizes it to `pid_max`.
#[map]
pub static LOOP_THREADS: Array<u64> = Array::with_max_entries(DEFAULT_LOOP_THREAD_WORDS, 0);

/// See `blockprobe_common::maps::LOOP_TIMING`.
#[map]
pub static LOOP_TIMING: HashMap<u32, LoopTiming> = HashMap::with_max_entries(MAX_THREADS, 0);

/// See `blockprobe_common::maps::GIL_WAITS`.
#[map]
pub static GIL_WAITS: HashMap<u32, GilWaitEvent> = HashMap::with_max_entries(MAX_GIL_WAITS, 0);

/// See `blockprobe_common::maps::GIL_SCRATCH`.
#[map]
pub static GIL_SCRATCH: PerCpuArray<GilWaitEvent> = PerCpuArray::with_max_entries(1, 0);

/// See `blockprobe_common::maps::BLOCKING_CALLS`.
#[map]
pub static BLOCKING_CALLS: LruHashMap<u32, BlockingCall> =
    LruHashMap::with_max_entries(MAX_BLOCKING_CALLS, 0);

/// See `blockprobe_common::maps::BLOCKING_SCRATCH`.
#[map]
pub static BLOCKING_SCRATCH: PerCpuArray<BlockingCall> = PerCpuArray::with_max_entries(1, 0);

/// See `blockprobe_common::maps::SHORT_CALLS`.
#[map]
pub static SHORT_CALLS: LruHashMap<u32, ShortCalls> =
    LruHashMap::with_max_entries(MAX_SHORT_CALLS, 0);

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

/// Whether thread `tid` is a loop thread: the cheap first check of every hot hook.
#[inline(always)]
pub fn is_loop_thread(tid: u32) -> bool {
    LOOP_THREADS
        .get(tid / 8)
        .is_some_and(|word| (word >> ((tid % 8) * 8)) & 0xff != 0)
}

/// Marks thread `tid` as a loop thread or not (a single-byte store: neighbours' bytes in
/// the same word are left alone). A tid beyond the map (`pid_max` raised after loading)
/// cannot be marked: counted as a full thread map.
#[inline(always)]
pub fn mark_loop_thread(tid: u32, is_loop: bool) {
    match LOOP_THREADS.get_ptr_mut(tid / 8) {
        // SAFETY: the byte lies inside the 8-byte map value the lookup returned.
        Some(word) => unsafe { *(word as *mut u8).add((tid % 8) as usize) = u8::from(is_loop) },
        None if is_loop => count(Counter::ThreadMapFull),
        None => {}
    }
}

/// Adds one to a counter.
#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while we run.
        unsafe { *slot += 1 };
    }
}
