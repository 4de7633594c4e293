//! Loading the committed BPF objects, attaching their tracepoints and reading their maps.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use aya::maps::{Array, HashMap, MapData, MapError};
use aya::programs::{RawTracePoint, TracePoint};
use aya::{Ebpf, include_bytes_aligned};

use crate::audit::{CallCounts, SYSCALLS, SyscallSet};

/// `entropy.bpf.o`, built from `bpf/entropy.bpf.c` by `scripts/build-bpf`.
static ENTROPY: &[u8] = include_bytes_aligned!("../bpf/entropy.bpf.o");
/// `syscall.bpf.o`, built from `bpf/syscall.bpf.c`.
static SYSCALL: &[u8] = include_bytes_aligned!("../bpf/syscall.bpf.o");

/// Lengths of the maps' values (see `bpf/maxwell.h`).
const ER_LEN: usize = 8;
const LOSS_LEN: usize = 4;
const CALL_LEN: usize = SYSCALLS + 3;
const DENY_WORDS: usize = SYSCALLS / 64;

/// The tracepoints: (object, program, category, event); the category `raw` marks a raw
/// tracepoint.
const ATTACH: [(usize, &str, &str, &str); 8] = [
    (0, "maxwell_munmap", "syscalls", "sys_enter_munmap"),
    (0, "maxwell_madvise", "syscalls", "sys_enter_madvise"),
    (0, "maxwell_mremap", "syscalls", "sys_enter_mremap"),
    (0, "maxwell_brk", "syscalls", "sys_exit_brk"),
    (0, "maxwell_exec", "sched", "sched_process_exec"),
    (0, "maxwell_exit", "sched", "sched_process_exit"),
    (1, "maxwell_sys_enter", "raw", "sys_enter"),
    (1, "maxwell_arm", "sched", "sched_process_exec"),
];

/// Why the probes are not there.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// They cannot load or attach on this machine; the reason names what is missing.
    #[error("eBPF probes unavailable: {0}")]
    Unavailable(String),
    /// A map operation failed.
    #[error("eBPF map {map}: {cause}")]
    Map {
        /// Which map.
        map: &'static str,
        /// What the kernel said.
        cause: String,
    },
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

fn map_err(map: &'static str) -> impl Fn(MapError) -> ProbeError {
    move |e| ProbeError::Map {
        map,
        cause: chain(&e),
    }
}

/// What an agent's processes gave back to the kernel since it was watched, in bytes (whole
/// pages).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Erasure {
    /// By munmap.
    pub unmapped: u64,
    /// By madvise DONTNEED, DONTNEED_LOCKED, FREE and REMOVE.
    pub madvised: u64,
    /// By brk lowering the heap's top.
    pub heap: u64,
    /// By mremap shrinking a mapping.
    pub remapped: u64,
    /// Calls that freed memory.
    pub calls: u64,
}

impl Erasure {
    /// Every byte freed.
    pub fn total(&self) -> u64 {
        self.unmapped
            .saturating_add(self.madvised)
            .saturating_add(self.heap)
            .saturating_add(self.remapped)
    }
}

/// The loaded and attached probes. Dropping them detaches every program and frees the maps
/// (nothing is pinned, so a daemon that dies leaves nothing either: the kernel closes its file
/// descriptors).
pub struct Probes {
    _objects: [Ebpf; 2],
    erasure: HashMap<MapData, u64, [u64; ER_LEN]>,
    losses: Array<MapData, [u64; LOSS_LEN]>,
    calls: HashMap<MapData, u64, [u64; CALL_LEN]>,
    deny: HashMap<MapData, u64, [u64; DENY_WORDS]>,
}

impl std::fmt::Debug for Probes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probes").finish_non_exhaustive()
    }
}

/// Where tracefs is, mounting it at `/sys/kernel/tracing` if it is not mounted anywhere.
fn ensure_tracefs() -> Result<(), ProbeError> {
    let mounted = |p: &str| {
        fs::read_dir(p)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
    };
    if mounted("/sys/kernel/tracing") || mounted("/sys/kernel/debug/tracing") {
        return Ok(());
    }
    nix::mount::mount(
        Some("tracefs"),
        "/sys/kernel/tracing",
        Some("tracefs"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV | nix::mount::MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| {
        ProbeError::Unavailable(format!(
            "tracefs is not mounted and mounting it at /sys/kernel/tracing failed ({e}); mount it with: mount -t tracefs tracefs /sys/kernel/tracing"
        ))
    })
}

fn take<T>(
    obj: &mut Ebpf,
    name: &'static str,
    conv: impl FnOnce(aya::maps::Map) -> Result<T, MapError>,
) -> Result<T, ProbeError> {
    let m = obj
        .take_map(name)
        .ok_or_else(|| ProbeError::Unavailable(format!("the BPF object has no map {name}")))?;
    conv(m).map_err(|e| ProbeError::Unavailable(format!("map {name}: {}", chain(&e))))
}

impl Probes {
    /// Loads both objects and attaches every tracepoint, or says why it cannot (not root, no
    /// tracefs, a kernel without these tracepoints or without BPF).
    pub fn load() -> Result<Probes, ProbeError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(ProbeError::Unavailable(
                "loading BPF programs needs root (CAP_BPF and CAP_PERFMON); run the daemon as root"
                    .into(),
            ));
        }
        ensure_tracefs()?;
        let load = |bytes: &[u8], what: &str| {
            Ebpf::load(bytes)
                .map_err(|e| ProbeError::Unavailable(format!("loading {what}: {}", chain(&e))))
        };
        let mut objects = [
            load(ENTROPY, "entropy.bpf.o")?,
            load(SYSCALL, "syscall.bpf.o")?,
        ];
        for (obj, prog, category, event) in ATTACH {
            let program = objects[obj].program_mut(prog).ok_or_else(|| {
                ProbeError::Unavailable(format!("the BPF object has no program {prog}"))
            })?;
            let unavailable = |what: &str, e: &dyn std::error::Error| {
                ProbeError::Unavailable(format!("{what} {prog}: {}", chain(e)))
            };
            let attached = if category == "raw" {
                let p: &mut RawTracePoint =
                    program.try_into().map_err(|e| unavailable("typing", &e))?;
                p.load()
                    .map_err(|e| unavailable("loading (the verifier refused it?)", &e))?;
                p.attach(event).map(drop)
            } else {
                let p: &mut TracePoint =
                    program.try_into().map_err(|e| unavailable("typing", &e))?;
                p.load()
                    .map_err(|e| unavailable("loading (the verifier refused it?)", &e))?;
                p.attach(category, event).map(drop)
            };
            attached.map_err(|e| {
                ProbeError::Unavailable(format!(
                    "attaching {prog} to the tracepoint {category}:{event}: {}",
                    chain(&e)
                ))
            })?;
        }
        let [entropy, syscall] = &mut objects;
        let erasure = take(entropy, "erasure", HashMap::try_from)?;
        let losses = take(entropy, "losses", Array::try_from)?;
        let calls = take(syscall, "calls", HashMap::try_from)?;
        let deny = take(syscall, "deny", HashMap::try_from)?;
        Ok(Probes {
            _objects: objects,
            erasure,
            losses,
            calls,
            deny,
        })
    }

    /// Starts counting for the cgroup `cgroup` (its cgroup2 id, [`cgroup_id`]), with the
    /// syscalls in `deny` forbidden. Counts start at zero.
    pub fn watch(&mut self, cgroup: u64, deny: &SyscallSet) -> Result<(), ProbeError> {
        // BPF_NOEXIST would refuse a stale entry of a reused id; replace it instead.
        self.erasure
            .insert(cgroup, [0; ER_LEN], 0)
            .map_err(map_err("erasure"))?;
        if let Err(e) = self.calls.insert(cgroup, [0; CALL_LEN], 0) {
            self.unwatch(cgroup);
            return Err(map_err("calls")(e));
        }
        if !deny.is_empty()
            && let Err(e) = self.deny.insert(cgroup, deny.0, 0)
        {
            self.unwatch(cgroup);
            return Err(map_err("deny")(e));
        }
        Ok(())
    }

    /// Stops counting for `cgroup` and frees its entries.
    pub fn unwatch(&mut self, cgroup: u64) {
        // A missing entry is the only error these can return: nothing to free.
        drop(self.erasure.remove(&cgroup));
        drop(self.calls.remove(&cgroup));
        drop(self.deny.remove(&cgroup));
    }

    /// What `cgroup`'s processes freed since [`Probes::watch`].
    pub fn erasure(&self, cgroup: u64) -> Result<Erasure, ProbeError> {
        let v = self.erasure.get(&cgroup, 0).map_err(map_err("erasure"))?;
        Ok(Erasure {
            unmapped: v[0],
            madvised: v[1],
            heap: v[2],
            remapped: v[3],
            calls: v[4],
        })
    }

    /// `cgroup`'s syscalls since [`Probes::watch`].
    pub fn calls(&self, cgroup: u64) -> Result<CallCounts, ProbeError> {
        let v = self.calls.get(&cgroup, 0).map_err(map_err("calls"))?;
        let mut counts = Box::new([0u64; SYSCALLS]);
        counts.copy_from_slice(&v[..SYSCALLS]);
        Ok(CallCounts {
            counts,
            denied: v[SYSCALLS].checked_sub(1).map(|n| n as usize),
            denied_hits: v[SYSCALLS + 1],
        })
    }

    /// The kernel's ids of the attached programs and of the maps they use (for checking that
    /// nothing is left once the probes are gone: compare with [`loaded_ids`]).
    pub fn kernel_ids(&self) -> Result<(Vec<u32>, Vec<u32>), ProbeError> {
        let mut progs = Vec::new();
        let mut maps = Vec::new();
        for (obj, prog, _, _) in ATTACH {
            let info = self._objects[obj]
                .program(prog)
                .ok_or_else(|| ProbeError::Unavailable(format!("no program {prog}")))?
                .info()
                .map_err(|e| ProbeError::Unavailable(format!("{prog}: {}", chain(&e))))?;
            progs.push(info.id());
            if let Ok(Some(ids)) = info.map_ids() {
                maps.extend(ids);
            }
        }
        maps.sort_unstable();
        maps.dedup();
        Ok((progs, maps))
    }

    /// Events the programs could not record (a full map), since loading. Never silent: the
    /// daemon reports any as a counter and in `maxwell sensors`.
    pub fn losses(&self) -> Result<u64, ProbeError> {
        let v = self.losses.get(&0, 0).map_err(map_err("losses"))?;
        Ok(v.iter().sum())
    }
}

/// Whether the probes load and attach here (they are detached again at once), for reports such
/// as `maxwell sensors`.
pub fn check() -> Result<(), ProbeError> {
    Probes::load().map(drop)
}

/// The ids of every BPF program and map loaded in the kernel now (needs root).
pub fn loaded_ids() -> (
    std::collections::BTreeSet<u32>,
    std::collections::BTreeSet<u32>,
) {
    let progs = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| p.id())
        .collect();
    let maps = aya::maps::loaded_maps()
        .filter_map(Result::ok)
        .map(|m| m.id())
        .collect();
    (progs, maps)
}

/// Where the cgroup2 hierarchy is mounted (`/sys/fs/cgroup` on a pure cgroup2 host,
/// `/sys/fs/cgroup/unified` on a hybrid one), from `/proc/self/mountinfo`.
pub fn cgroup2_mount() -> std::io::Result<std::path::PathBuf> {
    let mi = fs::read_to_string("/proc/self/mountinfo")?;
    mi.lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mountpoint = left.split(' ').nth(4)?;
            right
                .starts_with("cgroup2 ")
                .then(|| std::path::PathBuf::from(mountpoint))
        })
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no cgroup2 hierarchy is mounted: the probes key agents by their cgroup2 cgroup",
            )
        })
}

/// The cgroup2 id of the cgroup at `dir` (the inode number of its directory, which is what
/// `bpf_get_current_cgroup_id` returns for a task in it).
pub fn cgroup_id(dir: &Path) -> std::io::Result<u64> {
    Ok(fs::metadata(dir)?.ino())
}
