//! The current task's saved user registers (at its kernel entry): its syscall's
//! arguments and its user stack pointer.

use aya_ebpf::helpers::{bpf_get_current_task_btf, bpf_probe_read_kernel, bpf_task_pt_regs};
use blockprobe_common::config::GlobalConfig;

/// The saved user registers of the current task (at its kernel entry).
#[inline(always)]
pub fn current_regs() -> *const u8 {
    // SAFETY: helpers without preconditions; the current task is valid while we run.
    untyped(unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const u8)
}

/// `ptr` as a plain number to the verifier: a typed kernel pointer (from a helper or an
/// fentry argument) may not be offset by a value it cannot bound, such as an offset
/// userspace found in BTF; every read through it is a fault-tolerant helper call anyway.
#[inline(always)]
pub fn untyped(ptr: *const u8) -> *const u8 {
    let value = ptr as u64;
    // SAFETY: reads a local; the copy is what the verifier sees as a plain number.
    unsafe { bpf_probe_read_kernel(&value) }.unwrap_or(0) as *const u8
}

/// Argument `index` (0 or 1) of the current syscall, from its saved registers.
#[inline(always)]
pub fn syscall_arg(config: &GlobalConfig, regs: *const u8, index: usize) -> Option<u64> {
    let offset = match index {
        0 => config.pt_regs_arg0_offset,
        _ => config.pt_regs_arg1_offset,
    };
    // SAFETY: `regs` is the current syscall's pt_regs; the offset comes from BTF; the
    // read is fault-tolerant.
    unsafe { bpf_probe_read_kernel(regs.add(offset as usize) as *const u64) }.ok()
}

/// The user stack pointer saved in the current syscall's registers `regs`.
#[inline(always)]
pub fn user_sp(config: &GlobalConfig, regs: *const u8) -> u64 {
    // SAFETY: `regs` is the current syscall's pt_regs; the offset comes from BTF; the
    // read is fault-tolerant.
    unsafe { bpf_probe_read_kernel(regs.add(config.pt_regs_sp_offset as usize) as *const u64) }
        .unwrap_or(0)
}
