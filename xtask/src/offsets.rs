//! `cargo xtask gen-offsets`: CPython struct offsets for 3.9–3.12, generated from
//! CPython's own headers.
//!
//! For each version, a small C program includes the interpreter's installed headers
//! (internal ones too, with `Py_BUILD_CORE`), prints `offsetof`/`sizeof` of every field
//! blockprobe reads, and the results become `blockprobe/src/python/header_offsets.rs`.
//! 3.13+ need no table: blockprobe reads their `_Py_DebugOffsets` at run time.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

/// One generated table: a version, where its headers come from, and how to read each
/// field in that version's structs (names changed across versions).
struct Version {
    name: &'static str,
    pyenv: &'static str,
    minor: &'static str,
    fields: &'static [(&'static str, &'static str)],
}

/// `offsetof`/`sizeof` expressions common to every version.
const COMMON: &[(&str, &str)] = &[
    (
        "runtime_initialized",
        "offsetof(_PyRuntimeState, initialized)",
    ),
    (
        "runtime_main_interp",
        "offsetof(_PyRuntimeState, interpreters.main)",
    ),
    ("tstate_next", "offsetof(PyThreadState, next)"),
    ("tstate_thread_id", "offsetof(PyThreadState, thread_id)"),
    ("code_flags", "offsetof(PyCodeObject, co_flags)"),
    ("code_firstlineno", "offsetof(PyCodeObject, co_firstlineno)"),
    ("code_filename", "offsetof(PyCodeObject, co_filename)"),
    ("unicode_ascii_data", "sizeof(PyASCIIObject)"),
    ("unicode_compact_data", "sizeof(PyCompactUnicodeObject)"),
];

/// Fields of the `PyFrameObject` era (3.9, 3.10).
const FRAME_OBJECT: &[(&str, &str)] = &[
    (
        "runtime_tss_key",
        "offsetof(_PyRuntimeState, gilstate.autoTSSkey)",
    ),
    ("runtime_gil", "offsetof(_PyRuntimeState, ceval.gil)"),
    (
        "interp_threads_head",
        "offsetof(PyInterpreterState, tstate_head)",
    ),
    ("tstate_frame", "offsetof(PyThreadState, frame)"),
    ("frame_code", "offsetof(PyFrameObject, f_code)"),
    ("frame_previous", "offsetof(PyFrameObject, f_back)"),
    ("frame_instr", "offsetof(PyFrameObject, f_lasti)"),
    ("code_basicsize", "sizeof(PyCodeObject)"),
    ("code_name", "offsetof(PyCodeObject, co_name)"),
];

/// Fields of the `_PyInterpreterFrame` era (3.11, 3.12).
const INTERPRETER_FRAME: &[(&str, &str)] = &[
    (
        "interp_threads_head",
        "offsetof(PyInterpreterState, threads.head)",
    ),
    (
        "tstate_native_thread_id",
        "offsetof(PyThreadState, native_thread_id)",
    ),
    ("tstate_frame", "offsetof(PyThreadState, cframe)"),
    ("cframe_frame", "offsetof(_PyCFrame, current_frame)"),
    ("frame_code", "offsetof(_PyInterpreterFrame, f_code)"),
    ("frame_previous", "offsetof(_PyInterpreterFrame, previous)"),
    ("frame_instr", "offsetof(_PyInterpreterFrame, prev_instr)"),
    ("frame_owner", "offsetof(_PyInterpreterFrame, owner)"),
    ("code_basicsize", "offsetof(PyCodeObject, co_code_adaptive)"),
    ("code_name", "offsetof(PyCodeObject, co_qualname)"),
    ("code_linetable", "offsetof(PyCodeObject, co_linetable)"),
];

const VERSIONS: &[Version] = &[
    Version {
        name: "PY39",
        pyenv: "3.9.18",
        minor: "3.9",
        fields: &[("code_linetable", "offsetof(PyCodeObject, co_lnotab)")],
    },
    Version {
        name: "PY310",
        pyenv: "3.10.13",
        minor: "3.10",
        fields: &[("code_linetable", "offsetof(PyCodeObject, co_linetable)")],
    },
    Version {
        name: "PY311",
        pyenv: "3.11.7",
        minor: "3.11",
        fields: &[
            (
                "runtime_tss_key",
                "offsetof(_PyRuntimeState, gilstate.autoTSSkey)",
            ),
            ("runtime_gil", "offsetof(_PyRuntimeState, ceval.gil)"),
        ],
    },
    Version {
        name: "PY312",
        pyenv: "3.12.1",
        minor: "3.12",
        fields: &[
            ("runtime_tss_key", "offsetof(_PyRuntimeState, autoTSSkey)"),
            ("interp_gil", "offsetof(PyInterpreterState, ceval.gil)"),
        ],
    },
];

/// Every field a table may have, in output order; those a version lacks are `None`.
const ALL_FIELDS: &[&str] = &[
    "runtime_initialized",
    "runtime_main_interp",
    "runtime_tss_key",
    "runtime_gil",
    "interp_threads_head",
    "interp_gil",
    "tstate_next",
    "tstate_thread_id",
    "tstate_native_thread_id",
    "tstate_frame",
    "cframe_frame",
    "frame_code",
    "frame_previous",
    "frame_instr",
    "frame_owner",
    "code_basicsize",
    "code_flags",
    "code_firstlineno",
    "code_filename",
    "code_name",
    "code_linetable",
    "unicode_ascii_data",
    "unicode_compact_data",
];

/// Generates the table file and returns its path.
pub fn generate(root: &Path) -> Result<PathBuf> {
    let pyenv = blockprobe_pythons::pyenv_root();
    let work = tempfile_dir()?;
    let mut out = String::from(
        "//! CPython struct offsets for 3.9–3.12, generated by `cargo xtask gen-offsets` from\n\
         //! each version's own headers (`offsetof`/`sizeof` compiled against pyenv's\n\
         //! installed `include/`). Do not edit: regenerate.\n\n\
         /// Offsets and sizes (bytes) of the fields blockprobe reads; `None` where the\n\
         /// version has no such field.\n\
         #[derive(Clone, Copy, Debug, PartialEq, Eq)]\n\
         pub struct HeaderOffsets {\n",
    );
    for field in ALL_FIELDS {
        writeln!(
            out,
            "    /// See `cargo xtask gen-offsets`.\n    pub {field}: Option<u64>,"
        )?;
    }
    out.push_str("}\n");
    for version in VERSIONS {
        let include = pyenv
            .join("versions")
            .join(version.pyenv)
            .join("include")
            .join(format!("python{}", version.minor));
        let values = measure(version, &include, &work).with_context(|| {
            format!("CPython {} headers in {}", version.pyenv, include.display())
        })?;
        writeln!(
            out,
            "\n/// CPython {} (headers of pyenv {}).\npub const {}: HeaderOffsets = HeaderOffsets {{",
            version.minor, version.pyenv, version.name
        )?;
        for field in ALL_FIELDS {
            match values.iter().find(|(name, _)| name == field) {
                Some((_, value)) => writeln!(out, "    {field}: Some({value}),")?,
                None => writeln!(out, "    {field}: None,")?,
            }
        }
        out.push_str("};\n");
    }
    let path = root.join("blockprobe/src/python/header_offsets.rs");
    std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
    let fmt = Command::new("rustfmt")
        .args(["--edition", "2024"])
        .arg(&path)
        .status()
        .context("running rustfmt")?;
    if !fmt.success() {
        bail!("rustfmt failed on {}", path.display());
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(path)
}

/// Compiles and runs the probe program of `version`; returns (field, value) pairs.
fn measure(version: &Version, include: &Path, work: &Path) -> Result<Vec<(String, u64)>> {
    if !include.join("Python.h").is_file() {
        bail!("no Python.h (is pyenv {} installed?)", version.pyenv);
    }
    let era = if version.minor == "3.9" || version.minor == "3.10" {
        FRAME_OBJECT
    } else {
        INTERPRETER_FRAME
    };
    let mut c = String::from(
        "#define Py_BUILD_CORE 1\n#include \"Python.h\"\n#include \"internal/pycore_runtime.h\"\n\
         #include \"internal/pycore_interp.h\"\n#include <stddef.h>\n#include <stdio.h>\n",
    );
    if era == INTERPRETER_FRAME {
        c.push_str("#include \"internal/pycore_frame.h\"\n");
    } else {
        c.push_str("#include \"frameobject.h\"\n");
    }
    c.push_str("int main(void) {\n");
    for (field, expr) in COMMON.iter().chain(era).chain(version.fields) {
        writeln!(c, "  printf(\"{field} %zu\\n\", (size_t)({expr}));")?;
    }
    c.push_str("  return 0;\n}\n");
    let source = work.join(format!("{}.c", version.name));
    let binary = work.join(version.name);
    std::fs::write(&source, c)?;
    let cc = Command::new("cc")
        .arg("-I")
        .arg(include)
        .arg("-I")
        .arg(include.join("internal"))
        .arg(&source)
        .arg("-o")
        .arg(&binary)
        .output()
        .context("running cc")?;
    if !cc.status.success() {
        bail!("cc failed: {}", String::from_utf8_lossy(&cc.stderr));
    }
    let run = Command::new(&binary)
        .output()
        .context("running the probe")?;
    String::from_utf8_lossy(&run.stdout)
        .lines()
        .map(|line| {
            let (name, value) = line.split_once(' ').context("odd probe output")?;
            Ok((name.to_owned(), value.parse()?))
        })
        .collect()
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("blockprobe-gen-offsets-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
