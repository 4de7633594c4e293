//! Native agents in cgroups. Needs root.
//!
//! [`ProcessSandbox::new`] finds the cgroup hierarchies at run time (module `cgroup` has the
//! detection and which version serves each function), creates a parent cgroup
//! `<own>/maxwell-<daemon pid>` under the daemon's own cgroup in every hierarchy it uses (so
//! agents stay inside whatever limits the host set for Maxwell, as systemd's delegation model
//! expects) and a private runtime directory (mode 0700) for the agents' sockets. On a pure
//! cgroup2 host it enables `memory` and `pids` for its children through
//! `cgroup.subtree_control`, first moving the daemon into a leaf `<own>/maxwell-supervisor` if
//! the no-internal-process rule requires it.
//!
//! Each agent gets `<parent>/<name>` in every hierarchy, limited by `memory.max` (no swap) and
//! `pids.max`, and frozen while still empty. The child is started through a `/bin/sh`
//! trampoline that writes its own pid into each `cgroup.procs` (the freezer's last, where it
//! freezes) and then `exec`s the program, so the program's memory is charged to the agent from
//! its first page and it starts paused. The program gets `MAXWELL_SOCKET` (its socket) and
//! `MAXWELL_AGENT` (its name) in an otherwise empty environment (plus `PATH`); stdin and stdout
//! are `/dev/null`.
//!
//! Agents run without privilege: after joining its cgroups (as root, which it must be to write
//! their `cgroup.procs`), the trampoline execs the program through `setpriv` (util-linux) as
//! the agent's own uid and gid (one per agent, from a range no account uses), with no
//! supplementary groups, no capabilities (bounding and inheritable sets cleared) and
//! `no_new_privs`. So an agent cannot read the daemon's data directory (mode 0700) or keys,
//! write outside its own home directory (`<runtime>/<name>.home`, mode 0700, and world-writable
//! places such as `/tmp`), move itself or its children out of its cgroups (their files are
//! root's), or signal the daemon or another agent. Each agent's CPU is limited to one CPU per
//! 10 ms (`cpu.max`, or v1 `cpu.cfs_quota_us`) where the `cpu` controller is available: a slot
//! is one CPU, whatever the number of processes. A watchdog process (`/bin/sh`, the daemon's
//! child) freezes every agent the moment the daemon dies without cleaning up (SIGKILL, a
//! crash), so none runs unsupervised; the next start reaps them, and removes the runtime
//! directories that dead daemons left in the temporary directory.
//!
//! [`ProcessAgent::kill`] is apoptosis: SIGTERM to every process, thaw, a grace period of
//! [`GRACE`], then `cgroup.kill` (or freeze, SIGKILL each process, thaw), reap, remove the
//! cgroups and the socket. Dropping an agent kills it the same way.
//!
//! Usage: CPU from `cpu.stat`/`cpuacct.usage`; resident memory from
//! `memory.current`/`memory.usage_in_bytes`. Erased bytes, where the eBPF probes load
//! ([`maxwell_ebpf::Probes`], keyed by the agent's cgroup2 id): what raises the larger of two
//! running totals, the bytes its processes freed by munmap, madvise (DONTNEED, FREE, REMOVE), a
//! lower brk or a shrinking mremap, and the drops in its resident memory (which also see memory
//! freed by a process's exit). Where they do not load (no root, no tracefs, an old kernel) the drop in
//! resident memory alone, and [`ProcessSandbox::erasure_source`] says why. Overwrites in place
//! are not seen either way: this kernel has no soft-dirty bits, and `PAGEMAP_SCAN` needs the
//! agent's own userfaultfd registration. The probes also count every syscall by number
//! ([`Agent::syscalls`]) and enforce the spec's deny list ([`Limits::deny`]): the first
//! forbidden call kills the agent, and its exit names the syscall.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use maxwell_agent::{AGENT_ENV, SOCKET_ENV};
use maxwell_core::{Bytes, Nanos};
use maxwell_ebpf::{CallCounts, Probes};

use crate::{
    Agent, AgentSpec, Exit, ExitReason, Limits, Mailbox, Program, Sandbox, SandboxError, Status,
    Usage, check_name,
};

mod cgroup;
pub mod testing;
pub(crate) mod wire;

use cgroup::{AgentCgroups, Plan, V2Caps, Via};

/// How long a killed agent has between SIGTERM and SIGKILL.
pub const GRACE: Duration = Duration::from_millis(200);

/// The shell that runs the trampoline.
const SHELL: &str = "/bin/sh";

/// Where `setpriv` (util-linux) may be.
const SETPRIV: [&str; 3] = ["/usr/bin/setpriv", "/bin/setpriv", "/usr/sbin/setpriv"];

/// The first uid of a daemon's agents: uids from 0xE000_0000 up, 4,096 per daemon (by its pid),
/// far above any account's (Debian's dynamic and container ranges end below 2^31).
const AGENT_UID_BASE: u32 = 0xE000_0000;

/// Waits for the daemon (`$1`) to die, then writes each value into each file (`$2 $3`, `$4 $5`,
/// ...): the parents' freezers, so that no agent runs unsupervised.
const WATCHDOG: &str = r#"p=$1; shift; while kill -0 "$p" 2>/dev/null; do sleep 0.2; done; while [ "$#" -gt 1 ]; do { echo "$2" > "$1"; } 2>/dev/null; shift 2; done"#;

/// Joins each cgroup named before `--` (writing `$$` into its `cgroup.procs`), then execs the
/// program after `--`.
const TRAMPOLINE: &str = r#"while [ "$#" -gt 0 ] && [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@""#;

/// Options of the process backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessConfig {
    /// Use cgroup v1 controllers even where cgroup2 offers the function (on hybrid hosts); for
    /// testing the v1 paths.
    pub prefer_v1: bool,
    /// Let agents write to the daemon's stderr (default: `/dev/null`).
    pub inherit_stderr: bool,
    /// Do not load the eBPF probes: erasure is then the drop in resident memory, and deny lists
    /// are refused (for comparisons such as `maxwell bench ebpf`).
    pub no_ebpf: bool,
}

#[derive(Debug)]
struct Host {
    plan: Plan,
    v2_parent: Option<PathBuf>,
    v1_parents: BTreeMap<&'static str, PathBuf>,
    acquired: Vec<PathBuf>,
    runtime: Option<PathBuf>,
    inherit_stderr: bool,
    seq: AtomicU64,
    reaped: Vec<String>,
    /// Where the one-CPU-per-slot limit is set (`None`: no `cpu` controller here).
    cpu_limit: Option<Via>,
    setpriv: PathBuf,
    uid_base: u32,
    uids: AtomicU32,
    watchdog: Mutex<Option<Child>>,
    /// The eBPF probes, where they loaded.
    probes: Option<Mutex<Probes>>,
    /// How erasure is measured here, and why (said once, by `describe` and `erasure_source`).
    erasure: String,
}

impl Drop for Host {
    fn drop(&mut self) {
        // A clean exit: the watchdog is not needed (and must not freeze a successor's agents).
        if let Ok(mut w) = self.watchdog.lock()
            && let Some(mut c) = w.take()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
        for p in self.acquired.iter().rev() {
            cgroup::release_parent(p);
        }
        if let Some(r) = &self.runtime {
            let _ = fs::remove_dir_all(r);
        }
    }
}

/// The process backend: native programs in cgroups.
#[derive(Debug, Clone)]
pub struct ProcessSandbox {
    host: Arc<Host>,
}

fn unavailable(what: impl std::fmt::Display) -> SandboxError {
    SandboxError::Unavailable(format!(
        "{what}; use the wasm backend, which needs no privilege"
    ))
}

fn words(path: &Path) -> BTreeSet<String> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// The controllers the backend wants enabled for its children on cgroup2.
const V2_CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];

/// Enables `memory` and `pids` (where offered) in `own/cgroup.subtree_control`. If the
/// no-internal-process rule forbids it (`own` holds processes and is not the real root; in a
/// container with a cgroup namespace `/` may be either), moves the processes of `own` into the
/// leaf `own/maxwell-supervisor` and tries again, as systemd's delegation documentation advises.
fn enable_v2_controllers(own: &Path) {
    let available = words(&own.join("cgroup.controllers"));
    let control = own.join("cgroup.subtree_control");
    let missing: Vec<&str> = V2_CONTROLLERS
        .iter()
        .copied()
        .filter(|c| available.contains(*c) && !words(&control).contains(*c))
        .collect();
    if missing.is_empty() {
        return;
    }
    // One controller at a time: one the host cannot enable (cpu, with real-time tasks about)
    // must not keep the others off.
    let enable_each = || {
        let mut all = true;
        for c in &missing {
            all &= fs::write(&control, format!("+{c}")).is_ok();
        }
        all
    };
    if enable_each() {
        return;
    }
    let leaf = own.join("maxwell-supervisor");
    if fs::create_dir(&leaf).is_err() && !leaf.is_dir() {
        return;
    }
    for pid in cgroup::procs(own) {
        let _ = fs::write(leaf.join("cgroup.procs"), pid.to_string());
    }
    enable_each();
}

impl ProcessSandbox {
    /// Detects cgroups and privileges and prepares the parent cgroups. Refuses with
    /// [`SandboxError::Unavailable`], saying what is missing, without root or without the
    /// cgroup functions it needs; nothing is left behind then.
    pub fn new() -> Result<ProcessSandbox, SandboxError> {
        ProcessSandbox::with_config(ProcessConfig::default())
    }

    /// [`ProcessSandbox::new`] with options.
    pub fn with_config(config: ProcessConfig) -> Result<ProcessSandbox, SandboxError> {
        let uid = nix::unistd::geteuid();
        if !uid.is_root() {
            return Err(unavailable(format!(
                "the process backend needs root to create cgroups (running as uid {uid})"
            )));
        }
        let read = |p: &str| {
            fs::read_to_string(p).map_err(|e| unavailable(format!("cannot read {p}: {e}")))
        };
        let setpriv = SETPRIV
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .ok_or_else(|| {
                unavailable(
                    "the process backend runs agents unprivileged through setpriv, which is \
                     missing (install util-linux)",
                )
            })?;
        let layout = cgroup::layout(&read("/proc/self/mountinfo")?, &read("/proc/self/cgroup")?);
        let parent_name = format!("maxwell-{}", std::process::id());
        let mut host = Host {
            plan: Plan {
                freeze: Via::V2,
                kill: Via::V2,
                cpu: Via::V2,
                memory: Via::V2,
                pids: Via::V2,
            },
            v2_parent: None,
            v1_parents: BTreeMap::new(),
            acquired: Vec::new(),
            runtime: None,
            inherit_stderr: config.inherit_stderr,
            seq: AtomicU64::new(0),
            reaped: Vec::new(),
            cpu_limit: None,
            setpriv,
            uid_base: AGENT_UID_BASE + ((std::process::id() & 0xFFFF) << 12),
            uids: AtomicU32::new(0),
            watchdog: Mutex::new(None),
            probes: None,
            erasure: String::new(),
        };
        // What a predecessor killed without cleaning up left behind goes first.
        for (own, _) in layout.v2.iter().chain(layout.v1.values()) {
            host.reaped.extend(cgroup::reap_orphans(own));
        }

        // cgroup2: enable what we can, create the parent and see what it offers.
        let mut v2_note = String::new();
        let mut caps = None;
        let mut v2_cpu_max = false;
        if let Some((own, _)) = &layout.v2 {
            enable_v2_controllers(own);
            let parent = own.join(&parent_name);
            match cgroup::acquire_parent(&parent) {
                Ok(()) => {
                    host.acquired.push(parent.clone());
                    let control = parent.join("cgroup.subtree_control");
                    let offered = words(&parent.join("cgroup.controllers"));
                    for c in V2_CONTROLLERS.iter().filter(|c| offered.contains(**c)) {
                        let _ = fs::write(&control, format!("+{c}"));
                    }
                    let enabled = words(&control);
                    v2_cpu_max = enabled.contains("cpu");
                    caps = Some(V2Caps {
                        freeze: parent.join("cgroup.freeze").exists(),
                        kill: parent.join("cgroup.kill").exists(),
                        cpu: parent.join("cpu.stat").exists(),
                        memory: enabled.contains("memory"),
                        pids: enabled.contains("pids"),
                    });
                    host.v2_parent = Some(parent);
                }
                Err(e) => v2_note = format!(" (cgroup2 at {}: {e})", own.display()),
            }
        }
        let v1: BTreeSet<&str> = layout.v1.keys().copied().collect();
        let plan = cgroup::choose(caps, &v1, config.prefer_v1).map_err(|missing| {
            let mut found = String::new();
            if let Some((d, _)) = &layout.v2 {
                let _ = write!(found, "cgroup2 at {}", d.display());
            }
            for (c, (d, _)) in &layout.v1 {
                let _ = write!(found, "{}v1 {c} at {}", if found.is_empty() { "" } else { ", " }, d.display());
            }
            if found.is_empty() {
                found = "no cgroup hierarchy in /proc/self/mountinfo".into();
            }
            unavailable(format!(
                "the process backend needs cgroup functions that are missing here: {}; found: {found}{v2_note}",
                missing.join("; ")
            ))
        })?;
        host.plan = plan;
        host.cpu_limit = match (v2_cpu_max, layout.v1.contains_key("cpu"), config.prefer_v1) {
            (true, false, _) | (true, true, false) => Some(Via::V2),
            (_, true, _) => Some(Via::V1),
            (false, false, _) => None,
        };
        const ESTIMATE: &str = "estimated as the drop in resident memory between samples (frees \
                                 re-used within a quantum are missed)";
        (host.probes, host.erasure) = match (&host.v2_parent, config.no_ebpf) {
            (_, true) => (
                None,
                format!("{ESTIMATE}: eBPF probes off by configuration"),
            ),
            (None, false) => (
                None,
                format!(
                    "{ESTIMATE}: eBPF probes not used: they key agents by their cgroup2 cgroup \
                     and there is no cgroup2 hierarchy here{v2_note}"
                ),
            ),
            (Some(_), false) => match Probes::load() {
                Ok(p) => (
                    Some(Mutex::new(p)),
                    "measured by eBPF tracepoints (munmap, madvise, brk, mremap) per agent \
                     cgroup, or the drop in resident memory where larger (exits)"
                        .to_string(),
                ),
                Err(e) => (None, format!("{ESTIMATE}: {e}")),
            },
        };
        let uses_v2 = [plan.freeze, plan.cpu, plan.memory, plan.pids].contains(&Via::V2)
            || host.cpu_limit == Some(Via::V2)
            || host.probes.is_some();
        if !uses_v2 && let Some(p) = host.v2_parent.take() {
            host.acquired.retain(|a| *a != p);
            cgroup::release_parent(&p);
        }
        let cpu_v1 = if host.cpu_limit == Some(Via::V1) {
            Via::V1
        } else {
            Via::V2
        };
        for (via, ctl) in [
            (plan.freeze, "freezer"),
            (plan.cpu, "cpuacct"),
            (cpu_v1, "cpu"),
            (plan.memory, "memory"),
            (plan.pids, "pids"),
        ] {
            if via != Via::V1 {
                continue;
            }
            let Some((own, _)) = layout.v1.get(ctl) else {
                continue;
            };
            let parent = own.join(&parent_name);
            if !host.acquired.contains(&parent) {
                cgroup::acquire_parent(&parent)?;
                host.acquired.push(parent.clone());
            }
            host.v1_parents.insert(ctl, parent);
        }
        host.reaped.extend(reap_runtime_dirs());
        host.runtime = Some(runtime_dir()?);
        *host
            .watchdog
            .lock()
            .map_err(|_| unavailable("the watchdog's lock is poisoned"))? =
            Some(start_watchdog(&host)?);
        Ok(ProcessSandbox {
            host: Arc::new(host),
        })
    }

    /// What was reaped at start: parents left by a Maxwell process that died without cleaning
    /// up, one line each (their processes were killed and their cgroups removed).
    pub fn reaped(&self) -> &[String] {
        &self.host.reaped
    }

    /// The parent cgroups (`<own>/maxwell-<pid>`), one per hierarchy in use; removed when the
    /// last sandbox of the process and its agents are gone.
    pub fn parent_cgroups(&self) -> Vec<PathBuf> {
        self.host.acquired.clone()
    }

    /// How erasure is measured (eBPF probes or the resident-memory estimate, and why).
    pub fn erasure_source(&self) -> &str {
        &self.host.erasure
    }

    /// Whether the eBPF probes are loaded (erasure measured, syscalls audited, deny lists
    /// enforced).
    pub fn probes_loaded(&self) -> bool {
        self.host.probes.is_some()
    }

    /// Events the probes could not record since they loaded (`None` without probes).
    pub fn probe_losses(&self) -> Option<Result<u64, SandboxError>> {
        Some(lock_probes(&self.host)?.and_then(|p| p.losses().map_err(probe_error)))
    }

    /// Which cgroup serves each function, in words (for logs).
    pub fn describe(&self) -> String {
        let h = &self.host;
        let at = |via: Via, ctl: &str| match via {
            Via::V2 => format!(
                "cgroup2 {}",
                h.v2_parent.as_deref().unwrap_or(Path::new("?")).display()
            ),
            Via::V1 => format!(
                "v1 {}",
                h.v1_parents
                    .get(ctl)
                    .map_or(Path::new("?"), PathBuf::as_path)
                    .display()
            ),
        };
        format!(
            "freeze: {}; kill: {}; cpu: {}; memory: {}; pids: {}; one CPU per slot: {}; agents run as uids {} and up, unprivileged; erasure: {}",
            at(h.plan.freeze, "freezer"),
            match h.plan.kill {
                Via::V2 => "cgroup.kill".to_string(),
                Via::V1 => "freeze + SIGKILL each process".to_string(),
            },
            at(h.plan.cpu, "cpuacct"),
            at(h.plan.memory, "memory"),
            at(h.plan.pids, "pids"),
            match h.cpu_limit {
                Some(via) => at(via, "cpu"),
                None => "NOT LIMITED (no cpu controller here: an agent with many processes can \
                         use more than one CPU per slot)"
                    .to_string(),
            },
            h.uid_base,
            h.erasure,
        )
    }

    /// [`Sandbox::spawn`] with the concrete type.
    pub fn spawn_process(&self, spec: &AgentSpec) -> Result<ProcessAgent, SandboxError> {
        check_name(&spec.name)?;
        let (path, args) = match &spec.program {
            Program::Native { path, args } => (path, args),
            Program::Wasm { .. } => {
                return Err(SandboxError::InvalidSpec(format!(
                    "agent {}: the process backend runs native programs; run WASM modules with the wasm backend",
                    spec.name
                )));
            }
        };
        match fs::metadata(path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => {
                return Err(SandboxError::InvalidSpec(format!(
                    "{}: not a file",
                    path.display()
                )));
            }
            Err(e) => {
                return Err(SandboxError::InvalidSpec(format!(
                    "{}: {e}",
                    path.display()
                )));
            }
        }
        if spec.limits.pids_max == 0 || spec.limits.memory_max.0 == 0 {
            return Err(SandboxError::InvalidSpec(format!(
                "agent {}: memory_max and pids_max must be positive",
                spec.name
            )));
        }
        let host = &self.host;
        let runtime = host
            .runtime
            .as_deref()
            .ok_or_else(|| SandboxError::Unavailable("no runtime directory".into()))?;
        let mut socket = runtime.join(format!("{}.sock", spec.name));
        if socket.as_os_str().len() > 100 {
            socket = runtime.join(format!("{}.sock", host.seq.fetch_add(1, Ordering::Relaxed)));
        }

        let mut cg = AgentCgroups::new(
            host.plan,
            host.v2_parent.as_deref(),
            &host.v1_parents,
            &spec.name,
        );
        cg.cpu_limit = host.cpu_limit;
        if !spec.limits.deny.is_empty() && host.probes.is_none() {
            return Err(SandboxError::Unavailable(format!(
                "agent {}: its syscall deny list ({}) needs the eBPF probes, and erasure here is {}",
                spec.name,
                spec.limits.deny.names().join(", "),
                host.erasure
            )));
        }
        cg.create(spec.limits.memory_max.0, spec.limits.pids_max)?;
        // The probes count from before the trampoline's first instruction.
        let probe = match watch(host, &cg, &spec.limits) {
            Ok(p) => p,
            Err(e) => {
                let _ = cg.remove();
                return Err(e);
            }
        };
        let uid = host.uid_base + (host.uids.fetch_add(1, Ordering::Relaxed) & 0xFFF);
        let home = socket.with_extension("home");
        let mailbox = Arc::new(Mailbox::default());
        let started = private_home(&home, uid).and_then(|()| {
            let e = wire::Endpoint::start(&socket, &spec.name, mailbox.clone())?;
            // Only the agent's uid may connect to its socket.
            hand_over(e.path(), uid, 0o600)?;
            Ok(e)
        });
        let endpoint = match started {
            Ok(e) => e,
            Err(e) => {
                let _ = fs::remove_dir_all(&home);
                unwatch(host, probe);
                let _ = cg.remove();
                return Err(e);
            }
        };
        let mut cmd = Command::new(SHELL);
        cmd.arg("-c").arg(TRAMPOLINE).arg("maxwell-join");
        cmd.args(cg.procs_files());
        cmd.arg("--").arg(&host.setpriv).args([
            format!("--reuid={uid}"),
            format!("--regid={uid}"),
            "--clear-groups".into(),
            "--nnp".into(),
            "--inh-caps=-all".into(),
            "--bounding-set=-all".into(),
            "--".into(),
        ]);
        cmd.arg(path).args(args);
        cmd.env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
            )
            .env(SOCKET_ENV, endpoint.path())
            .env(AGENT_ENV, &spec.name)
            .env("HOME", &home)
            .env("TMPDIR", &home)
            .current_dir(&home)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if host.inherit_stderr {
                Stdio::inherit()
            } else {
                Stdio::null()
            });
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                drop(endpoint);
                let _ = fs::remove_dir_all(&home);
                unwatch(host, probe);
                let _ = cg.remove();
                return Err(SandboxError::io(
                    format!("starting {SHELL} for {}", spec.name),
                    e,
                ));
            }
        };
        Ok(ProcessAgent {
            name: spec.name.clone(),
            memory_max: spec.limits.memory_max.0,
            uid,
            home,
            cg,
            endpoint,
            mailbox,
            child,
            paused: true,
            exit: None,
            residual: None,
            last_cpu: 0,
            last_resident: 0,
            probe,
            deny: !spec.limits.deny.is_empty(),
            last_freed: 0,
            dropped: 0,
            charged: 0,
            final_calls: None,
            host: self.host.clone(),
        })
    }
}

fn probe_error(e: maxwell_ebpf::ProbeError) -> SandboxError {
    SandboxError::Unavailable(e.to_string())
}

fn lock_probes(host: &Host) -> Option<Result<std::sync::MutexGuard<'_, Probes>, SandboxError>> {
    host.probes.as_ref().map(|p| {
        p.lock()
            .map_err(|_| SandboxError::Unavailable("the probes' lock is poisoned".into()))
    })
}

/// Starts the probes' counts for a new agent's cgroup2 cgroup; its id, or `None` without
/// probes.
fn watch(host: &Host, cg: &AgentCgroups, limits: &Limits) -> Result<Option<u64>, SandboxError> {
    let Some(probes) = lock_probes(host) else {
        return Ok(None);
    };
    let dir = cg
        .v2
        .as_deref()
        .ok_or_else(|| SandboxError::Unavailable("the agent has no cgroup2 cgroup".into()))?;
    let id = maxwell_ebpf::cgroup_id(dir)
        .map_err(|e| SandboxError::io(format!("reading the id of {}", dir.display()), e))?;
    probes?.watch(id, &limits.deny).map_err(probe_error)?;
    Ok(Some(id))
}

fn unwatch(host: &Host, probe: Option<u64>) {
    if let (Some(id), Some(Ok(mut p))) = (probe, lock_probes(host)) {
        p.unwatch(id);
    }
}

/// Creates `dir` (mode 0700) and gives it to `uid`.
fn private_home(dir: &Path, uid: u32) -> Result<(), SandboxError> {
    fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(|e| SandboxError::io(format!("creating the agent's home {}", dir.display()), e))?;
    hand_over(dir, uid, 0o700)
}

/// Gives `path` to `uid` (and the gid of the same number) with `mode`.
pub(crate) fn hand_over(path: &Path, uid: u32, mode: u32) -> Result<(), SandboxError> {
    use std::os::unix::fs::PermissionsExt;
    nix::unistd::chown(
        path,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(uid)),
    )
    .map_err(|e| {
        SandboxError::io(
            format!("giving {} to uid {uid}", path.display()),
            std::io::Error::from(e),
        )
    })?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| SandboxError::io(format!("setting the mode of {}", path.display()), e))
}

/// Starts the watchdog: when this process dies without cleaning up, it freezes every agent
/// (the parents' freezers freeze the whole subtree).
fn start_watchdog(host: &Host) -> Result<Child, SandboxError> {
    let mut cmd = Command::new(SHELL);
    cmd.arg("-c")
        .arg(WATCHDOG)
        .arg("maxwell-watchdog")
        .arg(std::process::id().to_string());
    match host.plan.freeze {
        Via::V2 => {
            if let Some(p) = &host.v2_parent {
                cmd.arg(p.join("cgroup.freeze")).arg("1");
            }
        }
        Via::V1 => {
            if let Some(p) = host.v1_parents.get("freezer") {
                cmd.arg(p.join("freezer.state")).arg("FROZEN");
            }
        }
    }
    cmd.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| SandboxError::io("starting the watchdog", e))
}

/// Removes the runtime directories (`<tmp>/maxwell-<pid>-*`) of Maxwell processes that are
/// gone; one line each.
fn reap_runtime_dirs() -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("maxwell-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        // Only directories of the runtime's shape (`maxwell-<pid>-<n>-<hex>`), only root's.
        let Ok(meta) = e.metadata() else { continue };
        use std::os::unix::fs::MetadataExt;
        if !meta.is_dir()
            || meta.uid() != 0
            || name.split('-').count() != 4
            || pid == std::process::id()
            || Path::new(&format!("/proc/{pid}")).exists()
        {
            continue;
        }
        if fs::remove_dir_all(e.path()).is_ok() {
            out.push(format!(
                "{}: a dead daemon's runtime directory, removed",
                e.path().display()
            ));
        }
    }
    out
}

fn runtime_dir() -> Result<PathBuf, SandboxError> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let base = std::env::temp_dir();
    let mut last = None;
    for _ in 0..16 {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = base.join(format!("maxwell-{}-{n}-{nanos:x}", std::process::id()));
        // 0711: agents (other uids) may reach their own socket and home inside, not list it.
        match fs::DirBuilder::new().mode(0o711).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) => last = Some(e),
        }
    }
    Err(SandboxError::io(
        format!("creating a private runtime directory in {}", base.display()),
        last.unwrap_or_else(|| std::io::Error::other("no attempt")),
    ))
}

impl Sandbox for ProcessSandbox {
    fn name(&self) -> &'static str {
        "process"
    }

    fn erasure_source(&self) -> String {
        self.host.erasure.clone()
    }

    fn probe_losses(&self) -> Option<Result<u64, SandboxError>> {
        ProcessSandbox::probe_losses(self)
    }

    fn spawn(&self, spec: &AgentSpec) -> Result<Box<dyn Agent>, SandboxError> {
        Ok(Box::new(self.spawn_process(spec)?))
    }
}

/// A native agent in its cgroups.
#[derive(Debug)]
pub struct ProcessAgent {
    name: String,
    memory_max: u64,
    uid: u32,
    home: PathBuf,
    cg: AgentCgroups,
    endpoint: wire::Endpoint,
    mailbox: Arc<Mailbox>,
    child: Child,
    paused: bool,
    exit: Option<Exit>,
    residual: Option<Usage>,
    last_cpu: u64,
    last_resident: u64,
    /// The agent's cgroup2 id in the probes' maps, if they are loaded.
    probe: Option<u64>,
    /// Whether it has a deny list (checked on every status).
    deny: bool,
    /// The bytes the probes had counted as freed by syscalls at the last usage (cumulative).
    last_freed: u64,
    /// Drops in resident memory so far (cumulative).
    dropped: u64,
    /// Erasure charged so far: the larger of `last_freed` and `dropped` at the last usage.
    charged: u64,
    /// Its syscall counts when it ended (its map entry is freed then).
    final_calls: Option<CallCounts>,
    host: Arc<Host>,
}

impl ProcessAgent {
    /// The pid of the agent's first process (the program, once the trampoline has exec'd).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every process in the agent's cgroups now.
    pub fn pids(&self) -> Vec<i32> {
        self.cg.pids()
    }

    /// The agent's cgroup directories (one per hierarchy in use).
    pub fn cgroups(&self) -> &[PathBuf] {
        &self.cg.dirs
    }

    /// The agent's socket.
    pub fn socket(&self) -> &Path {
        self.endpoint.path()
    }

    /// The unprivileged uid (and gid) the agent's processes run as.
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// The agent's home directory (its working directory, the only one it owns).
    pub fn home(&self) -> &Path {
        &self.home
    }

    fn exited_error(&self) -> SandboxError {
        SandboxError::Exited {
            name: self.name.clone(),
            detail: self
                .exit
                .as_ref()
                .map_or_else(String::new, |e| e.detail.clone()),
        }
    }

    /// Describes how the agent's first process ended.
    fn classify(&self, status: ExitStatus) -> Exit {
        if let Some(e) = self.denied() {
            return e;
        }
        let oom = self.cg.oom_kills();
        if oom > 0 {
            return Exit {
                reason: ExitReason::MemoryLimit,
                detail: format!(
                    "killed by the OOM killer at its memory limit of {} bytes ({oom} OOM kill(s); {})",
                    self.memory_max,
                    describe_status(status)
                ),
            };
        }
        match status.signal() {
            Some(_) => Exit {
                reason: ExitReason::Crashed,
                detail: describe_status(status),
            },
            None => Exit {
                reason: ExitReason::Finished,
                detail: describe_status(status),
            },
        }
    }

    /// The forbidden syscall the agent made, as its exit, if it made one.
    fn denied(&self) -> Option<Exit> {
        if !self.deny {
            return None;
        }
        let calls = self.read_calls()?.ok()?;
        let nr = calls.denied?;
        let what = if nr == maxwell_ebpf::audit::OTHER {
            "made a 32-bit or x32 syscall, which an agent with a deny list may not make (its number would not say what it does)".to_string()
        } else {
            format!(
                "made the forbidden syscall {} (number {nr}) on its deny list",
                maxwell_ebpf::audit::name(nr)
            )
        };
        Some(Exit {
            reason: ExitReason::Violation,
            detail: format!(
                "{what}; killed by the kernel at the call's entry ({} forbidden call(s))",
                calls.denied_hits
            ),
        })
    }

    fn read_calls(&self) -> Option<Result<CallCounts, SandboxError>> {
        let id = self.probe?;
        Some(lock_probes(&self.host)?.and_then(|p| p.calls(id).map_err(probe_error)))
    }

    /// Reads the probes' count of bytes freed by syscalls into `last_freed` (cumulative;
    /// unchanged without probes).
    fn read_freed(&mut self) -> Result<(), SandboxError> {
        let (Some(id), Some(probes)) = (self.probe, lock_probes(&self.host)) else {
            return Ok(());
        };
        let total = probes?.erasure(id).map_err(probe_error)?.total();
        self.last_freed = self.last_freed.max(total);
        Ok(())
    }

    /// Adds a drop in resident memory and returns the erasure not charged yet: the larger of
    /// the two running totals (bytes freed by syscalls, resident drops) minus what was charged.
    /// Totals, not per-interval maxima: a munmap counted at its entry in one sample and seen in
    /// resident memory in the next is charged once.
    fn erased_since(&mut self, resident_drop: u64) -> u64 {
        self.dropped = self.dropped.saturating_add(resident_drop);
        let total = self.dropped.max(self.last_freed);
        let d = total.saturating_sub(self.charged);
        self.charged = self.charged.max(total);
        d
    }

    /// Frees everything once the first process is gone.
    fn finish(&mut self, exit: Exit) -> Exit {
        let cpu = self.cg.cpu_ns().unwrap_or(self.last_cpu);
        self.cg.kill_all();
        let mut exit = exit;
        if let Err(e) = self.read_freed() {
            let _ = write!(exit.detail, "; its last erasure was not read: {e}");
        }
        // Everything it still held is given back.
        let erased = self.erased_since(self.last_resident);
        self.final_calls = self.read_calls().and_then(Result::ok);
        unwatch(&self.host, self.probe.take());
        self.endpoint.stop();
        if let Err(e) = self.cg.remove() {
            let _ = write!(exit.detail, "; {e}");
        }
        if let Err(e) = fs::remove_dir_all(&self.home)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            let _ = write!(exit.detail, "; removing {}: {e}", self.home.display());
        }
        self.residual = Some(Usage {
            cpu: Nanos(cpu.saturating_sub(self.last_cpu)),
            resident: Bytes(0),
            erased: Bytes(erased),
        });
        self.paused = false;
        self.exit = Some(exit.clone());
        exit
    }

    /// If the first process has exited, finishes and returns the exit.
    fn reap(&mut self) -> Option<Exit> {
        if let Some(e) = &self.exit {
            return Some(e.clone());
        }
        match self.child.try_wait() {
            Ok(None) => None,
            Ok(Some(status)) => {
                let e = self.classify(status);
                Some(self.finish(e))
            }
            Err(e) => Some(self.finish(Exit {
                reason: ExitReason::Crashed,
                detail: format!("lost track of the process: {e}"),
            })),
        }
    }

    /// SIGTERM, thaw, grace, force, reap, remove.
    fn apoptosis(&mut self, reason: ExitReason, why: &str) -> Exit {
        if let Some(e) = self.reap() {
            return e;
        }
        let pid = Pid::from_raw(self.child.id() as i32);
        self.cg.signal_all(Signal::SIGTERM);
        let _ = kill(pid, Signal::SIGTERM);
        let _ = self.cg.thaw();
        let deadline = Instant::now() + GRACE;
        let how = loop {
            let gone = matches!(self.child.try_wait(), Ok(Some(_)) | Err(_));
            if gone && self.cg.pids().is_empty() {
                break "exited on SIGTERM within the grace period";
            }
            if Instant::now() >= deadline {
                self.cg.kill_all();
                let _ = kill(pid, Signal::SIGKILL);
                break "SIGKILL after the grace period";
            }
            thread::sleep(Duration::from_millis(2));
        };
        let _ = self.child.wait();
        self.finish(Exit {
            reason,
            detail: format!("{why} ({how})"),
        })
    }
}

fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with code {c}"),
        (None, Some(s)) => {
            let name = Signal::try_from(s).map_or("unknown signal", Signal::as_str);
            let core = if status.core_dumped() {
                ", core dumped"
            } else {
                ""
            };
            format!("killed by signal {name} ({s}){core}")
        }
        (None, None) => format!("ended: {status}"),
    }
}

impl Agent for ProcessAgent {
    fn name(&self) -> &str {
        &self.name
    }

    fn resume(&mut self) -> Result<(), SandboxError> {
        if self.reap().is_some() {
            return Err(self.exited_error());
        }
        self.cg.thaw()?;
        self.paused = false;
        Ok(())
    }

    fn pause(&mut self) -> Result<(), SandboxError> {
        if self.reap().is_some() {
            return Err(self.exited_error());
        }
        match self.cg.freeze() {
            Ok(()) => {
                self.paused = true;
                Ok(())
            }
            Err(SandboxError::Io { cause, .. }) if cause.kind() == std::io::ErrorKind::TimedOut => {
                Err(SandboxError::Timeout {
                    name: self.name.clone(),
                    what: "freeze",
                })
            }
            Err(e) => Err(e),
        }
    }

    fn kill(&mut self, reason: &str) -> Exit {
        self.apoptosis(ExitReason::Killed, reason)
    }

    fn usage(&mut self) -> Result<Usage, SandboxError> {
        if self.exit.is_some() {
            return self.residual.take().ok_or_else(|| self.exited_error());
        }
        let cpu = self.cg.cpu_ns()?;
        let resident = self.cg.memory()?;
        self.read_freed()?;
        let erased = self.erased_since(self.last_resident.saturating_sub(resident));
        let u = Usage {
            cpu: Nanos(cpu.saturating_sub(self.last_cpu)),
            resident: Bytes(resident),
            erased: Bytes(erased),
        };
        self.last_cpu = self.last_cpu.max(cpu);
        self.last_resident = resident;
        Ok(u)
    }

    fn mailbox(&self) -> &Mailbox {
        &self.mailbox
    }

    fn syscalls(&mut self) -> Option<Result<CallCounts, SandboxError>> {
        if self.exit.is_some() {
            return self.final_calls.clone().map(Ok);
        }
        self.read_calls()
    }

    fn status(&mut self) -> Status {
        if let Some(e) = self.reap() {
            return Status::Exited(e);
        }
        if let Some(e) = self.denied() {
            return Status::Exited(self.apoptosis(e.reason, &e.detail));
        }
        if self.cg.oom_kills() > 0 {
            return Status::Exited(self.apoptosis(
                ExitReason::MemoryLimit,
                &format!(
                    "a process of the agent was killed by the OOM killer at its memory limit of {} bytes",
                    self.memory_max
                ),
            ));
        }
        if self.paused {
            Status::Paused
        } else {
            Status::Running
        }
    }
}

impl Drop for ProcessAgent {
    fn drop(&mut self) {
        if self.exit.is_none() {
            self.apoptosis(ExitReason::Killed, "dropped by the daemon");
        }
    }
}
