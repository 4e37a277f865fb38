//! The parts of the loaded BPF object, by name: a missing one is an error that names it
//! (the object and the code that asks for it are built together, so it means a broken
//! build).

use anyhow::{Context as _, anyhow};
use aya::Ebpf;

/// The program `name` of the loaded object.
pub fn program_mut<'a>(
    ebpf: &'a mut Ebpf,
    name: &str,
) -> anyhow::Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name)
        .with_context(|| format!("BPF program {name} missing from the object"))
}

/// Takes the map `name` out of the loaded object.
pub fn take(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<aya::maps::Map> {
    ebpf.take_map(name)
        .ok_or_else(|| anyhow!("BPF map {name} missing from the object"))
}
