//! A Python process: finding its interpreter, checking it is ready, and calibrating how
//! BPF finds each thread's `PyThreadState`.

use std::collections::BTreeSet;
use std::ops::Range;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use blockprobe_common::config::PyProcess;
use blockprobe_common::stack::RawStack;
use blockprobe_common::walk::walk_thread;

use super::asyncio_debug::{self, AsyncioOffsets};
use super::debug_offsets;
use super::elf::{self, Discovery, PythonBinary};
use super::layout::{self, GilLocation, Layout, Recipe, TYPE_BASICSIZE};
use super::maps::{self, Maps};
use super::memory::ProcessMemory;
use super::symbolize::Symbolizer;
use super::uvloop;
use super::version::Version;
use crate::deadline::{self, NoAnswer, Worker};
use crate::model::Frame;

/// The longest an inspection may take: reading a few headers and pages of a local file
/// and of memory takes milliseconds of CPU time, seconds only on a host whose CPUs are
/// shared by hundreds of busy processes.
const INSPECT_DEADLINE: Duration = Duration::from_secs(5);
/// The longest a read of a traced process's memory (its stacks, its threads now) may
/// take; past it, the process is slow: see [`PythonProcess::symbolize`].
pub const READ_DEADLINE: Duration = Duration::from_secs(1);
/// How long a slow process's memory is not read after a read missed
/// [`READ_DEADLINE`], even once that read came back: a process that answers slowly,
/// not never, holds the tracer up once per pause.
const SLOW_PAUSE: Duration = Duration::from_secs(10);
/// Most thread states followed in an interpreter's list (guards against cycles).
const MAX_THREADS: usize = 4096;
/// Offset of the pthread-specific data array in glibc's x86_64 `struct pthread`
/// (`specific_1stblock`, 32 entries of `{seq, data}`).
const GLIBC_SPECIFIC: u64 = 0x310;
/// Offset of `tid` in glibc's x86_64 `struct pthread` (after its 0x2c0-byte TCB header
/// and its list links).
const GLIBC_PTHREAD_TID: u64 = 0x2d0;
/// Keys below this live in `specific_1stblock`, at a fixed offset from the thread pointer.
const GLIBC_FIRST_BLOCK_KEYS: u32 = 32;
/// How far from the thread pointer the slot is searched for when glibc's layout fails.
const SLOT_SEARCH_BYTES: usize = 0x1000;
/// Offset of the key in a `Py_tss_t {int initialized; pthread_key_t key}`.
const TSS_KEY: u64 = 4;

/// What [`PythonProcess::inspect`] found.
#[derive(Debug)]
pub enum Inspection {
    /// No mapped file defines `_PyRuntime`: not a Python process.
    NotPython,
    /// A Python process that is still starting (or changing threads): try again later.
    NotReady(String),
    /// A Python process ready to be traced.
    Ready(PythonProcess),
}

/// One Python thread of a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PyThread {
    /// Address of its `PyThreadState`.
    pub tstate: u64,
    /// `pthread_self()` of the thread: its thread pointer (`fs_base`) on glibc.
    pub thread_id: u64,
    /// Its tid in the process's pid namespace (3.11+).
    pub native_id: Option<u32>,
}

/// The frames of stacks symbolized together, and the asyncio task of the first.
#[derive(Debug, Default)]
pub struct Symbolized {
    /// Each stack's frames, innermost first.
    pub stacks: Vec<Vec<Frame>>,
    /// The name of the asyncio task the first stack was captured in (3.14+), if known.
    pub task: Option<String>,
}

/// A Python thread of a process as it is now, its stack walked from userspace.
#[derive(Debug)]
pub struct ThreadNow {
    /// Its tid in the process's pid namespace.
    pub tid: u32,
    /// Address of its `PyThreadState`.
    pub tstate: u64,
    /// Its stack's [`RawStack::flags`] (whether the walk was cut).
    pub flags: u32,
    /// The stack's frames, innermost first.
    pub frames: Vec<Frame>,
    /// On 3.14+, whether the loop it runs is one of asyncio's selector loops; `None`
    /// when none runs or it cannot be told.
    pub selector_loop: Option<bool>,
}

/// A running Python process whose stacks blockprobe can walk and symbolize.
#[derive(Debug)]
pub struct PythonProcess {
    pid: u32,
    version: Version,
    /// Path (in the process's mount namespace) of the file holding the interpreter.
    binary_path: String,
    layout: Box<Layout>,
    interp: u64,
    tstate_slot_offset: u64,
    gil_addr: u64,
    /// asyncio task offsets (3.14+), once the `_asyncio` module is loaded.
    asyncio: Option<AsyncioOffsets>,
    /// Its file mappings as last read: by its inspection, or anew when looking for the
    /// `_asyncio` module it may have loaded since.
    maps: Maps,
    /// Reads the process's memory to walk and name its stacks, off the caller's thread
    /// (the memory may never answer), keeping what it learnt (the code cache).
    reader: Worker<Symbolizer>,
}

impl PythonProcess {
    /// Examines process `pid`: is it Python, is its interpreter supported and running,
    /// and where does each thread keep its thread state? Its files and memory are read
    /// within [`INSPECT_DEADLINE`]: a process cannot hang the tracer (see [`deadline`]).
    pub fn inspect(pid: u32) -> anyhow::Result<Inspection> {
        let what = format!("inspecting pid {pid}");
        deadline::run(&what, INSPECT_DEADLINE, move || Self::inspect_now(pid))
    }

    /// [`PythonProcess::inspect`], on this thread, however long it takes.
    pub(super) fn inspect_now(pid: u32) -> anyhow::Result<Inspection> {
        let maps = Maps::read(pid)?;
        let binary = match elf::discover(pid, &maps)? {
            Discovery::Absent => return Ok(Inspection::NotPython),
            Discovery::Loading => {
                return Ok(Inspection::NotReady("libpython is not loaded yet".into()));
            }
            Discovery::Found(binary) => binary,
        };
        let version = detect_version(&ProcessMemory::new(pid), &binary)?;
        Self::inspect_found(pid, maps, &binary, version)
    }

    /// Examines process `pid` (mappings `maps`) whose interpreter, `version` in `binary`,
    /// was found: is it supported and running, and where does each thread keep its
    /// thread state?
    pub(super) fn inspect_found(
        pid: u32,
        maps: Maps,
        binary: &PythonBinary,
        version: Version,
    ) -> anyhow::Result<Inspection> {
        let memory = ProcessMemory::new(pid);
        let layout = match layout::layout(version)? {
            Recipe::Table(table) => *table,
            Recipe::DebugOffsets { base, fields } => {
                debug_offsets::read(&memory, binary.runtime, version, base, fields)
                    .with_context(|| format!("Python {version} in {}", binary.path))?
            }
        };
        check_layout(&memory, &layout, binary).with_context(|| {
            format!(
                "Python {version} in {} has an unexpected layout",
                binary.path
            )
        })?;
        let runtime = binary.runtime;
        let initialized = memory.read_u32(runtime.wrapping_add(layout.runtime_initialized))?;
        let interp = memory.read_u64(runtime.wrapping_add(layout.runtime_main_interp))?;
        let tss = layout
            .runtime_tss_key
            .map(|offset| runtime.wrapping_add(offset));
        let tss_created = match tss {
            Some(tss) => memory.read_u32(tss)?,
            None => 1,
        };
        if initialized == 0 || interp == 0 || tss_created == 0 {
            return Ok(Inspection::NotReady(
                "the Python runtime is not initialized yet".into(),
            ));
        }
        let threads = list_threads(&memory, &layout, interp)?;
        let slot = match tss {
            Some(tss) => locate_slot(
                &memory,
                &threads,
                memory.read_u32(tss.wrapping_add(TSS_KEY))?,
            )?,
            None => locate_tls(&memory, &threads, binary.gilstate_tls)?,
        };
        let tstate_slot_offset = match slot {
            Slot::Found(offset) => offset,
            Slot::Unsettled(why) => return Ok(Inspection::NotReady(why)),
        };
        let gil_addr = locate_gil(&memory, &layout, runtime, interp);
        let asyncio = has_asyncio_offsets(version)
            .then(|| asyncio_debug::find(pid, &maps))
            .flatten();
        Ok(Inspection::Ready(PythonProcess {
            pid,
            binary_path: binary.path.clone(),
            asyncio,
            maps,
            version,
            interp,
            tstate_slot_offset,
            gil_addr,
            reader: Worker::new(
                Symbolizer::new(memory, layout, binary.code_type),
                READ_DEADLINE,
                SLOW_PAUSE,
            )?,
            layout: Box::new(layout),
        }))
    }

    /// Path (in the process's mount namespace) of the python executable or libpython.
    pub fn binary_path(&self) -> &str {
        &self.binary_path
    }

    /// The interpreter's version.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The process's file mappings as last read: by its inspection (what attaching to it
    /// looks through), or by [`Self::refresh_asyncio`].
    pub fn maps(&self) -> &Maps {
        &self.maps
    }

    /// How BPF finds and walks this process's Python stacks.
    pub fn walk_config(&self) -> PyProcess {
        let l = &self.layout;
        PyProcess {
            tstate_slot_offset: self.tstate_slot_offset,
            code_mask: l.code_mask,
            frame_path: [l.tstate_frame, l.cframe_frame.unwrap_or(0)],
            frame_path_len: if l.cframe_frame.is_some() { 2 } else { 1 },
            frame_code: l.frame_code,
            frame_previous: l.frame_previous,
            frame_instr: l.frame_instr,
            frame_owner: l.frame_owner,
            owner_skip_min: l.owner_skip_min,
            gil_addr: self.gil_addr,
            tstate_native_tid: l.tstate_native_thread_id.unwrap_or(0) as u32,
            running_task_offset: self.asyncio.map_or(0, |a| a.running_task as u32),
            task_name_offset: self.asyncio.map_or(0, |a| a.task_name as u32),
            _pad: 0,
        }
    }

    /// The threads of the main interpreter, as they are now (read on this thread).
    #[cfg(test)]
    pub fn threads(&self) -> anyhow::Result<Vec<PyThread>> {
        list_threads(&ProcessMemory::new(self.pid), &self.layout, self.interp)
    }

    /// Each started thread of the main interpreter now, its stack walked and
    /// symbolized, read as [`PythonProcess::symbolize`] reads (empty when the thread
    /// list cannot be read). The tid is the interpreter's `native_thread_id` (3.11+),
    /// else glibc's own record of it in the thread's `struct pthread`.
    pub fn threads_now(&mut self) -> Result<Vec<ThreadNow>, NoAnswer> {
        let (layout, interp, asyncio) = (*self.layout, self.interp, self.asyncio);
        let recipe = self.walk_config();
        self.reader.run(move |symbolizer| {
            let memory = *symbolizer.memory();
            let threads = list_threads(&memory, &layout, interp).unwrap_or_default();
            (threads.into_iter())
                .filter(|t| t.thread_id != 0)
                .filter_map(|t| {
                    let tid = match t.native_id {
                        Some(id) if id != 0 => id,
                        _ => memory
                            .read_u32(t.thread_id.wrapping_add(GLIBC_PTHREAD_TID))
                            .ok()?,
                    };
                    let stack = walk(&memory, &recipe, t.tstate);
                    Some(ThreadNow {
                        tid,
                        tstate: t.tstate,
                        frames: symbolizer.symbolize(&stack),
                        flags: stack.flags,
                        selector_loop: selector_loop(&memory, asyncio, t.tstate),
                    })
                })
                .collect()
        })
    }

    /// The stack of thread state `tstate` now, walked from userspace as the kernel
    /// side walks it, and symbolized: its [`RawStack::flags`] (whether the walk was cut)
    /// and frames. Read as [`PythonProcess::symbolize`] reads.
    pub fn walk_now(&mut self, tstate: u64) -> Result<(u32, Vec<Frame>), NoAnswer> {
        let recipe = self.walk_config();
        self.reader.run(move |symbolizer| {
            let stack = walk(symbolizer.memory(), &recipe, tstate);
            (stack.flags, symbolizer.symbolize(&stack))
        })
    }

    /// Whether the native stack of a thread at stack pointer `sp` returns into one of
    /// `runs` (where `uv_run` lies in each uvloop module), read as
    /// [`PythonProcess::symbolize`] reads.
    pub fn stack_runs(&mut self, sp: u64, runs: Vec<Range<u64>>) -> Result<bool, NoAnswer> {
        self.reader.run(move |symbolizer| {
            let memory = symbolizer.memory();
            runs.iter().any(|run| uvloop::stack_runs(memory, sp, run))
        })
    }

    /// Looks for the `_asyncio` module's task offsets (3.14+) if not known yet, in the
    /// process's mappings read anew (the inspection looked in the ones it read); true when
    /// they were just found (the walk configuration then changed).
    pub fn refresh_asyncio(&mut self) -> bool {
        if self.asyncio.is_some() || !has_asyncio_offsets(self.version) {
            return false;
        }
        let pid = self.pid;
        let what = format!("reading the asyncio offsets of pid {pid}");
        let Ok((maps, asyncio)) = deadline::run(&what, INSPECT_DEADLINE, move || {
            let maps = Maps::read(pid)?;
            let asyncio = asyncio_debug::find(pid, &maps);
            Ok((maps, asyncio))
        }) else {
            return false;
        };
        self.maps = maps;
        self.asyncio = asyncio;
        self.asyncio.is_some()
    }

    /// Whether the asyncio loop thread state `tstate` is running is one of asyncio's
    /// selector loops (not uvloop); `Ok(None)` when no loop runs or it cannot be told
    /// (before 3.14, or before the `_asyncio` offsets are known). Read as
    /// [`PythonProcess::symbolize`] reads.
    pub fn running_loop_is_selector_loop(&mut self, tstate: u64) -> Result<Option<bool>, NoAnswer> {
        let Some(offsets) = self.asyncio else {
            return Ok(None);
        };
        self.reader
            .run(move |symbolizer| selector_loop(symbolizer.memory(), Some(offsets), tstate))
    }

    /// Function, file and line of each frame of each of `stacks` (innermost first), and
    /// the asyncio task the first was captured in (3.14+). The process's memory is read
    /// on a thread of its own, waited for at most [`READ_DEADLINE`]: a read that misses
    /// it (a page that never answers: userfaultfd, a hung file system) makes the process
    /// slow, and its memory is not read again, the reads refused at once, while that
    /// read hangs and for [`SLOW_PAUSE`] after the miss.
    pub fn symbolize(&mut self, stacks: Vec<RawStack>) -> Result<Symbolized, NoAnswer> {
        let task_name = (stacks.first())
            .map(|s| s.task_name)
            .filter(|&name| name != 0 && self.asyncio.is_some());
        self.reader.run(move |symbolizer| Symbolized {
            task: task_name.and_then(|name| symbolizer.task_name(name)),
            stacks: stacks.iter().map(|s| symbolizer.symbolize(s)).collect(),
        })
    }
}

/// The stack of thread state `tstate`, walked from userspace with `recipe`.
fn walk(memory: &ProcessMemory, recipe: &PyProcess, tstate: u64) -> Box<RawStack> {
    // SAFETY: RawStack is plain old data: all zeroes is a valid empty stack.
    let mut stack: Box<RawStack> = Box::new(unsafe { std::mem::zeroed() });
    walk_thread(memory, recipe, tstate, &mut stack);
    stack
}

/// Whether the asyncio loop thread state `tstate` is running is one of asyncio's
/// selector loops, with the `_asyncio` offsets `asyncio` (3.14+); `None` when no loop
/// runs or it cannot be told.
fn selector_loop(
    memory: &ProcessMemory,
    asyncio: Option<AsyncioOffsets>,
    tstate: u64,
) -> Option<bool> {
    let offsets = asyncio?;
    let running = memory
        .read_u64(tstate.checked_add(offsets.running_loop)?)
        .ok()
        .filter(|&l| l != 0)?;
    asyncio_debug::is_selector_loop(memory, running)
}

/// Whether interpreters of `version` describe their asyncio tasks (`.AsyncioDebug`, 3.14+).
fn has_asyncio_offsets(version: Version) -> bool {
    (version.major, version.minor) >= (3, 14)
}

/// The version of the interpreter in `binary`, mapped in the process behind `memory`:
/// the `Py_Version` constant (3.11+), else the file name with the patch level found in
/// the file's strings.
pub(super) fn detect_version(
    memory: &ProcessMemory,
    binary: &PythonBinary,
) -> anyhow::Result<Version> {
    if let Some(addr) = binary.py_version {
        let hex = memory.read_u32(addr).context("cannot read Py_Version")?;
        let version = Version::from_hex(hex);
        if version.major != 3 {
            bail!(
                "Py_Version in {} holds {hex:#x}, not a Python 3 version",
                binary.path
            );
        }
        return Ok(version);
    }
    let mut version = Version::from_file_name(maps::file_name(&binary.path))
        .with_context(|| format!("cannot tell the Python version of {}", binary.path))?;
    version.patch = binary.patch_in_strings;
    Ok(version)
}

/// The address of the main interpreter's GIL state, or 0 when it does not look right
/// (then GIL waits are reported as lock waits rather than misattributed).
fn locate_gil(memory: &ProcessMemory, layout: &Layout, runtime: u64, interp: u64) -> u64 {
    let gil = match layout.gil {
        GilLocation::InRuntime(offset) => runtime.wrapping_add(offset),
        GilLocation::ViaInterpreter(offset) => {
            memory.read_u64(interp.wrapping_add(offset)).unwrap_or(0)
        }
    };
    // The first field is the switch interval in microseconds (5000 by default).
    match memory.read_u64(gil) {
        Ok(interval) if (1..=GIL_MAX_INTERVAL_US).contains(&interval) => gil,
        _ => 0,
    }
}

/// Largest plausible `sys.setswitchinterval()`, in microseconds (GIL cross-check).
const GIL_MAX_INTERVAL_US: u64 = 60_000_000;

/// Cross-checks the layout against the running interpreter.
fn check_layout(
    memory: &ProcessMemory,
    layout: &Layout,
    binary: &elf::PythonBinary,
) -> anyhow::Result<()> {
    let basicsize = memory.read_u64(binary.code_type.wrapping_add(TYPE_BASICSIZE))?;
    ensure!(
        basicsize == layout.code_basicsize,
        "PyCode_Type.tp_basicsize is {basicsize}, expected {}",
        layout.code_basicsize
    );
    Ok(())
}

/// The thread states of the interpreter at `interp`, newest first.
fn list_threads(
    memory: &ProcessMemory,
    layout: &Layout,
    interp: u64,
) -> anyhow::Result<Vec<PyThread>> {
    let mut threads = Vec::new();
    let mut tstate = memory
        .read_u64(interp.wrapping_add(layout.interp_threads_head))
        .context("cannot read the interpreter's thread list")?;
    while tstate != 0 {
        ensure!(
            threads.len() < MAX_THREADS,
            "more than {MAX_THREADS} thread states"
        );
        let native_id = match layout.tstate_native_thread_id {
            Some(offset) => Some(memory.read_u32(tstate.wrapping_add(offset))?),
            None => None,
        };
        threads.push(PyThread {
            tstate,
            thread_id: memory.read_u64(tstate.wrapping_add(layout.tstate_thread_id))?,
            native_id,
        });
        tstate = memory.read_u64(tstate.wrapping_add(layout.tstate_next))?;
    }
    Ok(threads)
}

/// Where each thread's `PyThreadState*` is, relative to its thread pointer.
#[derive(Debug, PartialEq, Eq)]
enum Slot {
    /// At this offset for every thread.
    Found(u64),
    /// Not consistent yet (threads starting or exiting): why.
    Unsettled(String),
}

/// Indices of the 8-byte words of `block` that hold a thread state of thread `id`.
fn tstate_words<'a>(
    block: &'a [u8],
    threads: &'a [PyThread],
    id: u64,
) -> impl Iterator<Item = u64> + 'a {
    block
        .chunks_exact(8)
        .enumerate()
        .filter_map(move |(i, word)| {
            let value = <[u8; 8]>::try_from(word).map_or(0, u64::from_ne_bytes);
            threads
                .iter()
                .any(|t| t.thread_id == id && t.tstate == value)
                .then_some(i as u64)
        })
}

/// The thread pointers (`thread_id`, i.e. `pthread_self()`) of the threads that have one;
/// `None` when no thread has started yet.
fn thread_pointers(threads: &[PyThread]) -> Option<BTreeSet<u64>> {
    let ids: BTreeSet<u64> = threads
        .iter()
        .map(|t| t.thread_id)
        .filter(|&id| id != 0)
        .collect();
    (!ids.is_empty()).then_some(ids)
}

/// Finds the static-TLS variable, below the thread pointer, that holds each thread's
/// bound thread state (3.15's `_Py_tss_gilstate`; the offset is returned two's-complement,
/// BPF adds it with wrap-around). `_Py_tss_tstate` next to it holds the same state while
/// the thread holds the GIL: the two are told apart by `gilstate`, the bound state's
/// offset read from the interpreter's code, when known; else, when every candidate
/// thread holds the GIL, the slot is unsettled.
fn locate_tls(
    memory: &ProcessMemory,
    threads: &[PyThread],
    gilstate: Option<u64>,
) -> anyhow::Result<Slot> {
    let Some(thread_ids) = thread_pointers(threads) else {
        return Ok(Slot::Unsettled("no Python thread is running yet".into()));
    };
    let mut common: Option<BTreeSet<u64>> = None;
    for &id in &thread_ids {
        let mut block = vec![0u8; SLOT_SEARCH_BYTES];
        let base = id.wrapping_sub(SLOT_SEARCH_BYTES as u64);
        memory.read_bytes(base, &mut block)?;
        let offsets: BTreeSet<u64> = tstate_words(&block, threads, id)
            .map(|i| (8 * i).wrapping_sub(SLOT_SEARCH_BYTES as u64))
            .collect();
        common = Some(match common {
            None => offsets,
            Some(c) => c.intersection(&offsets).copied().collect(),
        });
    }
    let common = common.unwrap_or_default();
    if let Some(g) = gilstate.filter(|g| common.contains(g)) {
        return Ok(Slot::Found(g));
    }
    match common.len() {
        1 => Ok(Slot::Found(*common.first().unwrap_or(&0))),
        0 => bail!("cannot locate the thread-state variable in static TLS (non-glibc libc?)"),
        n => Ok(Slot::Unsettled(format!(
            "{n} thread-local candidates for the thread state; waiting for a thread to release the GIL"
        ))),
    }
}

/// Finds the offset from a thread's pointer (`pthread_self()`, which CPython stores as
/// `thread_id`) to the pthread TSS slot that holds its thread state: glibc's place for
/// `key` when it holds for every thread, else the one offset below [`SLOT_SEARCH_BYTES`]
/// that does.
fn locate_slot(memory: &ProcessMemory, threads: &[PyThread], key: u32) -> anyhow::Result<Slot> {
    let Some(thread_ids) = thread_pointers(threads) else {
        return Ok(Slot::Unsettled("no Python thread is running yet".into()));
    };
    let glibc = (key < GLIBC_FIRST_BLOCK_KEYS).then(|| GLIBC_SPECIFIC + 16 * u64::from(key) + 8);
    let mut common: Option<BTreeSet<u64>> = None;
    let mut glibc_matches = 0;
    for &id in &thread_ids {
        let mut block = vec![0u8; SLOT_SEARCH_BYTES];
        let n = memory.read_prefix(id, &mut block)?;
        // A thread can own several thread states (one preallocated by its parent, or
        // more created by C code): any of them in the slot identifies the slot.
        let offsets: BTreeSet<u64> = tstate_words(&block[..n], threads, id)
            .map(|i| 8 * i)
            .collect();
        if glibc.is_some_and(|g| offsets.contains(&g)) {
            glibc_matches += 1;
        }
        common = Some(match common {
            None => offsets,
            Some(c) => c.intersection(&offsets).copied().collect(),
        });
    }
    let common = common.unwrap_or_default();
    if let Some(g) = glibc.filter(|g| common.contains(g)) {
        return Ok(Slot::Found(g));
    }
    if let Some(&offset) = common.first() {
        return Ok(Slot::Found(offset));
    }
    if glibc_matches > 0 {
        return Ok(Slot::Unsettled(format!(
            "the thread-state slot holds for {glibc_matches} of {} threads",
            thread_ids.len()
        )));
    }
    bail!("cannot locate the thread-state slot (non-glibc libc?); pthread key {key}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fake thread pointers: blocks of this process's own memory.
    struct Blocks(Vec<Vec<u64>>);

    impl Blocks {
        fn new(n: usize) -> Self {
            Blocks(vec![vec![0; SLOT_SEARCH_BYTES / 8]; n])
        }
        fn base(&self, i: usize) -> u64 {
            self.0[i].as_ptr() as u64
        }
        fn thread(&self, i: usize, tstate: u64) -> PyThread {
            PyThread {
                tstate,
                thread_id: self.base(i),
                native_id: None,
            }
        }
    }

    fn locate(threads: &[PyThread], key: u32) -> anyhow::Result<Slot> {
        locate_slot(&ProcessMemory::new(std::process::id()), threads, key)
    }

    #[test]
    fn slot_calibration() {
        let glibc = |key: u64| (0x318 + 16 * key) as usize / 8;
        let mut b = Blocks::new(2);
        let threads = [b.thread(0, 0xa000), b.thread(1, 0xb000)];
        // glibc's slot for key 2 holds each thread's own state.
        b.0[0][glibc(2)] = 0xa000;
        b.0[1][glibc(2)] = 0xb000;
        assert_eq!(locate(&threads, 2).unwrap(), Slot::Found(0x338));
        // A parent-preallocated state shares the parent's thread id: either may be in the slot.
        let with_prealloc = [threads[0], threads[1], b.thread(1, 0xc000)];
        assert_eq!(locate(&with_prealloc, 2).unwrap(), Slot::Found(0x338));
        // Another libc layout: found by scanning, when the same offset holds for all.
        b.0[0][glibc(2)] = 0;
        b.0[1][glibc(2)] = 0;
        b.0[0][100] = 0xa000;
        b.0[1][100] = 0xb000;
        b.0[1][7] = 0xb000;
        assert_eq!(locate(&threads, 2).unwrap(), Slot::Found(800));
        // glibc's slot holds for one thread only and nothing else is common: a thread is
        // starting or exiting, try later.
        b.0[1][100] = 0;
        b.0[0][glibc(2)] = 0xa000;
        assert!(matches!(locate(&threads, 2).unwrap(), Slot::Unsettled(_)));
        // Nothing anywhere: an error.
        b.0[0][glibc(2)] = 0;
        let err = locate(&threads, 2).unwrap_err().to_string();
        assert!(err.contains("cannot locate the thread-state slot"), "{err}");
        // No thread has started yet.
        let unborn = [PyThread {
            tstate: 0xa000,
            thread_id: 0,
            native_id: None,
        }];
        assert!(matches!(locate(&unborn, 0).unwrap(), Slot::Unsettled(_)));
    }

    #[test]
    fn tls_calibration() {
        let mut b = Blocks::new(1);
        // The thread pointer is at the block's end: the variables lie below it.
        let tp = b.base(0) + SLOT_SEARCH_BYTES as u64;
        let threads = [PyThread {
            tstate: 0xa000,
            thread_id: tp,
            native_id: None,
        }];
        let word = |offset: i64| (SLOT_SEARCH_BYTES as i64 + offset) as usize / 8;
        let locate = |gilstate: Option<i64>| {
            let memory = ProcessMemory::new(std::process::id());
            locate_tls(&memory, &threads, gilstate.map(|g| g as u64)).unwrap()
        };
        // The thread holds the GIL: the attached state (-0x20) and the bound one (-0x28)
        // both hold it.
        b.0[0][word(-0x28)] = 0xa000;
        b.0[0][word(-0x20)] = 0xa000;
        assert!(matches!(locate(None), Slot::Unsettled(_)));
        assert_eq!(locate(Some(-0x28)), Slot::Found((-0x28i64) as u64));
        // The code names a variable that does not hold the state: not trusted.
        assert!(matches!(locate(Some(-0x30)), Slot::Unsettled(_)));
        // The GIL released: one candidate, with or without the code's word.
        b.0[0][word(-0x20)] = 0;
        assert_eq!(locate(None), Slot::Found((-0x28i64) as u64));
        assert_eq!(locate(Some(-0x28)), Slot::Found((-0x28i64) as u64));
    }
}
