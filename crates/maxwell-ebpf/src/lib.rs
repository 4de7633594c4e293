//! Maxwell's eBPF probes.
//!
//! Two BPF programs written in C (`bpf/entropy.bpf.c`, `bpf/syscall.bpf.c`), compiled by
//! `scripts/build-bpf` into objects committed beside them (so a machine with only the Rust
//! toolchain builds Maxwell; CI checks that the objects match their sources) and loaded with
//! aya, a pure-Rust loader. They attach to tracepoints only (this kernel has no kprobes and
//! refuses fentry), read no kernel structure (no vmlinux.h, no CO-RE) and key everything by the
//! calling task's cgroup2 id, so every thread and child of an agent counts and nothing else
//! does. Counts are summed in kernel maps and read once per tick: no event wakes the daemon.
//!
//! - [`Probes`]: load, attach, watch an agent's cgroup, read its erasure and syscall counts.
//! - [`audit`]: syscall names, classes and the deny set (no BPF; parsing works everywhere).

#![forbid(unsafe_code)]

pub mod audit;
mod probes;

pub use audit::{CallCounts, Class, SyscallSet};
pub use probes::{Erasure, ProbeError, Probes, cgroup_id, cgroup2_mount, check, loaded_ids};
