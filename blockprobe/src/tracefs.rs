//! tracefs: mounting it when missing, telling whether it could be mounted, and reading
//! tracepoint record formats.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

/// Where tracefs is mounted (or will be).
pub const TRACEFS: &str = "/sys/kernel/tracing";

/// Makes sure tracefs is mounted at `/sys/kernel/tracing`, mounting it if needed.
pub fn ensure_mounted() -> anyhow::Result<PathBuf> {
    let root = PathBuf::from(TRACEFS);
    if root.join("events").is_dir() {
        return Ok(root);
    }
    nix::mount::mount(
        Some("nodev"),
        &root,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| format!("tracefs is not mounted and mounting it at {TRACEFS} failed"))?;
    if !root.join("events").is_dir() {
        bail!("tracefs mounted at {TRACEFS} has no events/ directory");
    }
    Ok(root)
}

/// Where tracefs stands, as found without changing the host's mounts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Availability {
    /// Mounted at [`TRACEFS`]; `readable` says whether this process can list its events.
    Mounted {
        /// Its `events/` directory can be read.
        readable: bool,
    },
    /// Not mounted, and a trial mount worked; `passed` is what the test said of it.
    Mountable {
        /// The result of the test run on the trial mount.
        passed: bool,
    },
    /// Neither mounted nor mountable: why.
    Unavailable(String),
}

/// Finds where tracefs stands, running `test` on it (e.g. does it have the syscall
/// tracepoints). When it is not mounted, it is tried in a child process's private mount
/// namespace ([`crate::private_mount::look_into`]), which leaves the host's mounts as
/// they were. Call it only while this process has a single thread (it forks).
pub fn availability(test: fn(&Path) -> bool) -> Availability {
    let root = Path::new(TRACEFS);
    if crate::private_mount::is_mounted("tracefs", root) {
        return Availability::Mounted {
            readable: root.join("events").is_dir(),
        };
    }
    let tested = crate::private_mount::look_into("tracefs", root, |root| {
        if test(root) { "yes" } else { "no" }.to_owned()
    });
    match tested {
        Ok(passed) => Availability::Mountable {
            passed: passed == "yes",
        },
        Err(why) => Availability::Unavailable(why),
    }
}

/// Whether the tracepoint `category:name` exists on this kernel.
pub fn has_tracepoint(root: &Path, category: &str, name: &str) -> bool {
    root.join("events").join(category).join(name).is_dir()
}

/// The byte offset of `field` in the record of tracepoint `category:name`, or `None`
/// when the record has no such field.
pub fn field_offset(
    root: &Path,
    category: &str,
    name: &str,
    field: &str,
) -> anyhow::Result<Option<u32>> {
    let path = root.join("events").join(category).join(name).join("format");
    let format =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(parse_field_offset(&format, field))
}

/// Finds `field`'s offset in the text of a tracepoint `format` file.
fn parse_field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let mut parts = line.trim().split(';').map(str::trim);
        let declaration = parts.next()?.strip_prefix("field:")?;
        let declared = declaration.rsplit(' ').next()?;
        let declared = declared.split('[').next()?;
        if declared != field {
            return None;
        }
        parts.find_map(|p| p.strip_prefix("offset:")?.parse().ok())
    })
}

#[cfg(test)]
mod tests {
    use super::parse_field_offset;

    const FORK: &str = "name: sched_process_fork\nformat:\n\
        \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
        \tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;\n\
        \tfield:pid_t parent_pid;\toffset:12;\tsize:4;\tsigned:1;\n\
        \tfield:char child_comm[16];\toffset:16;\tsize:16;\tsigned:0;\n\
        \tfield:pid_t child_pid;\toffset:32;\tsize:4;\tsigned:1;\n";

    #[test]
    fn finds_fields_by_exact_name() {
        assert_eq!(parse_field_offset(FORK, "child_pid"), Some(32));
        assert_eq!(parse_field_offset(FORK, "parent_pid"), Some(12));
        assert_eq!(parse_field_offset(FORK, "child_comm"), Some(16));
        assert_eq!(parse_field_offset(FORK, "pid"), None);
        assert_eq!(parse_field_offset(FORK, "group_dead"), None);
    }
}
