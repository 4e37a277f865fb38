//! Reading another process's memory with `process_vm_readv`.

use std::io::IoSliceMut;

use anyhow::{Context as _, bail};
use blockprobe_common::walk::UserMemory;
use nix::sys::uio::{RemoteIoVec, process_vm_readv};
use nix::unistd::Pid;

/// Read access to the address space of a live process.
#[derive(Clone, Copy, Debug)]
pub struct ProcessMemory {
    pid: Pid,
}

impl ProcessMemory {
    /// Memory of process `pid` (host pid namespace); nothing is checked until a read.
    pub fn new(pid: u32) -> Self {
        // Pids fit in an i32: the kernel's limit is 2^22.
        Self {
            pid: Pid::from_raw(pid as i32),
        }
    }

    /// Reads into `buf` from `addr`, stopping early at the first unreadable page;
    /// returns how many bytes were read (0 when `addr` itself is unreadable).
    pub fn read_prefix(&self, addr: u64, buf: &mut [u8]) -> anyhow::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let base = usize::try_from(addr).context("address out of range")?;
        base.checked_add(buf.len())
            .with_context(|| format!("read of {} bytes at {addr:#x} wraps around", buf.len()))?;
        let remote = [RemoteIoVec {
            base,
            len: buf.len(),
        }];
        match process_vm_readv(self.pid, &mut [IoSliceMut::new(buf)], &remote) {
            Ok(n) => Ok(n),
            Err(nix::errno::Errno::EFAULT) => Ok(0),
            Err(e) => Err(e).with_context(|| {
                format!("cannot read memory of process {} at {addr:#x}", self.pid)
            }),
        }
    }

    /// Reads records of `size` bytes, the i-th from `addrs[i]` into the i-th `size` bytes
    /// of `buf`, in one system call; returns how many records, from the first, were read
    /// whole (the kernel stops at the first address it cannot read).
    pub fn read_records(
        &self,
        addrs: &[u64],
        size: usize,
        buf: &mut [u8],
    ) -> anyhow::Result<usize> {
        if size == 0 || addrs.is_empty() {
            return Ok(0);
        }
        let remote = (addrs.iter())
            .map(|&addr| {
                let base = usize::try_from(addr).context("address out of range")?;
                base.checked_add(size)
                    .with_context(|| format!("read of {size} bytes at {addr:#x} wraps around"))?;
                Ok(RemoteIoVec { base, len: size })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let local = buf
            .get_mut(..size * addrs.len())
            .context("buffer smaller than the records")?;
        match process_vm_readv(self.pid, &mut [IoSliceMut::new(local)], &remote) {
            Ok(n) => Ok(n / size),
            Err(nix::errno::Errno::EFAULT) => Ok(0),
            Err(e) => Err(e).with_context(|| format!("cannot read memory of process {}", self.pid)),
        }
    }

    /// Fills `buf` from `addr`; fails unless every byte could be read.
    pub fn read_bytes(&self, addr: u64, buf: &mut [u8]) -> anyhow::Result<()> {
        let n = self.read_prefix(addr, buf)?;
        if n != buf.len() {
            bail!(
                "process {}: only {n} of {} bytes readable at {addr:#x}",
                self.pid,
                buf.len()
            );
        }
        Ok(())
    }

    /// Reads a native-endian `u64` at `addr`.
    pub fn read_u64(&self, addr: u64) -> anyhow::Result<u64> {
        let mut b = [0; 8];
        self.read_bytes(addr, &mut b)?;
        Ok(u64::from_ne_bytes(b))
    }

    /// Reads a native-endian `u32` at `addr`.
    pub fn read_u32(&self, addr: u64) -> anyhow::Result<u32> {
        let mut b = [0; 4];
        self.read_bytes(addr, &mut b)?;
        Ok(u32::from_ne_bytes(b))
    }

    /// Reads the byte at `addr`.
    pub fn read_u8(&self, addr: u64) -> anyhow::Result<u8> {
        let mut b = [0; 1];
        self.read_bytes(addr, &mut b)?;
        Ok(b[0])
    }
}

/// The shared stack walk reads a stuck thread's frames through this.
impl UserMemory for ProcessMemory {
    fn read_u64(&self, addr: u64) -> Option<u64> {
        ProcessMemory::read_u64(self, addr).ok()
    }

    fn read_u8(&self, addr: u64) -> Option<u8> {
        ProcessMemory::read_u8(self, addr).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_memory_and_reports_unmapped() {
        let value: u64 = 0x1122_3344_5566_7788;
        let mem = ProcessMemory::new(std::process::id());
        let addr = &value as *const u64 as u64;
        assert_eq!(mem.read_u64(addr).unwrap(), value);
        assert_eq!(mem.read_u32(addr).unwrap(), 0x5566_7788);
        assert_eq!(mem.read_u8(addr).unwrap(), 0x88);
        assert!(mem.read_u64(8).is_err());
        assert!(mem.read_u64(u64::MAX - 3).is_err());
        let mut buf = [0u8; 16];
        assert_eq!(mem.read_prefix(16, &mut buf).unwrap(), 0);
    }
}
