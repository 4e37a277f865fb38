//! `_asyncio._set_running_loop`, the C function asyncio's `run_forever` calls with the loop
//! when it starts running and with `None` when it stops: where it lies in a file, found
//! without symbols.
//!
//! The function is static (stripped builds have no symbol for it), but the `_asyncio`
//! module lists it in its `PyMethodDef` table: `{ml_name, ml_meth, ml_flags, ml_doc}`.
//! The name string `_set_running_loop` is found in the file, then the 8-byte slot that
//! points to it (`ml_name`; in a position-independent file through an
//! `R_X86_64_RELATIVE` relocation's addend, in a non-PIE one directly in its data), then
//! `ml_meth` in the next slot the same way.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt as _;

use anyhow::Context as _;
use nix::errno::Errno;
use object::{
    Object as _, ObjectSection as _, RelocationFlags, SectionKind, elf::R_X86_64_RELATIVE,
};

use super::elf::{self, BoundedCache, Elf};
use super::mapped_file;
use super::maps::{Maps, file_name};
use super::probe_site::ProbeSite;
use super::version::Version;

/// The method's name in the table, NUL-terminated.
const NAME: &[u8] = b"_set_running_loop\0";

/// `_set_running_loop` in the files of a process, as [`find`] found it.
#[derive(Debug, Default)]
pub struct Found {
    /// The function in each file that defines it.
    pub sites: Vec<ProbeSite>,
    /// The device and inode of each file read (with or without the function).
    pub examined: Vec<(u64, u64)>,
    /// The files that could not be read or parsed, each with why.
    pub failures: Vec<anyhow::Error>,
}

/// `_set_running_loop` in the files of process `pid` (Python `version`, interpreter in
/// `binary`, mappings `maps`) that may hold the `_asyncio` module, but those `known`
/// (device and inode) from an earlier look: its `lib-dynload/_asyncio.*.so`, any
/// `_asyncio.*.so` it has mapped, or else the interpreter itself (built in). Each is
/// opened inside the process's root, never blocking, and only when a regular file
/// ([`mapped_file::open_path`]).
pub fn find(
    pid: u32,
    maps: &Maps,
    binary: &str,
    version: Version,
    known: &HashSet<(u64, u64)>,
) -> Found {
    let mut found = Found::default();
    for path in candidate_files(pid, maps, binary, version) {
        let site = mapped_file::open_path(pid, &path).and_then(|file| {
            let meta = file
                .metadata()
                .with_context(|| format!("cannot stat {path}"))?;
            let identity = (meta.dev(), meta.ino());
            if known.contains(&identity) || found.examined.contains(&identity) {
                return Ok(None);
            }
            found.examined.push(identity);
            let cache = BoundedCache::new(file);
            let offset = file_offset(&cache).with_context(|| format!("in {path}"))?;
            (offset.map(|offset| ProbeSite::new(cache.into_file(), path.clone(), offset)))
                .transpose()
        });
        match site {
            Ok(Some(site)) => found.sites.push(site),
            Ok(None) => {}
            // Gone (a module removed since it was mapped): nothing to probe, nothing odd.
            Err(e) if e.root_cause().downcast_ref() == Some(&Errno::ENOENT) => {}
            Err(e) => found.failures.push(e),
        }
    }
    found
}

/// The files of process `pid` (Python `version`, interpreter in `binary`, mappings
/// `maps`) that may hold the `_asyncio` module, as the process names them.
fn candidate_files(pid: u32, maps: &Maps, binary: &str, version: Version) -> Vec<String> {
    let is_module = |name: &str| name.starts_with("_asyncio.") && name.ends_with(".so");
    let mut files = Vec::new();
    if let Some(prefix) = elf::install_prefix(binary) {
        let dynload = prefix
            .join("lib")
            .join(format!("python{}.{}", version.major, version.minor))
            .join("lib-dynload");
        let dir = elf::host_path(pid, &dynload.to_string_lossy());
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if is_module(&entry.file_name().to_string_lossy()) {
                files.push(
                    dynload
                        .join(entry.file_name())
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    for m in maps.files().filter(|m| is_module(file_name(&m.path))) {
        if !files.contains(&m.path) {
            files.push(m.path.clone());
        }
    }
    if files.is_empty() {
        files.push(binary.to_owned());
    }
    files
}

/// The file offset of `_asyncio._set_running_loop`'s C function in the ELF file read
/// through `cache` (the interpreter, libpython, or `lib-dynload/_asyncio.*.so`), if the
/// file defines the `_asyncio` module.
fn file_offset(cache: &BoundedCache) -> anyhow::Result<Option<u64>> {
    let elf = Elf::parse(cache).context("cannot parse it as an ELF file")?;
    let Some(function) = function_address(&elf) else {
        return Ok(None);
    };
    let text = elf.sections().find(|s| is_text_of(s, function));
    Ok(text.and_then(|s| Some(s.file_range()?.0 + (function - s.address()))))
}

/// Whether `section` is executable code holding link-time address `at`.
fn is_text_of<'a>(
    section: &object::read::elf::ElfSection64<'a, '_, object::Endianness, &'a BoundedCache>,
    at: u64,
) -> bool {
    section.kind() == SectionKind::Text
        && (section.address()..section.address() + section.size()).contains(&at)
}

/// The link-time address of the function: `ml_meth` of the method table entry whose
/// `ml_name` is [`NAME`].
fn function_address(elf: &Elf<'_>) -> Option<u64> {
    let relative: HashMap<u64, u64> = elf
        .dynamic_relocations()
        .into_iter()
        .flatten()
        .filter(|(_, r)| {
            matches!(r.flags(), RelocationFlags::Elf { r_type } if r_type == R_X86_64_RELATIVE)
        })
        .map(|(offset, r)| (offset, r.addend() as u64))
        .collect();
    let slot = |at: u64| -> Option<u64> { relative.get(&at).copied().or_else(|| word_at(elf, at)) };
    for name in name_addresses(elf) {
        let entries = if relative.is_empty() {
            absolute_slots(elf, name)
        } else {
            relative
                .iter()
                .filter(|&(_, &target)| target == name)
                .map(|(&at, _)| at)
                .collect()
        };
        for entry in entries {
            if let Some(function) = slot(entry + 8).filter(|&f| is_text(elf, f)) {
                return Some(function);
            }
        }
    }
    None
}

/// Addresses where [`NAME`] lies in the file's read-only data.
fn name_addresses(elf: &Elf<'_>) -> Vec<u64> {
    let mut found = Vec::new();
    for section in elf.sections().filter(|s| {
        matches!(
            s.kind(),
            SectionKind::ReadOnlyData | SectionKind::ReadOnlyString | SectionKind::Data
        )
    }) {
        let Ok(data) = section.data() else { continue };
        let mut from = 0;
        while let Some(i) = data[from..].windows(NAME.len()).position(|w| w == NAME) {
            found.push(section.address() + (from + i) as u64);
            from += i + 1;
        }
    }
    found
}

/// Aligned 8-byte slots of the file's data that hold `target` (a non-PIE file's
/// pointers need no relocation).
fn absolute_slots(elf: &Elf<'_>, target: u64) -> Vec<u64> {
    let mut found = Vec::new();
    for section in elf.sections().filter(|s| s.kind() == SectionKind::Data) {
        let Ok(data) = section.data() else { continue };
        for (i, word) in data.chunks_exact(8).enumerate() {
            if u64::from_le_bytes(word.try_into().expect("8-byte chunk")) == target {
                found.push(section.address() + 8 * i as u64);
            }
        }
    }
    found
}

/// The 8-byte word at link-time address `at` of the file's data, if it has one.
fn word_at(elf: &Elf<'_>, at: u64) -> Option<u64> {
    let section = elf
        .sections()
        .find(|s| (s.address()..s.address() + s.size()).contains(&at))?;
    let data = section.data().ok()?;
    let i = usize::try_from(at - section.address()).ok()?;
    Some(u64::from_le_bytes(data.get(i..i + 8)?.try_into().ok()?))
}

/// Whether link-time address `at` lies in executable code.
fn is_text(elf: &Elf<'_>, at: u64) -> bool {
    elf.sections().any(|s| is_text_of(&s, at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use object::ObjectSymbol as _;
    use std::fs::File;

    /// `_asyncio` of each test interpreter: pyenv's and Debian's lib-dynload modules,
    /// sid 3.14's, and sid 3.15's interpreter (built in).
    fn asyncio_files() -> Vec<std::path::PathBuf> {
        let mut files = Vec::new();
        for (version, tag) in [
            ("3.9.18", "39"),
            ("3.10.13", "310"),
            ("3.11.7", "311"),
            ("3.12.1", "312"),
            ("3.13.0", "313"),
        ] {
            let minor = &version[..version.rfind('.').expect("x.y.z")];
            files.push(format!(
                "/root/.pyenv/versions/{version}/lib/python{minor}/lib-dynload/_asyncio.cpython-{tag}-x86_64-linux-gnu.so"
            ).into());
        }
        files.push(
            "/usr/lib/python3.11/lib-dynload/_asyncio.cpython-311-x86_64-linux-gnu.so".into(),
        );
        let sid = blockprobe_pythons::cache_dir().join("root/usr");
        files.push(sid.join("lib/python3.14/lib-dynload/_asyncio.cpython-314-x86_64-linux-gnu.so"));
        files.push(sid.join("bin/python3.15"));
        files
    }

    #[test]
    fn finds_the_function_in_every_test_interpreter() {
        let mut checked = 0;
        for file in asyncio_files() {
            if !file.is_file() {
                eprintln!("skipped: {} not installed", file.display());
                continue;
            }
            let cache = BoundedCache::new(File::open(&file).unwrap());
            let offset = file_offset(&cache)
                .unwrap()
                .unwrap_or_else(|| panic!("no _set_running_loop in {}", file.display()));
            // Where the file keeps its symbols, the offset is the function's.
            let elf = Elf::parse(&cache).unwrap();
            if let Some(sym) = elf
                .symbols()
                .find(|s| s.name() == Ok("_asyncio__set_running_loop"))
            {
                let text = elf
                    .sections()
                    .find(|s| is_text_of(s, sym.address()))
                    .unwrap();
                let expected = text.file_range().unwrap().0 + (sym.address() - text.address());
                assert_eq!(offset, expected, "{}", file.display());
            }
            checked += 1;
        }
        assert!(checked > 0, "no test interpreter installed");
    }

    #[test]
    fn a_file_without_asyncio_has_none() {
        let cache = BoundedCache::new(File::open("/bin/true").unwrap());
        assert_eq!(file_offset(&cache).unwrap(), None);
    }

    #[test]
    fn a_fifo_in_place_of_the_module_is_refused_at_once_and_a_gone_one_skipped() {
        // An interpreter whose lib-dynload holds a FIFO named as the module, no writer.
        let prefix = tempfile::tempdir().unwrap();
        let dynload = prefix.path().join("lib/python3.11/lib-dynload");
        std::fs::create_dir_all(&dynload).unwrap();
        let fifo = dynload.join("_asyncio.cpython-311-x86_64-linux-gnu.so");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRUSR).unwrap();
        let binary = prefix.path().join("bin/python3.11");
        let version = Version::from_file_name("python3.11").unwrap();
        // And a mapped module removed since: skipped without a word.
        let gone = "/nonexistent/_asyncio.cpython-311-x86_64-linux-gnu.so";
        let maps = Maps::parse(&format!(
            "7f0000000000-7f0000001000 r--p 00000000 fe:00 1 {gone}\n"
        ));
        assert_eq!(maps.files().count(), 1);
        let found = find(
            std::process::id(),
            &maps,
            &binary.to_string_lossy(),
            version,
            &HashSet::new(),
        );
        assert!(found.sites.is_empty() && found.examined.is_empty());
        let [why] = &found.failures[..] else {
            panic!("{:?}", found.failures)
        };
        assert!(why.to_string().contains("is now a FIFO"), "{why:#}");
    }
}
