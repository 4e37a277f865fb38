//! Finding the ELF file that holds a process's `_PyRuntime` (the python executable or
//! `libpython3.X.so`), its symbols and where it is loaded.

use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use object::read::elf::ElfFile64;
use object::read::{ReadCache, ReadRef};
use object::{Object as _, ObjectSection as _, ObjectSegment as _, ObjectSymbol};

use super::mapped_file;
use super::maps::{Mapping, Maps, file_name};
use super::probe_site::ProbeSite;
use super::tls;
use super::version::Version;

/// Size of a page: the granularity of file mappings.
const PAGE_MASK: u64 = !0xfff;
/// The largest read of a file: symbol and string tables and `.rodata` of the largest
/// interpreters take a few MiB; a file claiming a larger section (a sparse file of
/// several GB) is refused, not read.
const MAX_READ_BYTES: u64 = 64 << 20;

/// A file read through a cache, refusing any single read over [`MAX_READ_BYTES`]
/// (the cache would allocate all of it first).
pub struct BoundedCache(ReadCache<File>);

impl BoundedCache {
    /// Reads `file` through a cache.
    pub fn new(file: File) -> Self {
        BoundedCache(ReadCache::new(file))
    }

    /// The file read.
    pub fn into_file(self) -> File {
        self.0.into_inner()
    }
}

impl<'a> ReadRef<'a> for &'a BoundedCache {
    fn len(self) -> Result<u64, ()> {
        (&self.0).len()
    }

    fn read_bytes_at(self, offset: u64, size: u64) -> Result<&'a [u8], ()> {
        if size > MAX_READ_BYTES {
            return Err(());
        }
        (&self.0).read_bytes_at(offset, size)
    }

    fn read_bytes_at_until(self, range: Range<u64>, delimiter: u8) -> Result<&'a [u8], ()> {
        // Bounded by the cache itself (4 KiB).
        (&self.0).read_bytes_at_until(range, delimiter)
    }
}

/// The ELF file holding the interpreter, with run-time addresses of its symbols.
#[derive(Clone, Debug)]
pub struct PythonBinary {
    /// Path of the file inside the process's mount namespace.
    pub path: String,
    /// Address of `_PyRuntime`.
    pub runtime: u64,
    /// Address of `Py_Version` (3.11+).
    pub py_version: Option<u64>,
    /// Patch level found in the file's version strings, when it has no `Py_Version`.
    pub patch_in_strings: Option<u8>,
    /// Address of `PyCode_Type`.
    pub code_type: u64,
    /// Offset from the thread pointer of the static-TLS variable that holds each thread's
    /// bound thread state, when the file's code reads it at a fixed offset (see [`tls`]).
    pub gilstate_tls: Option<u64>,
}

/// What the mappings of a process say about Python.
#[derive(Clone, Debug)]
pub enum Discovery {
    /// No mapped file defines `_PyRuntime`, and none is waiting for a libpython.
    Absent,
    /// A python executable is mapped but the libpython it needs is not yet (just exec'd).
    Loading,
    /// The file that defines `_PyRuntime`.
    Found(PythonBinary),
}

/// Looks for the interpreter among the files process `pid` maps (`maps`).
///
/// Only files named `python*` or `libpython*` are considered; each is opened as
/// [`mapped_file::open`] does: the very file mapped, in containers too.
pub fn discover(pid: u32, maps: &Maps) -> anyhow::Result<Discovery> {
    let candidates = maps.files().filter(|m| {
        let name = file_name(&m.path);
        name.starts_with("python") || name.starts_with("libpython")
    });
    let mut loading = false;
    for candidate in candidates {
        let file = mapped_file::open(pid, candidate)?;
        let cache = BoundedCache::new(file);
        let elf = ElfFile64::<object::Endianness, _>::parse(&cache)
            .with_context(|| format!("cannot parse ELF file {}", candidate.path))?;
        let symbols = find_symbols(
            &elf,
            &[
                "_PyRuntime",
                "Py_Version",
                "PyCode_Type",
                tls::GILSTATE_GETTER,
            ],
        );
        let [Some(runtime), py_version, code_type, gilstate_getter] = symbols else {
            loading |= needs_libpython(&elf)?;
            continue;
        };
        let code_type = code_type.with_context(|| {
            format!("{} defines _PyRuntime but not PyCode_Type", candidate.path)
        })?;
        let bias = load_bias(&elf, maps, &candidate.path)?;
        let patch_in_strings = match (py_version, version_from_name(&candidate.path)) {
            (None, Some((major, minor))) => elf
                .section_by_name(".rodata")
                .and_then(|s| s.data().ok())
                .and_then(|data| patch_in_strings(data, major, minor)),
            _ => None,
        };
        return Ok(Discovery::Found(PythonBinary {
            path: candidate.path.clone(),
            runtime: runtime.wrapping_add(bias),
            py_version: py_version.map(|a| a.wrapping_add(bias)),
            patch_in_strings,
            code_type: code_type.wrapping_add(bias),
            gilstate_tls: gilstate_getter
                .and_then(|getter| code_at(&elf, &cache, getter, tls::GETTER_PREFIX_BYTES))
                .and_then(tls::local_exec_load),
        }));
    }
    Ok(if loading {
        Discovery::Loading
    } else {
        Discovery::Absent
    })
}

/// `(major, minor)` from the file name of `path`.
fn version_from_name(path: &str) -> Option<(u8, u8)> {
    Version::from_file_name(file_name(path)).map(|v| (v.major, v.minor))
}

/// The patch level of `major.minor` in a file's read-only strings: every NUL-terminated
/// `major.minor.N` (not preceded by a digit or a dot; the linker merges `PY_VERSION` into
/// the tail of longer strings such as the install prefix) must agree.
fn patch_in_strings(data: &[u8], major: u8, minor: u8) -> Option<u8> {
    let needle = format!("{major}.{minor}.");
    let needle = needle.as_bytes();
    let mut found: Option<u8> = None;
    let mut from = 0;
    while let Some(i) = data[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
    {
        from = i + 1;
        if i > 0 && (data[i - 1].is_ascii_digit() || data[i - 1] == b'.') {
            continue;
        }
        let rest = &data[i + needle.len()..];
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || rest.get(digits) != Some(&0) {
            continue;
        }
        let patch: u8 = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
        match found {
            Some(p) if p != patch => return None,
            _ => found = Some(patch),
        }
    }
    found
}

/// The contents of section `name` of the ELF file behind a mapping, if it has one
/// (read through a cache: only the headers and that section are read).
pub fn mapped_section(pid: u32, m: &Mapping, name: &str) -> anyhow::Result<Option<Vec<u8>>> {
    let cache = BoundedCache::new(mapped_file::open(pid, m)?);
    let file = object::File::parse(&cache)?;
    let Some(section) = file.section_by_name(name) else {
        return Ok(None);
    };
    Ok(Some(section.data()?.to_vec()))
}

/// Exported function `name` of the ELF file behind mapping `m` of process `pid`
/// (`maps`: its mappings), if the file exports it: where it lies in the process's memory,
/// and the file, open, with its offset there.
pub fn mapped_function(
    pid: u32,
    maps: &Maps,
    m: &Mapping,
    name: &str,
) -> anyhow::Result<Option<(Range<u64>, ProbeSite)>> {
    let cache = BoundedCache::new(mapped_file::open(pid, m)?);
    let found = {
        let elf =
            Elf::parse(&cache).with_context(|| format!("cannot parse ELF file {}", m.path))?;
        match exported(&elf, name) {
            Some((address, size, offset)) => {
                let start = address.wrapping_add(load_bias(&elf, maps, &m.path)?);
                Some((start..start.wrapping_add(size.max(1)), offset))
            }
            None => None,
        }
    };
    let Some((run, offset)) = found else {
        return Ok(None);
    };
    let site = ProbeSite::new(cache.into_file(), m.path.clone(), offset)?;
    Ok(Some((run, site)))
}

/// Exported function `name` of ELF file `path` of process `pid`'s mount namespace (opened
/// as [`mapped_file::open_path`] opens), if it is one and exports it.
pub fn exported_function(pid: u32, path: &str, name: &str) -> Option<ProbeSite> {
    let cache = BoundedCache::new(mapped_file::open_path(pid, path).ok()?);
    let offset = {
        let elf = Elf::parse(&cache).ok()?;
        exported(&elf, name)?.2
    };
    ProbeSite::new(cache.into_file(), path.to_owned(), offset).ok()
}

/// The link-time address, size and file offset of function `name`, if the file exports
/// it.
fn exported(elf: &Elf<'_>, name: &str) -> Option<(u64, u64, u64)> {
    let sym = (elf.dynamic_symbols()).find(|s| !s.is_undefined() && s.name() == Ok(name))?;
    let offset = file_offset_of(elf, sym.address())?;
    Some((sym.address(), sym.size(), offset))
}

/// The file offset of link-time address `address`, in the loadable segment holding it.
fn file_offset_of(elf: &Elf<'_>, address: u64) -> Option<u64> {
    elf.segments().find_map(|seg| {
        let within = address.checked_sub(seg.address())?;
        let (offset, size) = seg.file_range();
        (within < size).then_some(offset + within)
    })
}

/// The file `path` of process `pid`'s mount namespace, seen from the host.
pub fn host_path(pid: u32, path: &str) -> PathBuf {
    Path::new(&format!("/proc/{pid}/root")).join(path.trim_start_matches('/'))
}

/// The installation prefix of the interpreter in file `binary`
/// (`<prefix>/bin/python3.X` or `<prefix>/lib/libpython3.X.so`).
pub fn install_prefix(binary: &str) -> Option<&Path> {
    Path::new(binary).parent().and_then(Path::parent)
}

/// An ELF file read through a [`BoundedCache`].
pub(super) type Elf<'a> = ElfFile64<'a, object::Endianness, &'a BoundedCache>;

/// Link-time addresses of `names`, in the same order: from `.dynsym` (small, and where
/// the exported C API lives), or from `.symtab` when `.dynsym` has none of them.
fn find_symbols<const N: usize>(elf: &Elf<'_>, names: &[&str; N]) -> [Option<u64>; N] {
    let exported = lookup(elf.dynamic_symbols(), names);
    if exported.iter().any(Option::is_some) {
        exported
    } else {
        lookup(elf.symbols(), names)
    }
}

/// Addresses of the defined symbols among `symbols` named `names`.
fn lookup<'a, const N: usize>(
    symbols: impl Iterator<Item = impl ObjectSymbol<'a>>,
    names: &[&str; N],
) -> [Option<u64>; N] {
    let mut found = [None; N];
    for sym in symbols {
        if sym.is_undefined() {
            continue;
        }
        let Ok(name) = sym.name() else { continue };
        if let Some(i) = names.iter().position(|n| *n == name) {
            found[i].get_or_insert(sym.address());
        }
        if found.iter().all(Option::is_some) {
            break;
        }
    }
    found
}

/// The `len` bytes of the file at link-time address `address` (in a loadable segment),
/// or fewer where the segment's file contents end.
fn code_at<'a>(
    elf: &Elf<'a>,
    cache: &'a BoundedCache,
    address: u64,
    len: usize,
) -> Option<&'a [u8]> {
    let seg = elf
        .segments()
        .find(|seg| (seg.address()..seg.address().saturating_add(seg.size())).contains(&address))?;
    let (file_offset, file_size) = seg.file_range();
    let within = address - seg.address();
    let len = (len as u64).min(file_size.checked_sub(within)?);
    cache.read_bytes_at(file_offset + within, len).ok()
}

/// Whether the file lists a `libpython*` in its `DT_NEEDED` entries.
fn needs_libpython(elf: &Elf<'_>) -> anyhow::Result<bool> {
    let table = elf.elf_dynamic_table().context("bad ELF dynamic section")?;
    Ok(table
        .iter()
        .filter(|d| d.tag == object::elf::DT_NEEDED)
        .filter_map(|d| table.string(d).ok())
        .any(|name| name.starts_with(b"libpython")))
}

/// Difference between run-time and link-time addresses of the file mapped at `path`.
fn load_bias(elf: &Elf<'_>, maps: &Maps, path: &str) -> anyhow::Result<u64> {
    for m in maps.iter().filter(|m| m.path == path) {
        for seg in elf.segments() {
            let (file_offset, _) = seg.file_range();
            if file_offset & PAGE_MASK == m.offset {
                return Ok(m.start.wrapping_sub(seg.address() & PAGE_MASK));
            }
        }
    }
    bail!("no mapping of {path} matches one of its loadable segments")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_patch_level_in_strings() {
        let data =
            b"x\x00/opt/versions/3.9.18\x00Python-3.9.18\x00/x/13.9.7\x003.9.x\x003.9.5rc1\x00";
        assert_eq!(patch_in_strings(data, 3, 9), Some(18));
        assert_eq!(patch_in_strings(b"3.9.1\0 3.9.2\0", 3, 9), None);
        assert_eq!(patch_in_strings(b"nothing", 3, 9), None);
    }

    #[test]
    fn oversized_symbol_tables_are_not_read() {
        // Debian's static python: its `.dynsym` exports Py_Version.
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("python3.11");
        std::fs::copy("/usr/bin/python3.11", &copy).unwrap();
        let (header_at, table_at) = {
            let cache = BoundedCache::new(File::open(&copy).unwrap());
            let elf = Elf::parse(&cache).unwrap();
            assert!(find_symbols(&elf, &["Py_Version"])[0].is_some());
            use object::read::elf::{FileHeader as _, SectionHeader as _};
            let endian = elf.endian();
            let shoff = elf.elf_header().e_shoff(endian);
            let (index, dynsym) = (elf.elf_section_table().iter().enumerate())
                .find(|(_, s)| s.sh_type(endian) == object::elf::SHT_DYNSYM)
                .unwrap();
            (shoff + 64 * index as u64, dynsym.sh_offset(endian))
        };
        // The table now claims 8 GiB, and the file (sparse) has them.
        let huge: u64 = 8 << 30;
        let file = std::fs::OpenOptions::new().write(true).open(&copy).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, &huge.to_le_bytes(), header_at + 32)
            .unwrap();
        file.set_len(table_at + huge).unwrap();
        let since = std::time::Instant::now();
        let cache = BoundedCache::new(File::open(&copy).unwrap());
        assert!(Elf::parse(&cache).is_err());
        assert!(since.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn non_python_process_has_no_runtime() {
        let pid = std::process::id();
        assert!(matches!(
            discover(pid, &Maps::read(pid).unwrap()).unwrap(),
            Discovery::Absent
        ));
    }
}
