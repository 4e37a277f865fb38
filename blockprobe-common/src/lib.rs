//! The contract between blockprobe's BPF programs and its userspace.
//!
//! Everything here is `#[repr(C)]`, has a fixed size checked at compile time, and is
//! written by one side and read by the other. Map names are shared constants so the
//! loader and the kernel side can never disagree.
#![no_std]

pub mod blocking;
pub mod cause;
pub mod config;
pub mod counters;
pub mod event;
pub mod maps;
pub mod stack;
pub mod syscalls;
pub mod thread;
pub mod walk;

/// Asserts at compile time that a shared type has the size both sides expect.
#[macro_export]
macro_rules! assert_size {
    ($ty:ty, $size:expr) => {
        const _: () = assert!(core::mem::size_of::<$ty>() == $size);
    };
}

/// Implements `aya::Pod` for map value types when built for userspace.
macro_rules! user_pod {
    ($($ty:ty),* $(,)?) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: the type is `#[repr(C)]`, `Copy`, and has no padding holes that
            // carry meaning; every bit pattern is a valid value.
            unsafe impl aya::Pod for $ty {}
        )*
    };
}
pub(crate) use user_pod;
