//! The poll hooks: fentry/fexit on the epoll syscall functions where the kernel allows
//! BPF trampolines, else the per-syscall tracepoints; and how often the kernel skipped a
//! program.

use std::os::fd::{AsFd as _, AsRawFd as _};

use anyhow::Context as _;
use aya::{
    Btf, Ebpf,
    programs::{FEntry, FExit, TracePoint},
};
use serde::{Deserialize, Serialize};

use crate::bpf_object::program_mut;

/// How the epoll syscalls (and `close`) are hooked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PollHook {
    /// BPF trampolines on the syscall functions: nothing else pays anything.
    Fentry,
    /// The `syscalls:sys_enter_*`/`sys_exit_*` tracepoints: the kernel then sends every
    /// syscall on the host down its traced path (the floor), running no program for the
    /// others.
    Tracepoint,
}

impl PollHook {
    /// Its name in the report and the live line.
    pub fn name(self) -> &'static str {
        match self {
            PollHook::Fentry => "fentry",
            PollHook::Tracepoint => "tracepoint",
        }
    }
}

/// Which hook was chosen, and why fentry was not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookChoice {
    /// The hook in use.
    pub hook: PollHook,
    /// The kernel's refusal of fentry, when the tracepoints are used.
    pub fentry_refused: Option<String>,
}

/// The fentry/fexit programs: (program, kernel function).
const FENTRY: [(&str, &str); 4] = [
    ("ep_wait_in", "__x64_sys_epoll_wait"),
    ("ep_pwait_in", "__x64_sys_epoll_pwait"),
    ("ep_pwait2_in", "__x64_sys_epoll_pwait2"),
    ("close_in", "__x64_sys_close"),
];
/// See [`FENTRY`].
const FEXIT: [(&str, &str); 3] = [
    ("ep_wait_out", "__x64_sys_epoll_wait"),
    ("ep_pwait_out", "__x64_sys_epoll_pwait"),
    ("ep_pwait2_out", "__x64_sys_epoll_pwait2"),
];
/// The tracepoint programs: (program, `syscalls:` tracepoints).
const TRACEPOINTS: [(&str, &[&str]); 3] = [
    (
        "tp_poll_in",
        &[
            "sys_enter_epoll_wait",
            "sys_enter_epoll_pwait",
            "sys_enter_epoll_pwait2",
        ],
    ),
    (
        "tp_poll_out",
        &[
            "sys_exit_epoll_wait",
            "sys_exit_epoll_pwait",
            "sys_exit_epoll_pwait2",
        ],
    ),
    ("tp_close_in", &["sys_enter_close"]),
];

/// Attaches the poll hooks: fentry where the kernel allows it (`btf` is the kernel's,
/// which fentry needs), else the tracepoints.
pub fn attach(ebpf: &mut Ebpf, btf: Option<&Btf>) -> anyhow::Result<HookChoice> {
    choose(ebpf, |ebpf| attach_fentry(ebpf, btf), attach_tracepoints)
}

/// The choice: `fentry` when it works on `target`, else `tracepoints`, keeping why
/// fentry failed.
fn choose<T>(
    target: &mut T,
    fentry: impl FnOnce(&mut T) -> anyhow::Result<()>,
    tracepoints: impl FnOnce(&mut T) -> anyhow::Result<()>,
) -> anyhow::Result<HookChoice> {
    let refused = match fentry(target) {
        Ok(()) => {
            return Ok(HookChoice {
                hook: PollHook::Fentry,
                fentry_refused: None,
            });
        }
        Err(e) => e,
    };
    // What was refused, and the kernel's reason (the verifier output between is empty).
    let refused = match refused.chain().count() {
        1 => refused.to_string(),
        _ => format!("{refused}: {}", refused.root_cause()),
    };
    tracepoints(target).with_context(|| format!("fentry was refused too ({refused})"))?;
    Ok(HookChoice {
        hook: PollHook::Tracepoint,
        fentry_refused: Some(refused),
    })
}

/// Loads and attaches every fentry/fexit program; on the first refusal, unloads what
/// was loaded (detaching it) and says why.
fn attach_fentry(ebpf: &mut Ebpf, btf: Option<&Btf>) -> anyhow::Result<()> {
    let attached = btf
        .context("the kernel has no BTF")
        .and_then(|btf| try_fentry(ebpf, btf));
    if attached.is_err() {
        // Not loaded (the refusal came first) is not an error worth reporting.
        for (program, _) in FENTRY {
            if let Ok(p) = program_mut(ebpf, program).and_then(|p| Ok(<&mut FEntry>::try_from(p)?))
            {
                let _ = p.unload();
            }
        }
        for (program, _) in FEXIT {
            if let Ok(p) = program_mut(ebpf, program).and_then(|p| Ok(<&mut FExit>::try_from(p)?)) {
                let _ = p.unload();
            }
        }
    }
    attached
}

fn try_fentry(ebpf: &mut Ebpf, btf: &Btf) -> anyhow::Result<()> {
    for (program, function) in FENTRY {
        let p: &mut FEntry = program_mut(ebpf, program)?.try_into()?;
        p.load(function, btf)
            .with_context(|| format!("loading fentry on {function}"))?;
        p.attach()
            .with_context(|| format!("attaching fentry to {function}"))?;
    }
    for (program, function) in FEXIT {
        let p: &mut FExit = program_mut(ebpf, program)?.try_into()?;
        p.load(function, btf)
            .with_context(|| format!("loading fexit on {function}"))?;
        p.attach()
            .with_context(|| format!("attaching fexit to {function}"))?;
    }
    Ok(())
}

fn attach_tracepoints(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    for (program, tracepoints) in TRACEPOINTS {
        let p: &mut TracePoint = program_mut(ebpf, program)?.try_into()?;
        p.load()
            .with_context(|| format!("the kernel verifier rejected BPF program {program}"))?;
        for tracepoint in tracepoints {
            p.attach("syscalls", tracepoint)
                .with_context(|| format!("attaching {program} to syscalls:{tracepoint}"))?;
        }
    }
    Ok(())
}

/// How many times in all the kernel skipped one of the loaded programs of `ebpf`
/// (`recursion_misses`): a classic tracepoint's program does not run while its CPU's
/// `bpf_prog_active` is held, e.g. during a BPF map syscall made there.
pub fn skipped_runs(ebpf: &Ebpf) -> anyhow::Result<u64> {
    let mut total = 0;
    for (name, program) in ebpf.programs() {
        // Programs of the hook not chosen are not loaded.
        let Ok(fd) = program.fd() else { continue };
        total += recursion_misses(fd.as_fd().as_raw_fd())
            .with_context(|| format!("reading the statistics of BPF program {name}"))?;
    }
    Ok(total)
}

/// `bpf_prog_info.recursion_misses` of the program `fd` (0 on kernels without it).
fn recursion_misses(fd: i32) -> anyhow::Result<u64> {
    /// `BPF_OBJ_GET_INFO_BY_FD`.
    const GET_INFO_BY_FD: libc::c_long = 15;
    /// Offset of `recursion_misses` in `struct bpf_prog_info` (stable UAPI).
    const RECURSION_MISSES: usize = 208;
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut info = [0u64; 32];
    let mut attr = InfoAttr {
        bpf_fd: u32::try_from(fd)?,
        info_len: u32::try_from(std::mem::size_of_val(&info))?,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: bpf(2) writes at most `info_len` bytes to `info`, which outlives the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            GET_INFO_BY_FD,
            &mut attr as *mut InfoAttr,
            std::mem::size_of::<InfoAttr>(),
        )
    };
    if ret != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    let filled = attr.info_len as usize;
    Ok(if filled >= RECURSION_MISSES + 8 {
        info[RECURSION_MISSES / 8]
    } else {
        0
    })
}

#[cfg(test)]
mod tests {
    use anyhow::anyhow;

    use super::*;

    #[test]
    fn fentry_is_chosen_when_the_kernel_allows_it() {
        let choice = choose(
            &mut (),
            |_| Ok(()),
            |_| panic!("tracepoints attached as well"),
        )
        .unwrap();
        assert_eq!(
            choice,
            HookChoice {
                hook: PollHook::Fentry,
                fentry_refused: None
            }
        );
    }

    #[test]
    fn tracepoints_are_the_fallback_and_say_why() {
        let choice = choose(
            &mut (),
            |_| Err(anyhow!("Operation not permitted")).context("loading fentry on f"),
            |_| Ok(()),
        )
        .unwrap();
        assert_eq!(
            choice,
            HookChoice {
                hook: PollHook::Tracepoint,
                fentry_refused: Some("loading fentry on f: Operation not permitted".into())
            }
        );
    }

    #[test]
    fn both_refused_is_an_error_naming_both() {
        let err = choose(
            &mut (),
            |_| Err(anyhow!("EPERM")),
            |_| Err(anyhow!("no tracefs")),
        )
        .unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("EPERM") && text.contains("no tracefs"),
            "{text}"
        );
    }
}
