//! Support for tests that spawn process agents (this crate's, the agents', the daemon's): the
//! root-or-skip rule and a leak check. Not for production use.
//!
//! Tests of the process backend need root and cgroups. Without them [`sandbox_or_skip`] prints a
//! skip line and returns `None`, unless `MAXWELL_REQUIRE_ROOT_TESTS=1` (CI sets it as root), when
//! it panics. After a test, [`Leaks::check`] asserts that no process of the test is alive and no
//! cgroup directory is left.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use super::{ProcessAgent, ProcessConfig, ProcessSandbox};

/// Process-backend tests in one binary run one at a time: they share the `maxwell-<pid>` parent
/// cgroups, whose removal each test checks.
static LOCK: Mutex<()> = Mutex::new(());

/// True when `MAXWELL_REQUIRE_ROOT_TESTS=1`: a missing backend is then a failure, not a skip.
pub fn required() -> bool {
    std::env::var("MAXWELL_REQUIRE_ROOT_TESTS").as_deref() == Ok("1")
}

/// The sandbox and the test lock, or `None` with a skip line where the backend cannot run.
///
/// # Panics
/// When the backend cannot run and [`required`] says it must.
pub fn sandbox_or_skip(config: ProcessConfig) -> Option<(MutexGuard<'static, ()>, ProcessSandbox)> {
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    match ProcessSandbox::with_config(config) {
        Ok(s) => Some((guard, s)),
        Err(e) if !required() => {
            // Straight to stderr, past the test harness's capture, so the skip is seen.
            let _ = writeln!(
                std::io::stderr(),
                "SKIP: the process backend is unavailable here: {e}"
            );
            None
        }
        Err(e) => {
            panic!("MAXWELL_REQUIRE_ROOT_TESTS=1 but the process backend is unavailable: {e}")
        }
    }
}

/// Whether `pid` is a live process. A zombie is dead: it only waits for its parent (init, for
/// orphans) to reap it.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// The processes in a cgroup directory (`cgroup.procs`; none if it is gone).
pub fn procs_of(dir: &std::path::Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Remembers every process and cgroup of a test's agents, to check that none is left.
#[derive(Debug, Default)]
pub struct Leaks {
    /// Processes seen.
    pub pids: BTreeSet<i32>,
    /// Cgroup directories seen.
    pub dirs: BTreeSet<PathBuf>,
}

impl Leaks {
    /// Remembers an agent's processes and cgroups (call while it runs, and again later to catch
    /// children it forked).
    pub fn watch(&mut self, a: &ProcessAgent) {
        self.pids.insert(a.pid() as i32);
        self.pids.extend(a.pids());
        self.dirs.extend(a.cgroups().iter().cloned());
    }

    /// Remembers the sandbox's `maxwell-<pid>` parent cgroups.
    pub fn parents(&mut self, s: &ProcessSandbox) {
        self.dirs.extend(s.parent_cgroups());
    }

    /// Asserts that nothing remembered is left. Call once every agent and the sandbox are
    /// dropped.
    ///
    /// # Panics
    /// When a process is alive or a cgroup directory exists, or nothing was watched.
    pub fn check(&self) {
        for &pid in &self.pids {
            assert!(!alive(pid), "process {pid} of the test is still alive");
        }
        for d in &self.dirs {
            assert!(!d.exists(), "cgroup {} was left behind", d.display());
        }
        assert!(!self.dirs.is_empty(), "the leak check watched nothing");
    }
}
