//! Static-TLS variables of an interpreter, found in the machine code of the exported
//! function that reads one: `PyGILState_GetThisThreadState` returns the thread's bound
//! thread state (3.15's `_Py_tss_gilstate`) with a single load from the thread pointer.

/// The exported function whose first load from `%fs` reads the bound thread state.
pub const GILSTATE_GETTER: &str = "PyGILState_GetThisThreadState";
/// How many bytes of the getter are decoded: its load comes first, after an `endbr64`.
pub const GETTER_PREFIX_BYTES: usize = 16;

/// `endbr64`, which starts functions built with control-flow protection.
const ENDBR64: [u8; 4] = [0xf3, 0x0f, 0x1e, 0xfa];
/// `%fs` segment prefix, then REX.W and `mov r/m64 → r64`.
const FS_MOV_LOAD: [u8; 3] = [0x64, 0x48, 0x8b];
/// ModRM `mod=00, r/m=100` (a SIB byte follows) with the register bits masked off.
const MODRM_SIB: u8 = 0x04;
/// ModRM bits other than the destination register.
const MODRM_NOT_REG: u8 = 0xc7;
/// SIB with no base and no index: a bare 32-bit displacement.
const SIB_DISP32: u8 = 0x25;

/// The offset from the thread pointer (two's complement, as BPF adds it) that the first
/// instruction of `code` (after an optional `endbr64`) loads from: `mov %fs:disp32, %reg`,
/// the local-exec TLS access an executable's code makes. `None` for any other code (a
/// shared library reaches its TLS through the GOT or `__tls_get_addr`).
pub fn local_exec_load(code: &[u8]) -> Option<u64> {
    let code = code.strip_prefix(&ENDBR64).unwrap_or(code);
    let rest = code.strip_prefix(&FS_MOV_LOAD)?;
    let (&[modrm, sib], rest) = rest.split_first_chunk::<2>()?;
    if modrm & MODRM_NOT_REG != MODRM_SIB || sib != SIB_DISP32 {
        return None;
    }
    let disp = rest.first_chunk::<4>()?;
    Some(i64::from(i32::from_le_bytes(*disp)) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_local_exec_load() {
        // Debian sid's python3.15: `endbr64; mov %fs:0xffffffffffffffd8,%rax; ret`.
        let getter = [
            0xf3, 0x0f, 0x1e, 0xfa, 0x64, 0x48, 0x8b, 0x04, 0x25, 0xd8, 0xff, 0xff, 0xff, 0xc3,
        ];
        assert_eq!(local_exec_load(&getter), Some((-0x28i64) as u64));
        // Without endbr64, into another register (%rdx).
        let plain = [0x64, 0x48, 0x8b, 0x14, 0x25, 0xf0, 0xff, 0xff, 0xff];
        assert_eq!(local_exec_load(&plain), Some((-0x10i64) as u64));
    }

    #[test]
    fn other_code_is_not_a_local_exec_load() {
        // A shared library's initial-exec load: `mov x@gottpoff(%rip),%rax`.
        let got = [
            0x48, 0x8b, 0x05, 0x10, 0x20, 0x00, 0x00, 0x64, 0x48, 0x8b, 0x00,
        ];
        assert_eq!(local_exec_load(&got), None);
        // `mov %fs:(%rax),%rax`: register-relative, no displacement.
        assert_eq!(local_exec_load(&[0x64, 0x48, 0x8b, 0x00]), None);
        // Cut short.
        assert_eq!(local_exec_load(&[0x64, 0x48, 0x8b, 0x04, 0x25, 0xd8]), None);
        assert_eq!(local_exec_load(&[]), None);
    }
}
