//! Empty library target: lets blockprobe depend on this crate so cargo rebuilds it on change.
#![no_std]
