//! Offsets of the CPython structures blockprobe reads, per minor version (x86_64, GIL
//! builds). 3.9–3.12: tables; 3.13+: read at run time from the target's
//! `_Py_DebugOffsets` (where each offset sits: `debug_fields`; read by `debug_offsets`),
//! with a table for what it does not describe.
//! Every version listed here is checked live by `live_tests`.

use anyhow::bail;

use super::debug_fields::{self, DebugFields};
use super::header_offsets::{self, HeaderOffsets};
use super::version::Version;

/// How to turn a frame's instruction field into a byte offset in the bytecode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstrKind {
    /// `int f_lasti`, a byte offset (3.9).
    LastiBytes,
    /// `int f_lasti`, in 2-byte code units (3.10).
    LastiUnits,
    /// Pointer into the code object's inline bytecode, which starts `bytecode` bytes into
    /// the code object (3.11+).
    Pointer {
        /// Offset of `co_code_adaptive` in the code object.
        bytecode: u64,
    },
}

/// Encoding of a code object's line table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineTableFormat {
    /// `co_lnotab` (3.9).
    Lnotab,
    /// `co_linetable` of 3.10.
    Linetable310,
    /// The 3.11+ location table (`Objects/locations.md`).
    Locations,
}

/// Byte offsets of the fields blockprobe reads in one CPython minor version.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    /// `_PyRuntime.initialized` (int).
    pub runtime_initialized: u64,
    /// `_PyRuntime.interpreters.main`.
    pub runtime_main_interp: u64,
    /// `_PyRuntime.(gilstate.)autoTSSkey`, a `Py_tss_t`; `None` from 3.15, whose bound
    /// thread state is a thread-local variable (`_Py_tss_gilstate`) in static TLS.
    pub runtime_tss_key: Option<u64>,
    /// `PyInterpreterState.threads.head` (`tstate_head` before 3.11).
    pub interp_threads_head: u64,
    /// `PyThreadState.next`.
    pub tstate_next: u64,
    /// `PyThreadState.thread_id` (`pthread_self()`).
    pub tstate_thread_id: u64,
    /// `PyThreadState.native_thread_id` (3.11+).
    pub tstate_native_thread_id: Option<u64>,
    /// Where the main interpreter's `struct _gil_runtime_state` is.
    pub gil: GilLocation,
    /// Offset in the thread state of the innermost frame pointer (or of `cframe`).
    pub tstate_frame: u32,
    /// 3.11/3.12: offset of `current_frame` in the `_PyCFrame` that `tstate_frame` points to.
    pub cframe_frame: Option<u32>,
    /// Frame: code object pointer.
    pub frame_code: u32,
    /// Mask for the frame's code pointer (3.14 tags its low bits: `_PyStackRef`).
    pub code_mask: u64,
    /// Frame: previous (outer) frame pointer.
    pub frame_previous: u32,
    /// Frame: instruction field.
    pub frame_instr: u32,
    /// Frame: `owner` byte (3.11+; 0 before).
    pub frame_owner: u32,
    /// Frames with an owner at least this are C-stack shims to skip; 0: none.
    pub owner_skip_min: u32,
    /// What the frame's instruction field holds.
    pub instr: InstrKind,
    /// `PyCode_Type.tp_basicsize`, a run-time check of this table.
    pub code_basicsize: u64,
    /// Code: `co_flags` (int).
    pub code_flags: u64,
    /// Code: `co_firstlineno` (int).
    pub code_firstlineno: u64,
    /// Code: `co_filename`.
    pub code_filename: u64,
    /// Code: the function name shown, `co_qualname` (3.11+) or `co_name`.
    pub code_name: u64,
    /// Code: the line table (a bytes object).
    pub code_linetable: u64,
    /// Encoding of the line table.
    pub linetable: LineTableFormat,
    /// Start of the characters of a compact ASCII string (`sizeof(PyASCIIObject)`).
    pub unicode_ascii_data: u64,
    /// Start of the characters of another compact string (`sizeof(PyCompactUnicodeObject)`).
    pub unicode_compact_data: u64,
}

/// Offset of `tp_basicsize` in a type object.
pub const TYPE_BASICSIZE: u64 = 32;
/// Offset of `ob_type` in every object.
pub const OBJECT_TYPE: u64 = 8;
/// Offset of `ob_size` in a bytes object.
pub const BYTES_SIZE: u64 = 16;
/// Offset of the data of a bytes object.
pub const BYTES_DATA: u64 = 32;
/// Offset of `length` in a string.
pub const UNICODE_LENGTH: u64 = 16;
/// Offset of the `state` bit field in a string.
pub const UNICODE_STATE: u64 = 32;

/// Where to find the GIL state (`struct _gil_runtime_state`, 208 bytes in 3.9–3.13).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GilLocation {
    /// Embedded in `_PyRuntime` at this offset (`_PyRuntime.ceval.gil`, ≤3.11).
    InRuntime(u64),
    /// Pointed to by the main interpreter's field at this offset (`interp->ceval.gil`, 3.12+).
    ViaInterpreter(u64),
}

/// Where the layout of a version comes from.
#[derive(Clone, Copy, Debug)]
pub enum Recipe {
    /// A table (3.9–3.12).
    Table(&'static Layout),
    /// The target's `_Py_DebugOffsets` (3.13+): `fields` says where each offset blockprobe
    /// needs sits in it; `base` gives what it does not describe.
    DebugOffsets {
        /// Offsets not in `_Py_DebugOffsets` (TSS key, string layout, frame owners).
        base: &'static Layout,
        /// Where the needed offsets are in this minor version's `_Py_DebugOffsets`.
        fields: &'static DebugFields,
    },
}

/// The layout recipe of `version`, or an error naming it when it is not supported.
/// The one place that dispatches on the version.
pub fn layout(version: Version) -> anyhow::Result<Recipe> {
    Ok(match (version.major, version.minor) {
        (3, 9) => Recipe::Table(&PY39),
        (3, 10) => Recipe::Table(&PY310),
        (3, 11) => Recipe::Table(&PY311),
        (3, 12) => Recipe::Table(&PY312),
        (3, 13) => Recipe::DebugOffsets {
            base: &PY313,
            fields: &debug_fields::PY313,
        },
        (3, 14) => Recipe::DebugOffsets {
            base: &PY314,
            fields: &debug_fields::PY314,
        },
        (3, 15) => Recipe::DebugOffsets {
            base: &PY315,
            fields: &debug_fields::PY315,
        },
        _ => bail!("Python {version} is not supported (blockprobe supports 3.9 to 3.15)"),
    })
}

/// A generated offset (`header_offsets`); a missing one fails the build.
const fn at(offset: Option<u64>) -> u64 {
    match offset {
        Some(v) => v,
        None => panic!("offset missing from the generated header table"),
    }
}

/// The fields every generated table provides, for one 3.9–3.12 version.
const fn from_headers(
    h: HeaderOffsets,
    gil: GilLocation,
    instr: InstrKind,
    linetable: LineTableFormat,
    owner_skip_min: u32,
) -> Layout {
    Layout {
        runtime_initialized: at(h.runtime_initialized),
        runtime_main_interp: at(h.runtime_main_interp),
        runtime_tss_key: Some(at(h.runtime_tss_key)),
        interp_threads_head: at(h.interp_threads_head),
        tstate_next: at(h.tstate_next),
        tstate_thread_id: at(h.tstate_thread_id),
        tstate_native_thread_id: h.tstate_native_thread_id,
        gil,
        tstate_frame: at(h.tstate_frame) as u32,
        cframe_frame: match h.cframe_frame {
            Some(v) => Some(v as u32),
            None => None,
        },
        frame_code: at(h.frame_code) as u32,
        code_mask: u64::MAX,
        frame_previous: at(h.frame_previous) as u32,
        frame_instr: at(h.frame_instr) as u32,
        frame_owner: match h.frame_owner {
            Some(v) => v as u32,
            None => 0,
        },
        owner_skip_min,
        instr,
        code_basicsize: at(h.code_basicsize),
        code_flags: at(h.code_flags),
        code_firstlineno: at(h.code_firstlineno),
        code_filename: at(h.code_filename),
        code_name: at(h.code_name),
        code_linetable: at(h.code_linetable),
        linetable,
        unicode_ascii_data: at(h.unicode_ascii_data),
        unicode_compact_data: at(h.unicode_compact_data),
    }
}

const PY39: Layout = from_headers(
    header_offsets::PY39,
    GilLocation::InRuntime(at(header_offsets::PY39.runtime_gil)),
    InstrKind::LastiBytes,
    LineTableFormat::Lnotab,
    0,
);

const PY310: Layout = from_headers(
    header_offsets::PY310,
    GilLocation::InRuntime(at(header_offsets::PY310.runtime_gil)),
    InstrKind::LastiUnits,
    LineTableFormat::Linetable310,
    0,
);

const PY311: Layout = from_headers(
    header_offsets::PY311,
    GilLocation::InRuntime(at(header_offsets::PY311.runtime_gil)),
    InstrKind::Pointer {
        bytecode: at(header_offsets::PY311.code_basicsize),
    },
    LineTableFormat::Locations,
    0,
);

/// 3.12 also has C-stack shim frames (owner 3), skipped in walks.
const PY312: Layout = from_headers(
    header_offsets::PY312,
    GilLocation::ViaInterpreter(at(header_offsets::PY312.interp_gil)),
    InstrKind::Pointer {
        bytecode: at(header_offsets::PY312.code_basicsize),
    },
    LineTableFormat::Locations,
    3,
);

/// 3.13.0 as measured; `_Py_DebugOffsets` overrides what it describes (the live test
/// checks that both agree).
pub(super) const PY313: Layout = Layout {
    runtime_initialized: 600,
    runtime_main_interp: 640,
    runtime_tss_key: Some(2160),
    interp_threads_head: 7344,
    tstate_thread_id: 152,
    tstate_native_thread_id: Some(160),
    gil: GilLocation::ViaInterpreter(0x10),
    tstate_frame: 72,
    cframe_frame: None,
    instr: InstrKind::Pointer { bytecode: 200 },
    code_basicsize: 200,
    ..PY312
};

/// 3.14: everything but the TSS key and the code-pointer tag comes from `_Py_DebugOffsets`.
/// Frame owners: THREAD 0, GENERATOR 1, FRAME_OBJECT 2, INTERPRETER 3, CSTACK 4.
const PY314: Layout = Layout {
    runtime_tss_key: Some(2336),
    code_mask: !3,
    ..PY313
};

/// 3.15: as 3.14, but no TSS key: the thread state is found in static TLS.
const PY315: Layout = Layout {
    runtime_tss_key: None,
    ..PY314
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_versions_are_named() {
        let v = Version {
            major: 3,
            minor: 8,
            patch: Some(18),
        };
        let err = layout(v).unwrap_err().to_string();
        assert!(err.contains("3.8.18"), "{err}");
        for minor in 9..=15 {
            let v = Version {
                major: 3,
                minor,
                patch: None,
            };
            assert!(layout(v).is_ok());
        }
    }
}

#[cfg(test)]
mod header_table_tests {
    //! The generated tables against the values recorded independently (by hand from the
    //! headers and checked live) in shared/notes/cpython-for-bpf.md.
    use super::header_offsets::{HeaderOffsets, PY39, PY310, PY311, PY312};

    /// (interpreters.head, autoTSSkey, threads.head, tstate frame, thread_id,
    ///  native_thread_id, code flags, firstlineno, filename, name, linetable).
    type Anchors = (
        u64,
        u64,
        u64,
        u64,
        u64,
        Option<u64>,
        u64,
        u64,
        u64,
        u64,
        u64,
    );

    fn check(h: HeaderOffsets, a: Anchors) {
        // `interpreters.main` follows `interpreters.head`.
        assert_eq!(h.runtime_main_interp, Some(a.0 + 8));
        assert_eq!(h.runtime_tss_key, Some(a.1));
        assert_eq!(h.interp_threads_head, Some(a.2));
        assert_eq!(h.tstate_frame, Some(a.3));
        assert_eq!(h.tstate_thread_id, Some(a.4));
        assert_eq!(h.tstate_native_thread_id, a.5);
        assert_eq!(h.code_flags, Some(a.6));
        assert_eq!(h.code_firstlineno, Some(a.7));
        assert_eq!(h.code_filename, Some(a.8));
        assert_eq!(h.code_name, Some(a.9));
        assert_eq!(h.code_linetable, Some(a.10));
    }

    #[test]
    fn python_3_9() {
        check(PY39, (32, 584, 8, 24, 176, None, 36, 40, 104, 112, 120));
        assert_eq!(
            (PY39.frame_previous, PY39.frame_code, PY39.frame_instr),
            (Some(24), Some(32), Some(104))
        );
        assert_eq!(PY39.unicode_ascii_data, Some(48));
    }

    #[test]
    fn python_3_10() {
        check(PY310, (32, 584, 8, 24, 176, None, 36, 40, 104, 112, 120));
        assert_eq!(PY310.frame_instr, Some(96));
    }

    #[test]
    fn python_3_11() {
        check(
            PY311,
            (40, 592, 16, 56, 152, Some(160), 48, 72, 112, 128, 136),
        );
        assert_eq!(
            (PY311.cframe_frame, PY311.frame_code, PY311.frame_previous),
            (Some(8), Some(32), Some(48))
        );
        assert_eq!(
            (PY311.frame_instr, PY311.frame_owner, PY311.code_basicsize),
            (Some(56), Some(69), Some(184))
        );
    }

    #[test]
    fn python_3_12() {
        check(
            PY312,
            (40, 1544, 72, 56, 136, Some(144), 48, 68, 112, 128, 136),
        );
        assert_eq!(
            (PY312.cframe_frame, PY312.frame_code, PY312.frame_previous),
            (Some(0), Some(0), Some(8))
        );
        assert_eq!(
            (
                PY312.frame_owner,
                PY312.code_basicsize,
                PY312.unicode_ascii_data
            ),
            (Some(70), Some(192), Some(40))
        );
    }
}
