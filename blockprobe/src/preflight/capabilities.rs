//! The capabilities blockprobe needs, and which of them the calling thread lacks.

use super::{Finding, Verdict};

/// A Linux capability (`include/uapi/linux/capability.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Capability {
    /// Its name, as the man pages spell it.
    name: &'static str,
    bit: u32,
}

impl Capability {
    const fn new(name: &'static str, bit: u32) -> Self {
        Capability { name, bit }
    }
}

const CAP_DAC_OVERRIDE: Capability = Capability::new("CAP_DAC_OVERRIDE", 1);
const CAP_DAC_READ_SEARCH: Capability = Capability::new("CAP_DAC_READ_SEARCH", 2);
const CAP_SYS_PTRACE: Capability = Capability::new("CAP_SYS_PTRACE", 19);
const CAP_SYS_ADMIN: Capability = Capability::new("CAP_SYS_ADMIN", 21);
const CAP_PERFMON: Capability = Capability::new("CAP_PERFMON", 38);
const CAP_BPF: Capability = Capability::new("CAP_BPF", 39);

/// One privilege blockprobe needs: held when any of `any_of` is in the effective set
/// (the kernel accepts CAP_SYS_ADMIN for CAP_BPF and CAP_PERFMON).
struct Need {
    any_of: &'static [Capability],
}

/// What every tracing command needs: loading BPF programs and maps (CAP_BPF), attaching
/// them to tracepoints and CPU samplers to other processes' threads (CAP_PERFMON), and
/// reading other processes' memory and files (`process_vm_readv`, `/proc/PID/root`:
/// CAP_SYS_PTRACE).
const NEEDS: &[Need] = &[
    Need {
        any_of: &[CAP_BPF, CAP_SYS_ADMIN],
    },
    Need {
        any_of: &[CAP_PERFMON, CAP_SYS_ADMIN],
    },
    Need {
        any_of: &[CAP_SYS_PTRACE],
    },
];

/// Reading tracefs (root's, mode 0700) as another user than root.
const TRACEFS_NEED: Need = Need {
    any_of: &[CAP_DAC_READ_SEARCH, CAP_DAC_OVERRIDE],
};

/// Fails with one line naming the capabilities blockprobe lacks, unless it holds all it
/// needs in its effective set (as root, or as a user granted them). Checked first by
/// every step that needs them, such as reading a `-p` process's memory map, so that a
/// user without them is told so rather than that access was denied.
pub fn require_privileges() -> anyhow::Result<()> {
    finding()?.required()
}

/// The capabilities item of `blockprobe check`: the needed capabilities held, or the one
/// line naming those missing.
pub fn finding() -> anyhow::Result<Finding> {
    let effective = effective_capabilities()?;
    let tracefs_readable = std::fs::read_dir(crate::tracefs::TRACEFS).is_ok();
    let missing = missing_capabilities(effective, tracefs_readable);
    if missing.is_empty() {
        let root = nix::unistd::geteuid().is_root();
        let detail = if root {
            "root, with CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE (or CAP_SYS_ADMIN)"
        } else {
            "not root, but holding CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE (or CAP_SYS_ADMIN)"
        };
        return Ok(Finding::ok("capabilities", detail));
    }
    let names: Vec<&str> = missing.iter().map(|c| c.name).collect();
    Ok(Finding::new(
        "capabilities",
        Verdict::Fail,
        format!(
            "blockprobe needs root, or capabilities it lacks: {} (CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN, for its BPF programs; CAP_SYS_PTRACE to read Python memory; CAP_DAC_READ_SEARCH to read tracefs unless run as root)",
            names.join(", ")
        ),
        "run it as root, or grant these capabilities (e.g. setpriv --ambient-caps, or a systemd unit's AmbientCapabilities=)",
    ))
}

/// The capabilities missing from the `effective` set (a bit mask) for blockprobe's
/// needs: the first choice of each need that none of its choices meets. Tracefs needs a
/// capability only when it cannot be read without one.
fn missing_capabilities(effective: u64, tracefs_readable: bool) -> Vec<Capability> {
    let held = |c: &Capability| effective & (1 << c.bit) != 0;
    let tracefs = (!tracefs_readable).then_some(&TRACEFS_NEED);
    NEEDS
        .iter()
        .chain(tracefs)
        .filter(|need| !need.any_of.iter().any(held))
        .map(|need| need.any_of[0])
        .collect()
}

/// This thread's effective capability set, from capget(2), as a bit mask.
fn effective_capabilities() -> anyhow::Result<u64> {
    let caps = ThreadCapabilities::get()
        .map_err(|e| anyhow::anyhow!("cannot read blockprobe's capabilities (capget): {e}"))?;
    Ok(caps.effective())
}

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit sets, in two 32-bit halves.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

impl CapHeader {
    /// Version 3, the calling thread.
    fn this_thread() -> Self {
        CapHeader {
            version: CAPABILITY_VERSION_3,
            pid: 0,
        }
    }
}

/// `struct __user_cap_data_struct`: one 32-bit half of each set.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The capability sets of the calling thread (capabilities are per thread on Linux).
pub(crate) struct ThreadCapabilities([CapData; 2]);

impl ThreadCapabilities {
    /// Reads them with capget(2).
    pub(crate) fn get() -> std::io::Result<Self> {
        let mut header = CapHeader::this_thread();
        let mut data = [CapData::default(); 2];
        // SAFETY: capget(2) with a version-3 header writes two `CapData` records, which
        // `data` has room for; both pointers are valid for the call.
        let rc = unsafe { libc::syscall(libc::SYS_capget, &raw mut header, data.as_mut_ptr()) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(ThreadCapabilities(data))
    }

    /// The effective set, as a bit mask.
    pub(crate) fn effective(&self) -> u64 {
        u64::from(self.0[0].effective) | (u64::from(self.0[1].effective) << 32)
    }

    /// Removes the capabilities of `mask` from the effective set and applies the sets to
    /// the calling thread with capset(2).
    #[cfg(test)]
    pub(crate) fn drop_effective(mut self, mask: u64) -> std::io::Result<()> {
        self.0[0].effective &= !(mask as u32);
        self.0[1].effective &= !((mask >> 32) as u32);
        let header = CapHeader::this_thread();
        // SAFETY: capset(2) with a version-3 header reads two `CapData` records.
        let rc = unsafe { libc::syscall(libc::SYS_capset, &raw const header, self.0.as_ptr()) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(caps: &[Capability]) -> u64 {
        caps.iter().fold(0, |mask, c| mask | (1 << c.bit))
    }

    fn names(caps: &[Capability]) -> Vec<&'static str> {
        caps.iter().map(|c| c.name).collect()
    }

    #[test]
    fn all_capabilities_are_enough() {
        assert!(missing_capabilities(u64::MAX, false).is_empty());
        assert!(missing_capabilities(u64::MAX, true).is_empty());
    }

    #[test]
    fn names_each_missing_capability() {
        assert_eq!(
            names(&missing_capabilities(0, true)),
            ["CAP_BPF", "CAP_PERFMON", "CAP_SYS_PTRACE"]
        );
        assert_eq!(
            names(&missing_capabilities(set(&[CAP_SYS_PTRACE]), true)),
            ["CAP_BPF", "CAP_PERFMON"]
        );
        assert_eq!(
            names(&missing_capabilities(set(&[CAP_BPF, CAP_SYS_PTRACE]), true)),
            ["CAP_PERFMON"]
        );
    }

    #[test]
    fn sys_admin_stands_for_bpf_and_perfmon() {
        assert!(missing_capabilities(set(&[CAP_SYS_ADMIN, CAP_SYS_PTRACE]), true).is_empty());
    }

    /// A user other than root holding the capabilities is not refused; it needs one more
    /// only when tracefs is closed to it.
    #[test]
    fn tracefs_needs_a_capability_only_when_closed() {
        let granted = set(&[CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE]);
        assert!(missing_capabilities(granted, true).is_empty());
        assert_eq!(
            names(&missing_capabilities(granted, false)),
            ["CAP_DAC_READ_SEARCH"]
        );
        let overriding = granted | set(&[CAP_DAC_OVERRIDE]);
        assert!(missing_capabilities(overriding, false).is_empty());
    }

    #[test]
    fn reads_its_own_capabilities() {
        let effective = effective_capabilities().unwrap();
        if nix::unistd::geteuid().is_root() {
            assert_ne!(effective & set(&[CAP_SYS_PTRACE]), 0, "{effective:#x}");
        }
    }
}
