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
//! [`ProcessAgent::kill`] is apoptosis: SIGTERM to every process, thaw, a grace period of
//! [`GRACE`], then `cgroup.kill` (or freeze, SIGKILL each process, thaw), reap, remove the
//! cgroups and the socket. Dropping an agent kills it the same way.
//!
//! Usage: CPU from `cpu.stat`/`cpuacct.usage`; resident memory from
//! `memory.current`/`memory.usage_in_bytes`; erased bytes are estimated as the drop in resident
//! memory since the last call (memory freed). Overwrites in place are not seen; eBPF tracepoints
//! on munmap/madvise/brk will measure them later (DESIGN.md section 7).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use maxwell_agent::{AGENT_ENV, SOCKET_ENV};
use maxwell_core::{Bytes, Nanos, Tokens};

use crate::{
    Agent, AgentSpec, Exit, ExitReason, Mailbox, Message, Program, Sandbox, SandboxError, Status,
    Usage, check_name,
};

mod cgroup;
pub mod testing;
mod wire;

use cgroup::{AgentCgroups, Plan, V2Caps, Via};

/// How long a killed agent has between SIGTERM and SIGKILL.
pub const GRACE: Duration = Duration::from_millis(200);

/// The shell that runs the trampoline.
const SHELL: &str = "/bin/sh";

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
}

impl Drop for Host {
    fn drop(&mut self) {
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
const V2_CONTROLLERS: [&str; 2] = ["memory", "pids"];

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
    let request: String = missing.iter().map(|c| format!("+{c} ")).collect();
    if fs::write(&control, request.trim_end()).is_ok() {
        return;
    }
    let leaf = own.join("maxwell-supervisor");
    if fs::create_dir(&leaf).is_err() && !leaf.is_dir() {
        return;
    }
    for pid in cgroup::procs(own) {
        let _ = fs::write(leaf.join("cgroup.procs"), pid.to_string());
    }
    let _ = fs::write(&control, request.trim_end());
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
        };
        // What a predecessor killed without cleaning up left behind goes first.
        for (own, _) in layout.v2.iter().chain(layout.v1.values()) {
            host.reaped.extend(cgroup::reap_orphans(own));
        }

        // cgroup2: enable what we can, create the parent and see what it offers.
        let mut v2_note = String::new();
        let mut caps = None;
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
        let uses_v2 = [plan.freeze, plan.cpu, plan.memory, plan.pids].contains(&Via::V2);
        if !uses_v2 && let Some(p) = host.v2_parent.take() {
            host.acquired.retain(|a| *a != p);
            cgroup::release_parent(&p);
        }
        for (via, ctl) in [
            (plan.freeze, "freezer"),
            (plan.cpu, "cpuacct"),
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
        host.runtime = Some(runtime_dir()?);
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
            "freeze: {}; kill: {}; cpu: {}; memory: {}; pids: {}",
            at(h.plan.freeze, "freezer"),
            match h.plan.kill {
                Via::V2 => "cgroup.kill".to_string(),
                Via::V1 => "freeze + SIGKILL each process".to_string(),
            },
            at(h.plan.cpu, "cpuacct"),
            at(h.plan.memory, "memory"),
            at(h.plan.pids, "pids"),
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

        let cg = AgentCgroups::new(
            host.plan,
            host.v2_parent.as_deref(),
            &host.v1_parents,
            &spec.name,
        );
        cg.create(spec.limits.memory_max.0, spec.limits.pids_max)?;
        let mailbox = Arc::new(Mailbox::default());
        let endpoint = match wire::Endpoint::start(&socket, &spec.name, mailbox.clone()) {
            Ok(e) => e,
            Err(e) => {
                let _ = cg.remove();
                return Err(e);
            }
        };
        let mut cmd = Command::new(SHELL);
        cmd.arg("-c").arg(TRAMPOLINE).arg("maxwell-join");
        cmd.args(cg.procs_files());
        cmd.arg("--").arg(path).args(args);
        cmd.env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
            )
            .env(SOCKET_ENV, endpoint.path())
            .env(AGENT_ENV, &spec.name)
            .current_dir("/")
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
            cg,
            endpoint,
            mailbox,
            child,
            paused: true,
            exit: None,
            residual: None,
            last_cpu: 0,
            last_resident: 0,
            _host: self.host.clone(),
        })
    }
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
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
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

    fn spawn(&self, spec: &AgentSpec) -> Result<Box<dyn Agent>, SandboxError> {
        Ok(Box::new(self.spawn_process(spec)?))
    }
}

/// A native agent in its cgroups.
#[derive(Debug)]
pub struct ProcessAgent {
    name: String,
    memory_max: u64,
    cg: AgentCgroups,
    endpoint: wire::Endpoint,
    mailbox: Arc<Mailbox>,
    child: Child,
    paused: bool,
    exit: Option<Exit>,
    residual: Option<Usage>,
    last_cpu: u64,
    last_resident: u64,
    _host: Arc<Host>,
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

    /// Frees everything once the first process is gone.
    fn finish(&mut self, exit: Exit) -> Exit {
        let cpu = self.cg.cpu_ns().unwrap_or(self.last_cpu);
        self.cg.kill_all();
        self.endpoint.stop();
        let mut exit = exit;
        if let Err(e) = self.cg.remove() {
            let _ = write!(exit.detail, "; {e}");
        }
        self.residual = Some(Usage {
            cpu: Nanos(cpu.saturating_sub(self.last_cpu)),
            resident: Bytes(0),
            erased: Bytes(self.last_resident),
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
            Err(SandboxError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::TimedOut =>
            {
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
        let u = Usage {
            cpu: Nanos(cpu.saturating_sub(self.last_cpu)),
            resident: Bytes(resident),
            erased: Bytes(self.last_resident.saturating_sub(resident)),
        };
        self.last_cpu = self.last_cpu.max(cpu);
        self.last_resident = resident;
        Ok(u)
    }

    fn drain(&mut self) -> Vec<Message> {
        self.mailbox.drain()
    }

    fn inform(&self, balance: Tokens, price: Tokens) {
        self.mailbox.inform(balance, price);
    }

    fn mailbox(&self) -> &Mailbox {
        &self.mailbox
    }

    fn status(&mut self) -> Status {
        if let Some(e) = self.reap() {
            return Status::Exited(e);
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
