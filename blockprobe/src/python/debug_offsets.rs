//! Reading a 3.13+ interpreter's own description of its structures: `_Py_DebugOffsets`,
//! the first field of `_PyRuntime` (`Include/internal/pycore_debug_offsets.h`).
//!
//! It is `char cookie[8] = "xdebugpy"; u64 version; u64 free_threaded;` then u64 sizes and
//! offsets grouped by structure. Its shape is stable within a minor version only, so each
//! minor has a [`DebugFields`] (`debug_fields`) saying where the offsets blockprobe needs sit; every group's
//! `size` is read too and each offset is checked against it.

use anyhow::{Context as _, bail, ensure};

use super::debug_fields::DebugFields;
use super::layout::{GilLocation, InstrKind, Layout};
use super::memory::ProcessMemory;
use super::version::Version;

/// The cookie `_Py_DebugOffsets` starts with.
pub const COOKIE: &[u8; 8] = b"xdebugpy";
/// The largest size believed of a code object or an interpreter frame (a few hundred
/// bytes in every CPython).
const MAX_PER_FRAME_STRUCT_BYTES: u64 = 4096;
/// The largest size believed of the runtime, interpreter or thread state.
const MAX_STRUCT_BYTES: u64 = 1 << 24;
/// Offset of the first size/offset field (after cookie, version and `free_threaded`).
const FIRST_FIELD: u64 = 24;

/// Reads the `_Py_DebugOffsets` at `runtime` and returns `base` with every offset it
/// describes replaced by the interpreter's own value.
pub fn read(
    memory: &ProcessMemory,
    runtime: u64,
    version: Version,
    base: &Layout,
    fields: &DebugFields,
) -> anyhow::Result<Layout> {
    let mut buf = vec![0u8; FIRST_FIELD as usize + 8 * fields.count()];
    memory
        .read_bytes(runtime, &mut buf)
        .context("cannot read _Py_DebugOffsets")?;
    from_bytes(&buf, version, base, fields)
}

/// [`read`] on the bytes of `_Py_DebugOffsets`.
fn from_bytes(
    buf: &[u8],
    version: Version,
    base: &Layout,
    fields: &DebugFields,
) -> anyhow::Result<Layout> {
    let word = |at: usize| -> u64 {
        buf.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map_or(u64::MAX, u64::from_ne_bytes)
    };
    ensure!(
        buf.get(..8) == Some(&COOKIE[..]),
        "_PyRuntime does not start with the _Py_DebugOffsets cookie"
    );
    let hex = word(8);
    let found = Version::from_hex(hex as u32);
    ensure!(
        (found.major, found.minor, found.patch) == (version.major, version.minor, version.patch)
            || version.patch.is_none()
                && (found.major, found.minor) == (version.major, version.minor),
        "_Py_DebugOffsets says version {hex:#x}, not {version}"
    );
    if word(16) != 0 {
        bail!(
            "this is a free-threaded build (Python {version}t): blockprobe supports GIL builds only"
        );
    }
    let field = |i: u16| word(FIRST_FIELD as usize + 8 * usize::from(i));
    // Code objects and frames are read for every frame of every stack: their sizes are
    // held to what an interpreter has, so a lying process cannot make each read huge.
    let max_size = |size: u16| {
        if size == fields.code_size || size == fields.frame_size {
            MAX_PER_FRAME_STRUCT_BYTES
        } else {
            MAX_STRUCT_BYTES
        }
    };
    // An offset of a field of `width` bytes inside a structure of `size` bytes.
    let within = |what: &str, i: u16, size_field: u16, width: u64| -> anyhow::Result<u64> {
        let (offset, size) = (field(i), field(size_field));
        ensure!(
            offset.checked_add(width).is_some_and(|end| end <= size)
                && size <= max_size(size_field),
            "_Py_DebugOffsets: {what} at {offset} does not fit in its {size}-byte structure"
        );
        Ok(offset)
    };
    let small = |v: u64| u32::try_from(v).context("offset out of range");
    let f = fields;
    let finalizing = within(
        "runtime_state.finalizing",
        f.runtime_finalizing,
        f.runtime_size,
        8,
    )?;
    let head = within(
        "runtime_state.interpreters_head",
        f.runtime_interpreters_head,
        f.runtime_size,
        16,
    )?;
    let argcount = within("code_object.argcount", f.code_argcount, f.code_size, 4)?;
    let code_adaptive = within(
        "code_object.co_code_adaptive",
        f.code_code_adaptive,
        f.code_size,
        0,
    )?;
    ensure!(
        finalizing >= 8 && argcount >= 4,
        "_Py_DebugOffsets: implausible offsets"
    );
    Ok(Layout {
        // `int initialized` is the last of five ints just before the `_finalizing` pointer.
        runtime_initialized: finalizing - 8,
        // `struct pyinterpreters { PyMutex mutex; head; main; … }`.
        runtime_main_interp: head + 8,
        interp_threads_head: within(
            "interpreter_state.threads_head",
            f.interp_threads_head,
            f.interp_size,
            8,
        )?,
        gil: GilLocation::ViaInterpreter(within(
            "interpreter_state.ceval_gil",
            f.interp_ceval_gil,
            f.interp_size,
            8,
        )?),
        tstate_next: within("thread_state.next", f.tstate_next, f.tstate_size, 8)?,
        tstate_thread_id: within(
            "thread_state.thread_id",
            f.tstate_thread_id,
            f.tstate_size,
            8,
        )?,
        tstate_native_thread_id: Some(within(
            "thread_state.native_thread_id",
            f.tstate_native_thread_id,
            f.tstate_size,
            4,
        )?),
        tstate_frame: small(within(
            "thread_state.current_frame",
            f.tstate_current_frame,
            f.tstate_size,
            8,
        )?)?,
        cframe_frame: None,
        frame_code: small(within(
            "interpreter_frame.executable",
            f.frame_executable,
            f.frame_size,
            8,
        )?)?,
        frame_previous: small(within(
            "interpreter_frame.previous",
            f.frame_previous,
            f.frame_size,
            8,
        )?)?,
        frame_instr: small(within(
            "interpreter_frame.instr_ptr",
            f.frame_instr_ptr,
            f.frame_size,
            8,
        )?)?,
        frame_owner: small(within(
            "interpreter_frame.owner",
            f.frame_owner,
            f.frame_size,
            1,
        )?)?,
        instr: InstrKind::Pointer {
            bytecode: code_adaptive,
        },
        code_basicsize: code_adaptive,
        // `int co_flags; int co_argcount;`
        code_flags: argcount - 4,
        code_firstlineno: within(
            "code_object.firstlineno",
            f.code_firstlineno,
            f.code_size,
            4,
        )?,
        code_filename: within("code_object.filename", f.code_filename, f.code_size, 8)?,
        code_name: within("code_object.qualname", f.code_qualname, f.code_size, 8)?,
        code_linetable: within("code_object.linetable", f.code_linetable, f.code_size, 8)?,
        ..*base
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::python::debug_fields::PY313;
    use crate::python::layout::PY313 as TABLE313;

    /// The fields after `free_threaded` in pyenv 3.13.0's `.PyRuntime`, as dumped.
    const DUMP313: [u64; 41] = [
        283320, 608, 632, 194968, 7272, 7264, 7344, 7400, 7656, 7640, 7648, 16, 7752, 0, 7768,
        7760, 304, 0, 8, 16, 72, 152, 160, 232, 32, 80, 8, 0, 56, 72, 70, 208, 112, 120, 128, 136,
        68, 52, 96, 104, 200,
    ];

    fn bytes(hex: u64, free_threaded: u64, fields: &[u64]) -> Vec<u8> {
        let mut buf = COOKIE.to_vec();
        buf.extend(hex.to_ne_bytes());
        buf.extend(free_threaded.to_ne_bytes());
        for f in fields {
            buf.extend(f.to_ne_bytes());
        }
        buf
    }

    const V3130: Version = Version {
        major: 3,
        minor: 13,
        patch: Some(0),
    };

    #[test]
    fn reads_313_like_the_table() {
        let l = from_bytes(&bytes(0x030d_00f0, 0, &DUMP313), V3130, &TABLE313, &PY313).unwrap();
        let t = TABLE313;
        assert_eq!(
            (
                l.runtime_initialized,
                l.runtime_main_interp,
                l.runtime_tss_key
            ),
            (
                t.runtime_initialized,
                t.runtime_main_interp,
                t.runtime_tss_key
            )
        );
        assert_eq!(l.interp_threads_head, t.interp_threads_head);
        assert_eq!(l.gil, t.gil);
        assert_eq!(
            (l.tstate_next, l.tstate_thread_id, l.tstate_native_thread_id),
            (t.tstate_next, t.tstate_thread_id, t.tstate_native_thread_id)
        );
        assert_eq!(
            (l.tstate_frame, l.cframe_frame),
            (t.tstate_frame, t.cframe_frame)
        );
        assert_eq!(
            (l.frame_code, l.frame_previous, l.frame_instr, l.frame_owner),
            (t.frame_code, t.frame_previous, t.frame_instr, t.frame_owner)
        );
        assert_eq!((l.instr, l.code_basicsize), (t.instr, t.code_basicsize));
        assert_eq!(
            (
                l.code_flags,
                l.code_firstlineno,
                l.code_filename,
                l.code_name,
                l.code_linetable
            ),
            (
                t.code_flags,
                t.code_firstlineno,
                t.code_filename,
                t.code_name,
                t.code_linetable
            )
        );
    }

    #[test]
    fn refuses_bad_headers() {
        let err = |buf: Vec<u8>| {
            from_bytes(&buf, V3130, &TABLE313, &PY313)
                .unwrap_err()
                .to_string()
        };
        let mut bad_cookie = bytes(0x030d_00f0, 0, &DUMP313);
        bad_cookie[0] = b'y';
        assert!(err(bad_cookie).contains("cookie"));
        assert!(err(bytes(0x030e_00f0, 0, &DUMP313)).contains("0x30e00f0"));
        assert!(err(bytes(0x030d_00f0, 1, &DUMP313)).contains("free-threaded"));
        // A table that points at the wrong field: an offset beyond its structure.
        let mut shifted = DUMP313;
        shifted[20] = 400;
        assert!(err(bytes(0x030d_00f0, 0, &shifted)).contains("current_frame"));
        // A code object said to be 1 MiB, its file name at its end: each frame's read
        // would be that large.
        let mut huge = DUMP313;
        huge[usize::from(PY313.code_size)] = 1 << 20;
        huge[usize::from(PY313.code_filename)] = (1 << 20) - 8;
        assert!(err(bytes(0x030d_00f0, 0, &huge)).contains("code_object"));
        // The runtime and interpreter states are large; up to 16 MiB is believed.
        let mut large = DUMP313;
        large[usize::from(PY313.runtime_size)] = (1 << 24) - 1;
        assert!(from_bytes(&bytes(0x030d_00f0, 0, &large), V3130, &TABLE313, &PY313).is_ok());
    }
}
