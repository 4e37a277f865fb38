//! asyncio task identity (CPython 3.14+): the `_asyncio` extension module carries an
//! `.AsyncioDebug` section of offsets (no cookie, no symbol) that say where a thread
//! state keeps its running task and where a task keeps its name.

use super::elf;
use super::maps::{Maps, file_name};
use super::memory::ProcessMemory;

/// Longest task name read, in bytes.
const MAX_NAME_BYTES: usize = 256;
/// Offset of `ob_type` in an object and of `tp_name` in a type object.
const OB_TYPE: u64 = 8;
const TP_NAME: u64 = 24;
/// 3.12+ `int` layout: `lv_tag` (digit count << 3 | sign bits), then 30-bit digits.
const LONG_TAG: u64 = 16;
const LONG_DIGITS: u64 = 24;

/// The offsets blockprobe uses from `Py_AsyncioModuleDebugOffsets`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AsyncioOffsets {
    /// `asyncio_thread_state.asyncio_running_loop`: from a thread state.
    pub running_loop: u64,
    /// `asyncio_thread_state.asyncio_running_task`: from a thread state.
    pub running_task: u64,
    /// `asyncio_task_object.task_name`: from a task.
    pub task_name: u64,
}

/// Index of each used field among the section's u64s: task object (size, task_name, …
/// 7 fields), interpreter state (2), thread state (size, running_loop, running_task, …).
const TASK_NAME_INDEX: usize = 1;
const RUNNING_LOOP_INDEX: usize = 10;
const RUNNING_TASK_INDEX: usize = 11;
/// Fields in the section (3.14, 3.15).
const SECTION_U64S: usize = 13;

/// The section holding the offsets.
const SECTION: &str = ".AsyncioDebug";

/// The offsets in process `pid` (mappings `maps`): from the `_asyncio` extension module
/// once it is loaded, or from the interpreter's own file when `_asyncio` is built in
/// (Debian's 3.15).
pub fn find(pid: u32, maps: &Maps) -> Option<AsyncioOffsets> {
    let may_hold = |name: &str| {
        ["_asyncio.", "python", "libpython"]
            .iter()
            .any(|p| name.starts_with(p))
    };
    maps.files()
        .filter(|m| may_hold(file_name(&m.path)))
        .find_map(|m| parse_section(&elf::mapped_section(pid, m, SECTION).ok()??))
}

/// Reads the offsets from the contents of an `.AsyncioDebug` section.
fn parse_section(data: &[u8]) -> Option<AsyncioOffsets> {
    let word = |i: usize| -> Option<u64> {
        let bytes = data.get(i * 8..i * 8 + 8)?;
        Some(u64::from_le_bytes(bytes.try_into().ok()?))
    };
    if data.len() < SECTION_U64S * 8 {
        return None;
    }
    Some(AsyncioOffsets {
        running_loop: word(RUNNING_LOOP_INDEX).filter(|&o| o != 0)?,
        running_task: word(RUNNING_TASK_INDEX).filter(|&o| o != 0)?,
        task_name: word(TASK_NAME_INDEX).filter(|&o| o != 0)?,
    })
}

/// Longest type name read, in bytes (`str`, `BaseEventLoop`).
const MAX_TYPE_NAME_BYTES: usize = 32;
/// Offset of `tp_mro` (a tuple of types) in a type object, and of a tuple's size and
/// items (3.14+, 64-bit: the tuple caches its hash before its items).
const TP_MRO: u64 = 344;
const TUPLE_SIZE: u64 = 16;
const TUPLE_ITEMS: u64 = 32;
/// Longest method resolution order examined.
const MAX_MRO: u64 = 32;

/// The `tp_name` of type object `ty` (a Python class's is its bare name).
fn tp_name(memory: &ProcessMemory, ty: u64) -> Option<String> {
    let name = memory.read_u64(ty.checked_add(TP_NAME)?).ok()?;
    let mut buf = [0u8; MAX_TYPE_NAME_BYTES];
    let read = memory.read_prefix(name, &mut buf).ok()?;
    let end = buf[..read].iter().position(|&b| b == 0)?;
    String::from_utf8(buf[..end].to_vec()).ok()
}

/// The type name of `object`.
fn type_name(memory: &ProcessMemory, object: u64) -> Option<String> {
    tp_name(memory, memory.read_u64(object.checked_add(OB_TYPE)?).ok()?)
}

/// Whether event loop `object` is one of asyncio's selector loops (its class derives
/// from `BaseEventLoop`, which polls from `_run_once`) rather than a loop that polls
/// from C (`uvloop.Loop`); read from its type's method resolution order (3.14+ layout).
pub fn is_selector_loop(memory: &ProcessMemory, object: u64) -> Option<bool> {
    let ty = memory.read_u64(object.checked_add(OB_TYPE)?).ok()?;
    let mro = memory.read_u64(ty.checked_add(TP_MRO)?).ok()?;
    let len = memory.read_u64(mro.checked_add(TUPLE_SIZE)?).ok()?;
    let mut found = false;
    for i in 0..len.min(MAX_MRO) {
        let base = memory.read_u64(mro + TUPLE_ITEMS + 8 * i).ok()?;
        found |= tp_name(memory, base)? == "BaseEventLoop";
    }
    Some(found)
}

/// A task's name from its name object: a `str`, or the `int` counter CPython keeps until
/// someone asks for the name (then `Task-N`). `None` when it is neither.
pub fn task_name(
    memory: &ProcessMemory,
    name: u64,
    read_str: impl Fn(u64) -> anyhow::Result<String>,
) -> Option<String> {
    match type_name(memory, name)?.as_str() {
        "str" => read_str(name)
            .ok()
            .map(|s| s.chars().take(MAX_NAME_BYTES).collect()),
        "int" => {
            let tag = memory.read_u64(name + LONG_TAG).ok()?;
            let digits = (tag >> 3) as usize;
            if tag & 3 != 0 || digits > 2 {
                return None;
            }
            let mut value: u64 = 0;
            for i in (0..digits).rev() {
                let digit = memory.read_u32(name + LONG_DIGITS + 4 * i as u64).ok()?;
                value = (value << 30) | u64::from(digit);
            }
            Some(format!("Task-{value}"))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_offsets_of_debian_3_14() {
        let dynload = blockprobe_pythons::sid_root().join("usr/lib/python3.14/lib-dynload");
        let Some(module) = std::fs::read_dir(&dynload).ok().and_then(|d| {
            d.flatten()
                .map(|e| e.path())
                .find(|p| file_name(&p.to_string_lossy()).starts_with("_asyncio."))
        }) else {
            panic!(
                "no _asyncio module under {} (run `cargo xtask pythons`)",
                dynload.display()
            );
        };
        let elf = std::fs::read(&module).unwrap();
        let data = {
            use object::{Object as _, ObjectSection as _};
            let file = object::File::parse(&*elf).unwrap();
            file.section_by_name(SECTION)
                .expect("section")
                .data()
                .unwrap()
                .to_vec()
        };
        let offsets = parse_section(&data).expect("offsets");
        // TaskObj: the name comes after the future's fields; the running task lives in
        // _PyThreadStateImpl, past the public PyThreadState.
        assert!(
            offsets.task_name > 16 && offsets.task_name < 512,
            "{offsets:?}"
        );
        assert!(offsets.running_task > 200, "{offsets:?}");
        assert_eq!(
            offsets.running_loop + 8,
            offsets.running_task,
            "{offsets:?}"
        );
        assert!(
            parse_section(&data[..40]).is_none(),
            "a short section is refused"
        );
    }
}
