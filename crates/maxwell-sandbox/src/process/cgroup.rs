//! Cgroups: where the hierarchies are, which one serves each function, and the agent's cgroups.
//!
//! Detection reads `/proc/self/mountinfo` (every `cgroup` and `cgroup2` mount, with its root and
//! for v1 the controllers in its super options) and `/proc/self/cgroup` (the daemon's own cgroup
//! in each hierarchy), and joins the two: the daemon's directory in a hierarchy is the mount
//! point plus its cgroup path relative to the mount's root. Nothing is hard-coded.
//!
//! Each function is served separately, cgroup2 first where it offers it:
//!
//! | function | cgroup2                       | cgroup v1                                |
//! |----------|-------------------------------|------------------------------------------|
//! | freeze   | `cgroup.freeze`               | `freezer.state` (`FROZEN`/`THAWED`)      |
//! | kill     | `cgroup.kill`                 | freeze, SIGKILL each of `cgroup.procs`, thaw |
//! | cpu      | `cpu.stat` `usage_usec`       | `cpuacct.usage`                          |
//! | memory   | `memory.current`, `memory.max`| `memory.usage_in_bytes`, `memory.limit_in_bytes` |
//! | pids     | `pids.max`                    | `pids.max`                               |
//! | one CPU  | `cpu.max`                     | `cpu.cfs_quota_us` / `cpu.cfs_period_us` |
//!
//! The CPU limit (a slot is one CPU, however many processes the agent runs) is used wherever
//! the `cpu` controller is available; without it the backend still runs and says so.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::SandboxError;

/// Which cgroup version serves a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    /// cgroup2.
    V2,
    /// A v1 hierarchy.
    V1,
}

/// One cgroup mount from mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mount {
    /// The path inside the hierarchy that the mount shows (field 4).
    pub root: String,
    /// Where it is mounted.
    pub mountpoint: PathBuf,
    /// `None` for cgroup2; the controllers for v1.
    pub controllers: Option<Vec<String>>,
}

fn unescape(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup mounts in a mountinfo text.
pub(crate) fn parse_mountinfo(text: &str) -> Vec<Mount> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        if left.len() < 5 || right.len() < 3 {
            continue;
        }
        let (root, mountpoint) = (unescape(left[3]), PathBuf::from(unescape(left[4])));
        match right[0] {
            "cgroup2" => out.push(Mount {
                root,
                mountpoint,
                controllers: None,
            }),
            "cgroup" => {
                let controllers = right[2]
                    .split(',')
                    .filter(|o| {
                        !matches!(*o, "rw" | "ro" | "none" | "xattr" | "noprefix")
                            && !o.starts_with("name=")
                            && !o.starts_with("release_agent=")
                            && *o != "clone_children"
                            && *o != "cpuset_v2_mode"
                    })
                    .map(str::to_string)
                    .collect();
                out.push(Mount {
                    root,
                    mountpoint,
                    controllers: Some(controllers),
                });
            }
            _ => {}
        }
    }
    out
}

/// The daemon's cgroups from `/proc/self/cgroup`: the v2 path and each v1 controller's path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct OwnCgroups {
    /// The path in the cgroup2 hierarchy (`0::/path`).
    pub v2: Option<String>,
    /// Controller name to path, for v1 hierarchies.
    pub v1: BTreeMap<String, String>,
}

/// Parses `/proc/self/cgroup`.
pub(crate) fn parse_proc_cgroup(text: &str) -> OwnCgroups {
    let mut own = OwnCgroups::default();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            own.v2 = Some(path.to_string());
        } else {
            for c in controllers.split(',').filter(|c| !c.is_empty()) {
                own.v1.insert(c.to_string(), path.to_string());
            }
        }
    }
    own
}

/// The directory of cgroup `path` under a mount showing `root`, if the mount shows it.
fn join(mount: &Mount, path: &str) -> Option<PathBuf> {
    let root = mount.root.trim_end_matches('/');
    let rest = path.strip_prefix(root)?;
    if !rest.is_empty() && !rest.starts_with('/') {
        return None;
    }
    let rest = rest.trim_start_matches('/');
    if rest.split('/').any(|c| c == "..") {
        return None;
    }
    Some(if rest.is_empty() {
        mount.mountpoint.clone()
    } else {
        mount.mountpoint.join(rest)
    })
}

/// The daemon's own directory in each hierarchy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Layout {
    /// In the cgroup2 hierarchy, and whether the daemon is at its root.
    pub v2: Option<(PathBuf, bool)>,
    /// For each v1 controller we use: the directory, and whether it is the hierarchy's root.
    pub v1: BTreeMap<&'static str, (PathBuf, bool)>,
}

/// The v1 controllers the backend can use.
pub(crate) const V1_CONTROLLERS: [&str; 5] = ["freezer", "cpuacct", "cpu", "memory", "pids"];

/// Joins mountinfo and `/proc/self/cgroup` into the daemon's directories.
pub(crate) fn layout(mountinfo: &str, proc_cgroup: &str) -> Layout {
    let mounts = parse_mountinfo(mountinfo);
    let own = parse_proc_cgroup(proc_cgroup);
    let mut out = Layout::default();
    if let Some(path) = &own.v2 {
        out.v2 = mounts
            .iter()
            .filter(|m| m.controllers.is_none())
            .find_map(|m| join(m, path))
            .map(|d| (d, path.trim_end_matches('/').is_empty()));
    }
    for c in V1_CONTROLLERS {
        let Some(path) = own.v1.get(c) else { continue };
        let dir = mounts
            .iter()
            .filter(|m| {
                m.controllers
                    .as_ref()
                    .is_some_and(|cs| cs.iter().any(|x| x == c))
            })
            .find_map(|m| join(m, path));
        if let Some(d) = dir {
            out.v1.insert(c, (d, path.trim_end_matches('/').is_empty()));
        }
    }
    out
}

/// What the cgroup2 hierarchy offers for agents (probed on the parent cgroup).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct V2Caps {
    /// `cgroup.freeze` exists (Linux 5.2+).
    pub freeze: bool,
    /// `cgroup.kill` exists (Linux 5.14+).
    pub kill: bool,
    /// `cpu.stat` exists (always, in non-root cgroups).
    pub cpu: bool,
    /// The memory controller is enabled for the agents.
    pub memory: bool,
    /// The pids controller is enabled for the agents.
    pub pids: bool,
}

/// Which version serves each function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Freezing.
    pub freeze: Via,
    /// Killing everything: V2 is `cgroup.kill`, V1 is freeze + signals.
    pub kill: Via,
    /// CPU time.
    pub cpu: Via,
    /// Memory.
    pub memory: Via,
    /// Process count.
    pub pids: Via,
}

/// Picks, per function, cgroup2 if it offers it, else v1 if the controller is bound there
/// (`prefer_v1` reverses the order, to exercise v1 on hybrid hosts). Names what is missing.
pub(crate) fn choose(
    v2: Option<V2Caps>,
    v1: &BTreeSet<&str>,
    prefer_v1: bool,
) -> Result<Plan, Vec<&'static str>> {
    let caps = v2.unwrap_or_default();
    let mut missing = Vec::new();
    let mut pick = |v2_has: bool, ctl: &str, what: &'static str| {
        let v1_has = v1.contains(ctl);
        match (v2_has, v1_has, prefer_v1) {
            (true, false, _) | (true, true, false) => Via::V2,
            (_, true, _) => Via::V1,
            (false, false, _) => {
                missing.push(what);
                Via::V2
            }
        }
    };
    let freeze = pick(
        caps.freeze,
        "freezer",
        "a freezer (cgroup2 cgroup.freeze, Linux 5.2+, or the v1 freezer controller)",
    );
    let cpu = pick(
        caps.cpu,
        "cpuacct",
        "CPU accounting (cgroup2 cpu.stat or the v1 cpuacct controller)",
    );
    let memory = pick(
        caps.memory,
        "memory",
        "the memory controller (enabled in cgroup2's cgroup.subtree_control, or bound to v1)",
    );
    let pids = pick(
        caps.pids,
        "pids",
        "the pids controller (enabled in cgroup2's cgroup.subtree_control, or bound to v1)",
    );
    if !missing.is_empty() {
        return Err(missing);
    }
    let kill = if caps.kill && freeze == Via::V2 && !prefer_v1 {
        Via::V2
    } else {
        Via::V1
    };
    Ok(Plan {
        freeze,
        kill,
        cpu,
        memory,
        pids,
    })
}

pub(crate) fn read(path: &Path) -> Result<String, SandboxError> {
    fs::read_to_string(path).map_err(|e| SandboxError::io(format!("reading {}", path.display()), e))
}

pub(crate) fn write(path: &Path, value: &str) -> Result<(), SandboxError> {
    fs::write(path, value)
        .map_err(|e| SandboxError::io(format!("writing {value:?} to {}", path.display()), e))
}

/// A `key value` line's value from a flat-keyed file (`cpu.stat`, `memory.events`, ...).
pub(crate) fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        if k == key {
            v.trim().parse().ok()
        } else {
            None
        }
    })
}

/// Parent cgroups (`<own>/maxwell-<pid>`) are shared by every sandbox of the process: each is
/// created by the first and removed by the last.
static PARENTS: Mutex<BTreeMap<PathBuf, usize>> = Mutex::new(BTreeMap::new());

/// Takes a reference on a parent cgroup, creating it if needed.
pub(crate) fn acquire_parent(dir: &Path) -> Result<(), SandboxError> {
    let mut parents = PARENTS
        .lock()
        .map_err(|_| SandboxError::Unavailable("cgroup registry poisoned".into()))?;
    let count = parents.entry(dir.to_path_buf()).or_insert(0);
    if *count == 0 {
        match fs::create_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                parents.remove(dir);
                return Err(SandboxError::io(
                    format!("creating cgroup {}", dir.display()),
                    e,
                ));
            }
        }
    }
    *count += 1;
    Ok(())
}

/// Drops a reference on a parent cgroup; the last one removes it.
pub(crate) fn release_parent(dir: &Path) {
    let Ok(mut parents) = PARENTS.lock() else {
        return;
    };
    let Some(count) = parents.get_mut(dir) else {
        return;
    };
    *count -= 1;
    if *count == 0 {
        parents.remove(dir);
        let _ = remove_dir(dir);
    }
}

/// Removes a cgroup directory, retrying while its last processes finish exiting.
pub(crate) fn remove_dir(dir: &Path) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Reaps what a Maxwell that died without cleaning up (SIGKILL, a crash) left in `own`: every
/// `maxwell-<pid>` directory whose process is gone has its agents' processes killed (thawed
/// first: a v1-frozen task takes SIGKILL only once thawed) and its directories removed. A
/// directory whose pid is alive is left alone, whoever holds the pid now. Returns a line per
/// parent reaped.
pub(crate) fn reap_orphans(own: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(own) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("maxwell-")
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let parent = e.path();
        // The daemon's watchdog froze the whole parent when the daemon died: thaw it, or the
        // kills below would wait (a v1-frozen task takes SIGKILL only once thawed).
        let _ = fs::write(parent.join("freezer.state"), "THAWED");
        let _ = fs::write(parent.join("cgroup.freeze"), "0");
        let agents: Vec<PathBuf> = fs::read_dir(&parent)
            .into_iter()
            .flatten()
            .flatten()
            .map(|c| c.path())
            .filter(|c| c.is_dir())
            .collect();
        let mut killed = 0;
        for dir in &agents {
            let _ = fs::write(dir.join("freezer.state"), "THAWED");
            let _ = fs::write(dir.join("cgroup.freeze"), "0");
            for p in procs(dir) {
                if kill(Pid::from_raw(p), Signal::SIGKILL).is_ok() {
                    killed += 1;
                }
            }
            let _ = fs::write(dir.join("cgroup.kill"), "1");
            let _ = remove_dir(dir);
        }
        let _ = remove_dir(&parent);
        out.push(format!(
            "{}: {} agent cgroups, {killed} processes killed",
            parent.display(),
            agents.len()
        ));
    }
    out
}

/// The pids in a `cgroup.procs` file (empty if it cannot be read).
pub(crate) fn procs(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// How long a freeze may take before it is reported as a timeout.
pub(crate) const FREEZE_TIMEOUT: Duration = Duration::from_secs(2);

/// One agent's cgroups.
#[derive(Debug)]
pub(crate) struct AgentCgroups {
    /// Every directory, each once, the freezer's last (the order the child joins them).
    pub dirs: Vec<PathBuf>,
    pub plan: Plan,
    pub v2: Option<PathBuf>,
    pub v1: BTreeMap<&'static str, PathBuf>,
    /// Where the one-CPU limit is set, if anywhere.
    pub cpu_limit: Option<Via>,
}

/// The CPU bandwidth of one slot: one CPU's worth of every period (10 ms, the daemon's
/// quantum, so a many-process agent cannot burst past one CPU within a slot either).
pub(crate) const CPU_PERIOD_US: u64 = 10_000;

impl AgentCgroups {
    /// The directories of an agent named `name` under the given parents.
    pub(crate) fn new(
        plan: Plan,
        v2_parent: Option<&Path>,
        v1_parents: &BTreeMap<&'static str, PathBuf>,
        name: &str,
    ) -> AgentCgroups {
        let v2 = v2_parent.map(|p| p.join(name));
        let v1: BTreeMap<&'static str, PathBuf> =
            v1_parents.iter().map(|(c, p)| (*c, p.join(name))).collect();
        let freezer = match plan.freeze {
            Via::V2 => v2.clone(),
            Via::V1 => v1.get("freezer").cloned(),
        };
        let mut dirs: Vec<PathBuf> = Vec::new();
        for d in v2.iter().chain(v1.values()) {
            if Some(d) != freezer.as_ref() && !dirs.contains(d) {
                dirs.push(d.clone());
            }
        }
        dirs.extend(freezer);
        AgentCgroups {
            dirs,
            plan,
            v2,
            v1,
            cpu_limit: None,
        }
    }

    fn dir(&self, via: Via, v1_controller: &str) -> Result<&Path, SandboxError> {
        match via {
            Via::V2 => self.v2.as_deref(),
            Via::V1 => self.v1.get(v1_controller).map(PathBuf::as_path),
        }
        .ok_or_else(|| SandboxError::Unavailable(format!("no cgroup for {v1_controller}")))
    }

    /// The freezer's directory (every process of the agent is in it once started).
    pub(crate) fn freezer_dir(&self) -> Result<&Path, SandboxError> {
        self.dir(self.plan.freeze, "freezer")
    }

    /// Creates the directories, sets the limits and freezes the (still empty) freezer cgroup.
    /// On failure removes what it created.
    pub(crate) fn create(&self, memory_max: u64, pids_max: u32) -> Result<(), SandboxError> {
        for (i, d) in self.dirs.iter().enumerate() {
            if let Err(e) = fs::create_dir(d) {
                for made in self.dirs[..i].iter().rev() {
                    let _ = remove_dir(made);
                }
                return Err(if e.kind() == io::ErrorKind::AlreadyExists {
                    SandboxError::InvalidSpec(format!(
                        "cgroup {} already exists: agent names must be unique on this host",
                        d.display()
                    ))
                } else {
                    SandboxError::io(format!("creating cgroup {}", d.display()), e)
                });
            }
        }
        let configured = self.configure(memory_max, pids_max);
        if configured.is_err() {
            let _ = self.remove();
        }
        configured
    }

    fn configure(&self, memory_max: u64, pids_max: u32) -> Result<(), SandboxError> {
        let mem = self.dir(self.plan.memory, "memory")?;
        match self.plan.memory {
            Via::V2 => {
                write(&mem.join("memory.max"), &memory_max.to_string())?;
                // No swap to hide in, and an OOM kill takes the whole agent.
                let _ = fs::write(mem.join("memory.swap.max"), "0");
                let _ = fs::write(mem.join("memory.oom.group"), "1");
            }
            Via::V1 => {
                write(&mem.join("memory.limit_in_bytes"), &memory_max.to_string())?;
                let _ = fs::write(
                    mem.join("memory.memsw.limit_in_bytes"),
                    memory_max.to_string(),
                );
                let _ = fs::write(mem.join("memory.swappiness"), "0");
            }
        }
        write(
            &self.dir(self.plan.pids, "pids")?.join("pids.max"),
            &pids_max.to_string(),
        )?;
        match self.cpu_limit {
            Some(Via::V2) => write(
                &self.dir(Via::V2, "cpu")?.join("cpu.max"),
                &format!("{CPU_PERIOD_US} {CPU_PERIOD_US}"),
            )?,
            Some(Via::V1) => {
                let d = self.dir(Via::V1, "cpu")?;
                write(&d.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                write(&d.join("cpu.cfs_quota_us"), &CPU_PERIOD_US.to_string())?;
            }
            None => {}
        }
        self.freeze()
    }

    /// The `cgroup.procs` files the child writes itself into, freezer last.
    pub(crate) fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Freezes and waits until every process is frozen.
    pub(crate) fn freeze(&self) -> Result<(), SandboxError> {
        let dir = self.freezer_dir()?;
        let deadline = Instant::now() + FREEZE_TIMEOUT;
        match self.plan.freeze {
            Via::V2 => {
                write(&dir.join("cgroup.freeze"), "1")?;
                let events = dir.join("cgroup.events");
                loop {
                    if keyed(&read(&events)?, "frozen") == Some(1) {
                        return Ok(());
                    }
                    if Instant::now() > deadline {
                        return Err(timeout(dir));
                    }
                    thread::sleep(Duration::from_micros(50));
                }
            }
            Via::V1 => {
                let state = dir.join("freezer.state");
                write(&state, "FROZEN")?;
                loop {
                    if read(&state)?.trim() == "FROZEN" {
                        return Ok(());
                    }
                    if Instant::now() > deadline {
                        return Err(timeout(dir));
                    }
                    thread::sleep(Duration::from_micros(50));
                    // A task can miss the first request; asking again is harmless.
                    write(&state, "FROZEN")?;
                }
            }
        }
    }

    /// Thaws.
    pub(crate) fn thaw(&self) -> Result<(), SandboxError> {
        let dir = self.freezer_dir()?;
        match self.plan.freeze {
            Via::V2 => write(&dir.join("cgroup.freeze"), "0"),
            Via::V1 => write(&dir.join("freezer.state"), "THAWED"),
        }
    }

    /// Total CPU time in nanoseconds.
    pub(crate) fn cpu_ns(&self) -> Result<u64, SandboxError> {
        match self.plan.cpu {
            Via::V2 => {
                let text = read(&self.dir(Via::V2, "cpuacct")?.join("cpu.stat"))?;
                Ok(keyed(&text, "usage_usec").unwrap_or(0).saturating_mul(1000))
            }
            Via::V1 => Ok(read(&self.dir(Via::V1, "cpuacct")?.join("cpuacct.usage"))?
                .trim()
                .parse()
                .unwrap_or(0)),
        }
    }

    /// Memory charged now, in bytes.
    pub(crate) fn memory(&self) -> Result<u64, SandboxError> {
        let dir = self.dir(self.plan.memory, "memory")?;
        let file = match self.plan.memory {
            Via::V2 => "memory.current",
            Via::V1 => "memory.usage_in_bytes",
        };
        Ok(read(&dir.join(file))?.trim().parse().unwrap_or(0))
    }

    /// OOM kills in the agent's memory cgroup so far.
    pub(crate) fn oom_kills(&self) -> u64 {
        let Ok(dir) = self.dir(self.plan.memory, "memory") else {
            return 0;
        };
        let file = match self.plan.memory {
            Via::V2 => "memory.events",
            Via::V1 => "memory.oom_control",
        };
        fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|t| keyed(&t, "oom_kill"))
            .unwrap_or(0)
    }

    /// Every process of the agent (the union over its cgroups).
    pub(crate) fn pids(&self) -> Vec<i32> {
        let mut all = BTreeSet::new();
        for d in &self.dirs {
            all.extend(procs(d));
        }
        all.into_iter().collect()
    }

    /// Sends a signal to every process of the agent.
    pub(crate) fn signal_all(&self, signal: Signal) {
        for pid in self.pids() {
            let _ = kill(Pid::from_raw(pid), signal);
        }
    }

    /// Kills every process: `cgroup.kill`, or freeze, SIGKILL each, thaw. Waits (briefly) until
    /// the cgroups are empty.
    pub(crate) fn kill_all(&self) {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match self.plan.kill {
                Via::V2 => {
                    if let Ok(dir) = self.freezer_dir() {
                        let _ = fs::write(dir.join("cgroup.kill"), "1");
                    }
                    // Processes of the other hierarchies that are not (yet) in the v2 one.
                    self.signal_all(Signal::SIGKILL);
                }
                Via::V1 => {
                    // Frozen, nobody can fork while we kill; the signals land on thaw.
                    let _ = self.freeze();
                    self.signal_all(Signal::SIGKILL);
                    let _ = self.thaw();
                }
            }
            if self.pids().is_empty() || Instant::now() > deadline {
                return;
            }
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// Removes the directories (after [`AgentCgroups::kill_all`]).
    pub(crate) fn remove(&self) -> Result<(), SandboxError> {
        let mut first_error = None;
        for d in self.dirs.iter().rev() {
            if let Err(e) = remove_dir(d) {
                first_error.get_or_insert(SandboxError::io(
                    format!("removing cgroup {}", d.display()),
                    e,
                ));
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

fn timeout(dir: &Path) -> SandboxError {
    SandboxError::Io {
        context: format!("freezing {}", dir.display()),
        cause: io::Error::new(
            io::ErrorKind::TimedOut,
            format!("not frozen after {FREEZE_TIMEOUT:?}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine: controllers bound to v1, a cgroup2 tree at /sys/fs/cgroup/unified with
    /// only freeze, kill and cpu.stat, the daemon nested in the memory hierarchy.
    const HYBRID_MOUNTINFO: &str = "\
22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:5 - proc proc rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const HYBRID_CGROUP: &str = "\
9:name=systemd:/
8:pids:/
7:blkio:/
6:freezer:/
5:devices:/
4:memory:/process_api/6f6af9023ac97b49544a05ded76fda81
3:cpuset:/
2:cpuacct:/
1:cpu:/
0::/
";

    /// A systemd host: pure cgroup2, the daemon in a service cgroup, co-mounted v1 names absent.
    const PURE_V2_MOUNTINFO: &str = "\
25 22 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";
    const PURE_V2_CGROUP: &str = "0::/system.slice/maxwell.service\n";

    #[test]
    fn hybrid_layout_joins_mounts_and_own_cgroups() {
        let l = layout(HYBRID_MOUNTINFO, HYBRID_CGROUP);
        assert_eq!(l.v2, Some((PathBuf::from("/sys/fs/cgroup/unified"), true)));
        assert_eq!(
            l.v1["freezer"],
            (PathBuf::from("/sys/fs/cgroup/freezer"), true)
        );
        assert_eq!(
            l.v1["cpuacct"],
            (PathBuf::from("/sys/fs/cgroup/cpuacct"), true)
        );
        assert_eq!(
            l.v1["memory"],
            (
                PathBuf::from("/sys/fs/cgroup/memory/process_api/6f6af9023ac97b49544a05ded76fda81"),
                false
            )
        );
        assert_eq!(l.v1["pids"], (PathBuf::from("/sys/fs/cgroup/pids"), true));
        // `cpu` (for the one-CPU limit) sits in the same hierarchy as `cpuacct` here.
        assert!(l.v1.contains_key("cpu"), "{:?}", l.v1);
        assert_eq!(l.v1.len(), 5);
    }

    #[test]
    fn pure_v2_layout() {
        let l = layout(PURE_V2_MOUNTINFO, PURE_V2_CGROUP);
        assert_eq!(
            l.v2,
            Some((
                PathBuf::from("/sys/fs/cgroup/system.slice/maxwell.service"),
                false
            ))
        );
        assert!(l.v1.is_empty());
    }

    #[test]
    fn comounted_v1_and_bind_mounted_roots() {
        let mi = "\
1 0 0:1 / /cg/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
2 0 0:2 /docker/abc /cg/mem rw - cgroup cgroup rw,memory
3 0 0:3 /other /cg/pids rw - cgroup cgroup rw,pids
4 0 0:4 /docker/abc /cg/un\\040ified rw - cgroup2 cgroup2 rw
";
        let pc = "\
3:cpu,cpuacct:/docker/abc
2:memory:/docker/abc/inner
1:pids:/docker/abc
0::/docker/abc
";
        let l = layout(mi, pc);
        assert_eq!(
            l.v1["cpuacct"].0,
            PathBuf::from("/cg/cpu,cpuacct/docker/abc")
        );
        assert_eq!(l.v1["memory"].0, PathBuf::from("/cg/mem/inner"));
        // The pids mount shows another subtree: unusable.
        assert!(!l.v1.contains_key("pids"));
        assert_eq!(l.v2, Some((PathBuf::from("/cg/un ified"), false)));
        // A root that is a prefix only as a string is not a parent.
        let m = Mount {
            root: "/doc".into(),
            mountpoint: "/m".into(),
            controllers: None,
        };
        assert_eq!(join(&m, "/docker"), None);
        assert_eq!(join(&m, "/doc/x"), Some(PathBuf::from("/m/x")));
        assert_eq!(join(&m, "/doc"), Some(PathBuf::from("/m")));
    }

    #[test]
    fn v1_super_options_name_controllers() {
        let m = parse_mountinfo(
            "5 1 0:5 / /x rw - cgroup cgroup rw,nosuid,xattr,name=systemd\n\
             6 1 0:6 / /y rw - cgroup cgroup rw,clone_children,cpuset\n",
        );
        let c0 = m[0].controllers.clone().unwrap_or_default();
        assert!(
            !c0.iter().any(|c| c.contains("systemd") || c == "xattr"),
            "{c0:?}"
        );
        assert_eq!(
            m[1].controllers.as_deref(),
            Some(&["cpuset".to_string()][..])
        );
    }

    #[test]
    fn plan_on_this_hybrid_host() {
        // The unified tree: freeze, kill, cpu.stat, no memory or pids.
        let caps = V2Caps {
            freeze: true,
            kill: true,
            cpu: true,
            memory: false,
            pids: false,
        };
        let v1: BTreeSet<&str> = ["freezer", "cpuacct", "memory", "pids"].into();
        let p = choose(Some(caps), &v1, false).unwrap();
        assert_eq!(
            p,
            Plan {
                freeze: Via::V2,
                kill: Via::V2,
                cpu: Via::V2,
                memory: Via::V1,
                pids: Via::V1
            }
        );
        let p = choose(Some(caps), &v1, true).unwrap();
        assert_eq!(
            p,
            Plan {
                freeze: Via::V1,
                kill: Via::V1,
                cpu: Via::V1,
                memory: Via::V1,
                pids: Via::V1
            }
        );
    }

    #[test]
    fn plan_on_pure_v2_and_old_kernels() {
        let all = V2Caps {
            freeze: true,
            kill: true,
            cpu: true,
            memory: true,
            pids: true,
        };
        let none = BTreeSet::new();
        let p = choose(Some(all), &none, false).unwrap();
        assert!(
            [p.freeze, p.kill, p.cpu, p.memory, p.pids]
                .iter()
                .all(|v| *v == Via::V2)
        );
        // Linux 5.2..5.14: freeze but no cgroup.kill.
        let p = choose(Some(V2Caps { kill: false, ..all }), &none, false).unwrap();
        assert_eq!((p.freeze, p.kill), (Via::V2, Via::V1));
        // No memory controller anywhere: refused, naming it.
        let missing = choose(
            Some(V2Caps {
                memory: false,
                ..all
            }),
            &none,
            false,
        )
        .unwrap_err();
        assert_eq!(missing.len(), 1);
        assert!(missing[0].contains("memory"));
        // No cgroups at all.
        assert_eq!(choose(None, &none, false).unwrap_err().len(), 4);
    }

    #[test]
    fn agent_dirs_put_the_freezer_last_and_dedupe() {
        let plan = Plan {
            freeze: Via::V2,
            kill: Via::V2,
            cpu: Via::V2,
            memory: Via::V1,
            pids: Via::V1,
        };
        let v1: BTreeMap<&'static str, PathBuf> = [
            ("memory", PathBuf::from("/m/maxwell-1")),
            ("pids", PathBuf::from("/p/maxwell-1")),
        ]
        .into();
        let a = AgentCgroups::new(plan, Some(Path::new("/u/maxwell-1")), &v1, "sci");
        assert_eq!(
            a.dirs,
            [
                PathBuf::from("/m/maxwell-1/sci"),
                PathBuf::from("/p/maxwell-1/sci"),
                PathBuf::from("/u/maxwell-1/sci")
            ]
        );
        assert_eq!(
            a.procs_files()[2],
            PathBuf::from("/u/maxwell-1/sci/cgroup.procs")
        );
    }

    #[test]
    fn keyed_files() {
        let t = "usage_usec 1234\nuser_usec 1000\nsystem_usec 234\n";
        assert_eq!(keyed(t, "usage_usec"), Some(1234));
        assert_eq!(
            keyed("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n", "oom_kill"),
            Some(2)
        );
        assert_eq!(keyed(t, "nope"), None);
    }
}
