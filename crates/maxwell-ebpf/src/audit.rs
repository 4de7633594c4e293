//! Syscalls by name, number and class, and the deny set an agent's spec may carry. No BPF here:
//! the daemon parses and reports with this on any machine; [`crate::Probes`] enforces it where
//! the programs load.
//!
//! Numbers are x86-64's (the table of the `syscalls` crate). The kernel map counts numbers 0 to
//! [`SYSCALLS`]` - 2` one by one; the last bucket, [`OTHER`], gathers what cannot be told apart
//! by number: 32-bit calls (`int 0x80`, whose numbers are the i386 table's), x32 calls and
//! numbers beyond the table. An agent with a deny list may make none of those: they would let a
//! forbidden call through under another number.

use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};
use syscalls::x86_64::Sysno;

/// Syscall numbers the kernel map counts (its last bucket is "other").
pub const SYSCALLS: usize = 512;

/// The bucket of 32-bit calls, x32 calls and numbers beyond the table.
pub const OTHER: usize = SYSCALLS - 1;

/// What a syscall is for, in a few classes a reader can compare across agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// mmap, munmap, brk, madvise, mprotect, mremap...
    Memory,
    /// open, read, write, stat, close...
    File,
    /// socket, connect, sendmsg...
    Network,
    /// clone, fork, execve, exit, wait, kill, prctl, setuid...
    Process,
    /// futex, poll, epoll, select, eventfd, pipes.
    Sync,
    /// clock_gettime, nanosleep, timers.
    Time,
    /// mount, ptrace, bpf, module loading, reboot, namespaces: what an agent has no business doing.
    Privileged,
    /// Everything else.
    Other,
}

impl Class {
    /// Every class, in order.
    pub const ALL: [Class; 8] = [
        Class::Memory,
        Class::File,
        Class::Network,
        Class::Process,
        Class::Sync,
        Class::Time,
        Class::Privileged,
        Class::Other,
    ];

    /// The label used in the API and in `/metrics`.
    pub fn label(self) -> &'static str {
        match self {
            Class::Memory => "memory",
            Class::File => "file",
            Class::Network => "network",
            Class::Process => "process",
            Class::Sync => "sync",
            Class::Time => "time",
            Class::Privileged => "privileged",
            Class::Other => "other",
        }
    }

    /// The class of syscall number `nr`.
    pub fn of(nr: usize) -> Class {
        match i32::try_from(nr).ok().and_then(|n| Sysno::new(n as usize)) {
            Some(s) => class_of_name(s.name()),
            None => Class::Other,
        }
    }
}

fn class_of_name(name: &str) -> Class {
    const PRIVILEGED: &[&str] = &[
        "mount",
        "umount2",
        "move_mount",
        "fsmount",
        "fsopen",
        "fsconfig",
        "fspick",
        "open_tree",
        "mount_setattr",
        "pivot_root",
        "chroot",
        "ptrace",
        "process_vm_readv",
        "process_vm_writev",
        "bpf",
        "perf_event_open",
        "init_module",
        "finit_module",
        "delete_module",
        "kexec_load",
        "kexec_file_load",
        "reboot",
        "swapon",
        "swapoff",
        "setns",
        "unshare",
        "iopl",
        "ioperm",
        "acct",
        "settimeofday",
        "clock_settime",
        "adjtimex",
        "clock_adjtime",
        "sethostname",
        "setdomainname",
        "quotactl",
        "lookup_dcookie",
        "add_key",
        "request_key",
        "keyctl",
        "userfaultfd",
        "vhangup",
        "syslog",
        "_sysctl",
    ];
    if PRIVILEGED.contains(&name) {
        return Class::Privileged;
    }
    let has = |parts: &[&str]| parts.iter().any(|p| name.contains(p));
    if has(&[
        "mmap",
        "munmap",
        "brk",
        "madvise",
        "mprotect",
        "mremap",
        "mlock",
        "munlock",
        "msync",
        "mincore",
        "mbind",
        "mempolicy",
        "migrate_pages",
        "move_pages",
        "memfd",
        "pkey",
        "mseal",
        "map_shadow_stack",
        "membarrier",
        "remap_file_pages",
    ]) {
        return Class::Memory;
    }
    if has(&[
        "futex",
        "poll",
        "select",
        "epoll",
        "eventfd",
        "pipe",
        "sched_yield",
    ]) {
        return Class::Sync;
    }
    if has(&[
        "clock_",
        "nanosleep",
        "time",
        "alarm",
        "itimer",
        "timer_",
        "timerfd",
    ]) {
        return Class::Time;
    }
    if has(&[
        "socket", "connect", "accept", "bind", "listen", "send", "recv", "shutdown", "sockopt",
        "sockname", "peername",
    ]) {
        return Class::Network;
    }
    if has(&[
        "clone",
        "fork",
        "exec",
        "exit",
        "wait",
        "kill",
        "prctl",
        "setuid",
        "setgid",
        "setre",
        "setres",
        "setfs",
        "setgroups",
        "getpid",
        "getppid",
        "gettid",
        "capget",
        "capset",
        "setsid",
        "setpgid",
        "getpgid",
        "getsid",
        "pidfd",
        "sched_",
        "rlimit",
        "getpriority",
        "setpriority",
        "set_tid_address",
        "arch_prctl",
        "rseq",
        "sigaction",
        "sigprocmask",
        "sigreturn",
        "sigaltstack",
        "sigsuspend",
        "sigpending",
        "sigtimedwait",
        "sigqueueinfo",
        "signalfd",
        "pause",
        "getuid",
        "getgid",
        "geteuid",
        "getegid",
        "getresuid",
        "getresgid",
        "getgroups",
        "getrusage",
        "times",
        "umask",
        "personality",
        "seccomp",
        "set_robust_list",
        "get_robust_list",
        "landlock",
        "ioprio",
        "uname",
        "sysinfo",
        "getcpu",
        "getrandom",
        "restart_syscall",
        "kcmp",
    ]) {
        return Class::Process;
    }
    if has(&[
        "open",
        "read",
        "write",
        "close",
        "stat",
        "lseek",
        "ioctl",
        "access",
        "dup",
        "fcntl",
        "flock",
        "fsync",
        "fdatasync",
        "truncate",
        "getdents",
        "cwd",
        "chdir",
        "rename",
        "mkdir",
        "rmdir",
        "creat",
        "link",
        "unlink",
        "symlink",
        "chmod",
        "chown",
        "utime",
        "mknod",
        "statfs",
        "sendfile",
        "splice",
        "tee",
        "sync",
        "xattr",
        "fadvise",
        "fallocate",
        "inotify",
        "fanotify",
        "name_to_handle",
        "copy_file_range",
        "io_",
        "aio",
        "faccessat",
        "close_range",
        "cachestat",
        "quotactl_fd",
    ]) {
        return Class::File;
    }
    Class::Other
}

/// The name of syscall number `nr`, or `nr<n>` where the table has none.
pub fn name(nr: usize) -> String {
    if nr == OTHER {
        return "a 32-bit or x32 syscall (not told apart by number)".into();
    }
    match Sysno::new(nr) {
        Some(s) => s.name().to_string(),
        None => format!("nr{nr}"),
    }
}

/// A set of syscall numbers below [`SYSCALLS`], as the kernel's deny map holds it.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct SyscallSet(pub [u64; SYSCALLS / 64]);

impl SyscallSet {
    /// No syscall.
    pub const EMPTY: SyscallSet = SyscallSet([0; SYSCALLS / 64]);

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    /// Adds `nr` (numbers at or above [`SYSCALLS`] - 1 cannot be told apart and are refused).
    pub fn insert(&mut self, nr: usize) -> bool {
        if nr >= SYSCALLS - 1 {
            return false;
        }
        self.0[nr / 64] |= 1 << (nr % 64);
        true
    }

    /// Whether `nr` is in the set.
    pub fn contains(&self, nr: usize) -> bool {
        nr < SYSCALLS && self.0[nr / 64] >> (nr % 64) & 1 == 1
    }

    /// The numbers in the set, ascending.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        (0..SYSCALLS).filter(|n| self.contains(*n))
    }

    /// The names in the set.
    pub fn names(&self) -> Vec<String> {
        self.iter().map(name).collect()
    }

    /// Parses syscall names (x86-64: `ptrace`, `mount`...) or class names prefixed with `@`
    /// (`@privileged`, `@network`), as systemd's `SystemCallFilter=` does.
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<SyscallSet, String> {
        let mut set = SyscallSet::EMPTY;
        for item in items {
            let item = item.as_ref().trim();
            if let Some(class) = item.strip_prefix('@') {
                let Some(c) = Class::ALL.iter().find(|c| c.label() == class) else {
                    return Err(format!(
                        "unknown syscall class @{class}: the classes are {}",
                        Class::ALL
                            .iter()
                            .map(|c| format!("@{}", c.label()))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                };
                for s in Sysno::iter() {
                    if class_of_name(s.name()) == *c {
                        set.insert(s.id() as usize);
                    }
                }
                continue;
            }
            match Sysno::from_str(item) {
                Ok(s) if set.insert(s.id() as usize) => {}
                Ok(s) => {
                    return Err(format!(
                        "syscall {item} (number {}) is beyond what the audit tells apart",
                        s.id()
                    ));
                }
                Err(()) => {
                    return Err(format!(
                        "unknown syscall {item:?}: use x86-64 names as in syscalls(2) (for example \"ptrace\", \"mount\") or a class such as \"@privileged\""
                    ));
                }
            }
        }
        Ok(set)
    }
}

impl fmt::Debug for SyscallSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

impl Serialize for SyscallSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.names())
    }
}

/// An agent's syscall counts since it started, by number (the last bucket is "other").
#[derive(Clone, PartialEq, Eq)]
pub struct CallCounts {
    /// Calls per number.
    pub counts: Box<[u64; SYSCALLS]>,
    /// The first forbidden syscall the agent made, if any.
    pub denied: Option<usize>,
    /// How many forbidden calls it made (more than one if several threads raced).
    pub denied_hits: u64,
}

impl Default for CallCounts {
    fn default() -> CallCounts {
        CallCounts {
            counts: Box::new([0; SYSCALLS]),
            denied: None,
            denied_hits: 0,
        }
    }
}

impl fmt::Debug for CallCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallCounts")
            .field("total", &self.total())
            .field("by_class", &self.by_class())
            .field("denied", &self.denied)
            .finish()
    }
}

impl CallCounts {
    /// Every call.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Calls per class, in [`Class::ALL`] order.
    pub fn by_class(&self) -> [(Class, u64); 8] {
        let mut out = Class::ALL.map(|c| (c, 0));
        for (nr, n) in self.counts.iter().enumerate() {
            if *n > 0 {
                let c = if nr == SYSCALLS - 1 {
                    Class::Other
                } else {
                    Class::of(nr)
                };
                if let Some(slot) = out.iter_mut().find(|(k, _)| *k == c) {
                    slot.1 += n;
                }
            }
        }
        out
    }

    /// The syscalls made, most frequent first: (name, calls).
    pub fn top(&self, n: usize) -> Vec<(String, u64)> {
        let mut v: Vec<(usize, u64)> = self
            .counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(nr, c)| (nr, *c))
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.truncate(n);
        v.into_iter()
            .map(|(nr, c)| {
                let label = if nr == SYSCALLS - 1 {
                    "other".to_string()
                } else {
                    name(nr)
                };
                (label, c)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_classes() {
        let s = SyscallSet::parse(&["ptrace", "mount"]).unwrap();
        assert!(s.contains(101) && s.contains(165));
        assert_eq!(s.names(), vec!["ptrace", "mount"]);
        assert_eq!(Class::of(11), Class::Memory); // munmap
        assert_eq!(Class::of(0), Class::File); // read
        assert_eq!(Class::of(202), Class::Sync); // futex
        assert_eq!(Class::of(41), Class::Network); // socket
        assert_eq!(Class::of(57), Class::Process); // fork
        assert_eq!(Class::of(228), Class::Time); // clock_gettime
        assert_eq!(Class::of(101), Class::Privileged); // ptrace
        let p = SyscallSet::parse(&["@privileged"]).unwrap();
        assert!(p.contains(101) && p.contains(321) && !p.contains(0));
    }

    #[test]
    fn bad_names_say_what_to_write() {
        let e = SyscallSet::parse(&["ptrac"]).unwrap_err();
        assert!(e.contains("unknown syscall \"ptrac\""), "{e}");
        let e = SyscallSet::parse(&["@nope"]).unwrap_err();
        assert!(e.contains("@privileged"), "{e}");
    }

    #[test]
    fn counts_by_class_and_top() {
        let mut c = CallCounts::default();
        c.counts[11] = 5;
        c.counts[9] = 2;
        c.counts[0] = 7;
        c.counts[SYSCALLS - 1] = 1;
        assert_eq!(c.total(), 15);
        let by = c.by_class();
        assert_eq!(by[0], (Class::Memory, 7));
        assert_eq!(by[1], (Class::File, 7));
        assert_eq!(by[7], (Class::Other, 1));
        assert_eq!(
            c.top(2),
            vec![("read".to_string(), 7), ("munmap".to_string(), 5)]
        );
    }
}
