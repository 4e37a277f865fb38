//! Turning the code and instruction pointers BPF captured into function, file and line.

use foldhash::HashMap;

use anyhow::{Context as _, bail, ensure};
use blockprobe_common::stack::{MAX_FRAMES, RawFrame, RawStack};

use super::asyncio_debug;
use super::layout::{
    BYTES_DATA, BYTES_SIZE, InstrKind, Layout, OBJECT_TYPE, UNICODE_LENGTH, UNICODE_STATE,
};
use super::linetable;
use super::memory::ProcessMemory;
use crate::model::Frame;

/// Longest string read, in bytes of character data; longer strings are truncated.
const MAX_STRING_BYTES: usize = 4096;
/// Longest line table read; lines past its end are reported as unknown.
const MAX_LINETABLE_BYTES: usize = 64 * 1024;
/// Code objects remembered per process before the cache starts over.
const MAX_CACHED_CODES: usize = 16 * 1024;
/// Bytes the cache of one process may hold (names, line tables, lines looked up) before
/// it starts over: a process of long names and line tables cannot make it grow past it.
const MAX_CACHE_BYTES: usize = 8 << 20;
/// What one remembered line costs (a hash map entry).
const LINE_ENTRY_BYTES: usize = 32;
/// Lines remembered per code object (one per instruction seen) before its cache starts
/// over: a hostile frame can claim any instruction.
const MAX_CACHED_LINES: usize = 256;

/// Symbolizes the frames of one process, caching what it learnt about each code object.
#[derive(Debug)]
pub struct Symbolizer {
    memory: ProcessMemory,
    layout: Box<Layout>,
    code_type: u64,
    codes: HashMap<u64, CodeInfo>,
    /// Bytes `codes` holds, about ([`CodeInfo::bytes`] of each).
    cached_bytes: usize,
}

/// The fields of a code object's header that identify it: they are compared on every
/// lookup, so a cached entry is not used for another code object at a reused address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Header {
    ob_type: u64,
    flags: u32,
    first_line: i32,
    filename: u64,
    name: u64,
    linetable: u64,
}

impl CodeInfo {
    /// The bytes this entry holds, about.
    fn bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.function.capacity()
            + self.file.capacity()
            + self.linetable.capacity()
            + self.lines.len() * LINE_ENTRY_BYTES
    }
}

/// What the symbolizer learnt about a code object.
#[derive(Debug)]
struct CodeInfo {
    header: Header,
    function: String,
    file: String,
    linetable: Vec<u8>,
    /// Lines already looked up, by instruction offset.
    lines: HashMap<i64, Option<u32>>,
}

impl Symbolizer {
    /// A symbolizer for the process behind `memory`, whose `PyCode_Type` is at `code_type`.
    pub fn new(memory: ProcessMemory, layout: Layout, code_type: u64) -> Self {
        Self {
            memory,
            layout: Box::new(layout),
            code_type,
            codes: HashMap::default(),
            cached_bytes: 0,
        }
    }

    /// The memory of the process it symbolizes.
    pub fn memory(&self) -> &ProcessMemory {
        &self.memory
    }

    /// The number of code objects cached and the bytes they hold (for tests).
    #[cfg(test)]
    pub fn cache_size(&self) -> (usize, usize) {
        (self.codes.len(), self.cached_bytes)
    }

    /// The frames of `stack`, innermost first; a frame that cannot be read becomes
    /// `<unreadable>` in `<unknown>` at line 0. Interpreter shim frames (code 0) are left out.
    pub fn symbolize(&mut self, stack: &RawStack) -> Vec<Frame> {
        let len = (stack.len as usize).min(MAX_FRAMES);
        let raws: Vec<&RawFrame> = stack.frames[..len]
            .iter()
            .filter(|raw| raw.code != 0)
            .collect();
        let codes: Vec<u64> = raws.iter().map(|raw| raw.code).collect();
        let headers = self.headers(&codes);
        raws.into_iter()
            .zip(headers)
            .map(|(raw, header)| {
                header
                    .and_then(|header| self.frame(raw, header))
                    .unwrap_or_else(|_| Frame::unreadable())
            })
            .collect()
    }

    fn frame(&mut self, raw: &RawFrame, header: Header) -> anyhow::Result<Frame> {
        ensure!(
            header.ob_type == self.code_type,
            "{:#x} is not a code object",
            raw.code
        );
        if self
            .codes
            .get(&raw.code)
            .is_none_or(|info| info.header != header)
        {
            let info = self.load(header)?;
            let bytes = info.bytes();
            if self.codes.len() >= MAX_CACHED_CODES
                || self.cached_bytes.saturating_add(bytes) > MAX_CACHE_BYTES
            {
                self.codes.clear();
                self.cached_bytes = 0;
            }
            if let Some(old) = self.codes.insert(raw.code, info) {
                self.cached_bytes = self.cached_bytes.saturating_sub(old.bytes());
            }
            self.cached_bytes += bytes;
        }
        let info = self
            .codes
            .get_mut(&raw.code)
            .context("code cache lost an entry")?;
        let offset = match self.layout.instr {
            InstrKind::Pointer { bytecode } => {
                raw.instr.wrapping_sub(raw.code.wrapping_add(bytecode)) as i64
            }
            // `f_lasti` is an int: the upper half of the 8 bytes read is the next field.
            InstrKind::LastiBytes => i64::from(raw.instr as u32 as i32),
            InstrKind::LastiUnits => 2 * i64::from(raw.instr as u32 as i32),
        };
        let format = self.layout.linetable;
        if info.lines.len() >= MAX_CACHED_LINES {
            self.cached_bytes =
                (self.cached_bytes).saturating_sub(info.lines.len() * LINE_ENTRY_BYTES);
            info.lines.clear();
        }
        let known = info.lines.len();
        let line = *info.lines.entry(offset).or_insert_with(|| {
            linetable::line_at(format, &info.linetable, info.header.first_line, offset)
        });
        self.cached_bytes += (info.lines.len() - known) * LINE_ENTRY_BYTES;
        Ok(Frame {
            function: info.function.clone(),
            file: info.file.clone(),
            line: line.unwrap_or(0),
        })
    }

    /// The offsets of the header fields, and how many bytes cover them all.
    fn header_fields(&self) -> ([u64; 6], usize) {
        let l = &self.layout;
        let fields = [
            OBJECT_TYPE,
            l.code_flags,
            l.code_firstlineno,
            l.code_filename,
            l.code_name,
            l.code_linetable,
        ];
        let end = fields.iter().max().map_or(0, |&o| o + 8);
        (fields, end as usize)
    }

    /// The headers of the code objects at `codes`, read together in as few system calls
    /// as the readable ones allow (one when all are).
    fn headers(&self, codes: &[u64]) -> Vec<anyhow::Result<Header>> {
        let (_, size) = self.header_fields();
        let mut buf = vec![0u8; size * codes.len()];
        let mut headers = Vec::with_capacity(codes.len());
        let mut rest = codes;
        while !rest.is_empty() {
            let read = (self.memory)
                .read_records(rest, size, &mut buf)
                .unwrap_or(0);
            headers.extend(
                buf.chunks_exact(size)
                    .take(read)
                    .map(|b| self.parse_header(b)),
            );
            let Some(&failed) = rest.get(read) else {
                break;
            };
            // The kernel stopped at this one: read it alone, for its own error.
            headers.push(self.header(failed));
            rest = &rest[read + 1..];
        }
        headers
    }

    fn header(&self, code: u64) -> anyhow::Result<Header> {
        let (_, size) = self.header_fields();
        let mut buf = vec![0u8; size];
        self.memory.read_bytes(code, &mut buf)?;
        self.parse_header(&buf)
    }

    fn parse_header(&self, buf: &[u8]) -> anyhow::Result<Header> {
        let ([ob_type, flags, first_line, filename, name, linetable], _) = self.header_fields();
        Ok(Header {
            ob_type: u64::from_ne_bytes(field(buf, ob_type)?),
            flags: u32::from_ne_bytes(field(buf, flags)?),
            first_line: i32::from_ne_bytes(field(buf, first_line)?),
            filename: u64::from_ne_bytes(field(buf, filename)?),
            name: u64::from_ne_bytes(field(buf, name)?),
            linetable: u64::from_ne_bytes(field(buf, linetable)?),
        })
    }

    fn load(&self, header: Header) -> anyhow::Result<CodeInfo> {
        Ok(CodeInfo {
            header,
            function: self.string(header.name).context("code name")?,
            file: self.string(header.filename).context("code file name")?,
            linetable: self.bytes(header.linetable).context("line table")?,
            lines: HashMap::default(),
        })
    }

    /// The asyncio task name held by the object at `name` (3.14+), if readable.
    pub fn task_name(&self, name: u64) -> Option<String> {
        asyncio_debug::task_name(&self.memory, name, |addr| self.string(addr))
    }

    /// Reads a `str` object (compact, as all code object strings are).
    fn string(&self, addr: u64) -> anyhow::Result<String> {
        let mut head = [0u8; UNICODE_STATE as usize + 4];
        self.memory.read_bytes(addr, &mut head)?;
        let length = i64::from_ne_bytes(field(&head, UNICODE_LENGTH)?);
        let state = u32::from_ne_bytes(field(&head, UNICODE_STATE)?);
        let kind = (state >> 2) & 7;
        let (compact, ascii) = (state & (1 << 5) != 0, state & (1 << 6) != 0);
        ensure!(compact, "string at {addr:#x} is not compact");
        let (data, width) = match (ascii, kind) {
            (true, 1) => (self.layout.unicode_ascii_data, 1),
            (false, 1 | 2 | 4) => (self.layout.unicode_compact_data, kind as usize),
            _ => bail!("string at {addr:#x} has kind {kind}"),
        };
        let length = usize::try_from(length).context("negative string length")?;
        let mut raw = vec![0u8; length.min(MAX_STRING_BYTES / width) * width];
        self.memory.read_bytes(addr.wrapping_add(data), &mut raw)?;
        let replace = |c: u32| char::from_u32(c).unwrap_or(char::REPLACEMENT_CHARACTER);
        Ok(match width {
            1 => raw.iter().map(|&b| char::from(b)).collect(),
            2 => raw
                .chunks_exact(2)
                .map(|c| replace(u32::from(u16::from_ne_bytes([c[0], c[1]]))))
                .collect(),
            _ => raw
                .chunks_exact(4)
                .map(|c| replace(u32::from_ne_bytes([c[0], c[1], c[2], c[3]])))
                .collect(),
        })
    }

    /// Reads the contents of a `bytes` object, at most [`MAX_LINETABLE_BYTES`].
    fn bytes(&self, addr: u64) -> anyhow::Result<Vec<u8>> {
        let size = self.memory.read_u64(addr.wrapping_add(BYTES_SIZE))? as i64;
        let size = usize::try_from(size).context("negative bytes size")?;
        let mut data = vec![0u8; size.min(MAX_LINETABLE_BYTES)];
        self.memory
            .read_bytes(addr.wrapping_add(BYTES_DATA), &mut data)?;
        Ok(data)
    }
}

/// The `N` bytes at `offset` in `buf`.
fn field<const N: usize>(buf: &[u8], offset: u64) -> anyhow::Result<[u8; N]> {
    usize::try_from(offset)
        .ok()
        .and_then(|o| buf.get(o..)?.get(..N)?.try_into().ok())
        .with_context(|| format!("field at {offset} is outside the {} bytes read", buf.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::frame;
    use crate::python::layout::{Recipe, layout};
    use crate::python::version::Version;

    const PY311: Version = Version {
        major: 3,
        minor: 11,
        patch: None,
    };

    /// A fake 3.11 `str` in this process's memory.
    fn string(kind: u32, ascii: bool, length: i64, data: &[u8]) -> Vec<u8> {
        let start = if ascii { 48 } else { 72 };
        let mut obj = vec![0u8; start + data.len()];
        obj[16..24].copy_from_slice(&length.to_ne_bytes());
        let state = (kind << 2) | (1 << 5) | (u32::from(ascii) << 6);
        obj[32..36].copy_from_slice(&state.to_ne_bytes());
        obj[start..].copy_from_slice(data);
        obj
    }

    fn addr(v: &[u8]) -> u64 {
        v.as_ptr() as u64
    }

    fn set(obj: &mut [u8], offset: usize, value: u64) {
        obj[offset..offset + 8].copy_from_slice(&value.to_ne_bytes());
    }

    /// A 3.11 symbolizer of this process's memory, whose `PyCode_Type` is `code_type`.
    fn symbolizer_311(code_type: u64) -> Symbolizer {
        let layout = match layout(PY311).unwrap() {
            Recipe::Table(table) => *table,
            other => panic!("{other:?}"),
        };
        Symbolizer::new(ProcessMemory::new(std::process::id()), layout, code_type)
    }

    /// A stack of one (empty) frame.
    fn one_frame_stack() -> RawStack {
        RawStack {
            len: 1,
            flags: 0,
            tstate: 0,
            task_name: 0,
            frames: [RawFrame::default(); MAX_FRAMES],
        }
    }

    #[test]
    fn symbolizes_fake_code_objects() {
        let code_type = 0x1234_5678;
        let ucs2: Vec<u8> = "wörk_待つ"
            .encode_utf16()
            .flat_map(u16::to_ne_bytes)
            .collect();
        let name = string(2, false, 7, &ucs2);
        let ucs4: Vec<u8> = "/x/😴.py"
            .chars()
            .flat_map(|c| (c as u32).to_ne_bytes())
            .collect();
        let file = string(4, false, 7, &ucs4);
        let latin1 = string(1, false, 3, &[0xfc, b'b', 0xe9]);
        let long = string(1, true, 10_000, &[b'a'; 10_000]);
        let negative = string(1, true, -1, b"");
        let bad_kind = string(3, false, 1, b"abc");
        // Line table: one unit at first line + 1 (no-column form, svarint 2), then two
        // units on the same line (short form).
        let mut table = vec![0u8; 32 + 4];
        set(&mut table, 16, 4);
        table[32..].copy_from_slice(&[0xe8, 0x02, 0x81, 0x00]);
        let mut code = vec![0u8; 256];
        set(&mut code, 8, code_type);
        code[72..76].copy_from_slice(&10i32.to_ne_bytes());
        set(&mut code, 112, addr(&file));
        set(&mut code, 128, addr(&name));
        set(&mut code, 136, addr(&table));

        let mut symbolizer = symbolizer_311(code_type);
        let mut stack = one_frame_stack();
        let mut at = |code: &[u8], unit: u64| {
            stack.frames[0] = RawFrame {
                code: addr(code),
                instr: addr(code) + 184 + 2 * unit,
            };
            symbolizer.symbolize(&stack).remove(0)
        };
        assert_eq!(at(&code, 0), frame("wörk_待つ", "/x/😴.py", 11));
        assert_eq!(at(&code, 2), frame("wörk_待つ", "/x/😴.py", 11));
        assert_eq!(at(&code, 3), frame("wörk_待つ", "/x/😴.py", 0));
        // Same address, different header: the cached entry is not reused.
        set(&mut code, 128, addr(&latin1));
        assert_eq!(at(&code, 0).function, "übé");
        set(&mut code, 128, addr(&long));
        assert_eq!(at(&code, 0).function, "a".repeat(MAX_STRING_BYTES));
        let unreadable = frame("<unreadable>", "<unknown>", 0);
        for bad in [&negative, &bad_kind] {
            set(&mut code, 128, addr(bad));
            assert_eq!(at(&code, 0), unreadable);
        }
        set(&mut code, 128, addr(&name));
        set(&mut code, 8, code_type + 1);
        assert_eq!(at(&code, 0), unreadable);
    }

    #[test]
    fn the_code_cache_is_bounded_by_bytes() {
        // 400 code objects of 4 KiB names and 64 KiB line tables: 28 MiB if all kept.
        let code_type = 0x1234_5678;
        let name = string(1, true, 4000, &[b'n'; 4000]);
        let file = string(1, true, 4000, &[b'f'; 4000]);
        let mut table = vec![0u8; 32 + MAX_LINETABLE_BYTES];
        set(&mut table, 16, MAX_LINETABLE_BYTES as u64);
        let codes: Vec<Vec<u8>> = (0..400)
            .map(|_| {
                let mut code = vec![0u8; 256];
                set(&mut code, 8, code_type);
                set(&mut code, 112, addr(&file));
                set(&mut code, 128, addr(&name));
                set(&mut code, 136, addr(&table));
                code
            })
            .collect();
        let mut symbolizer = symbolizer_311(code_type);
        let mut stack = one_frame_stack();
        let mut most = 0;
        for code in &codes {
            stack.frames[0] = RawFrame {
                code: addr(code),
                instr: addr(code) + 184,
            };
            assert_eq!(symbolizer.symbolize(&stack)[0].function.len(), 4000);
            let (entries, bytes) = symbolizer.cache_size();
            assert!(bytes <= MAX_CACHE_BYTES, "{entries} codes, {bytes} bytes");
            most = most.max(entries);
        }
        // About 110 fit at a time.
        assert!((50..400).contains(&most), "{most}");
    }
}
