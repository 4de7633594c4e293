//! # maxwell-sandbox: the cell membrane
//!
//! Agents are untrusted. A [`Sandbox`] spawns an agent from an [`AgentSpec`] into a contained
//! [`Agent`] that the daemon can resume, pause, meter and kill:
//!
//! - [`wasm`]: WASM modules under wasmtime, polled by a pool of executor threads (one per
//!   running agent, none for a frozen one). Epoch interruption makes the guest yield to its
//!   worker every millisecond; a paused agent is simply not polled. Linear
//!   memory is capped by a `ResourceLimiter`; fuel can be turned on for deterministic replay.
//!   Needs no privilege; the default.
//! - [`process`]: native programs in cgroups (v2 where the controllers are, v1 where they are
//!   bound there), frozen and thawed through the freezer, talking the line-delimited JSON
//!   protocol of `maxwell-agent` over a Unix socket. Needs root.
//!
//! Both report what agents say ([`Message`]: bids, claims, logs) through a bounded [`Mailbox`]
//! and what they cost ([`Usage`]: CPU time, resident bytes, erased bytes). Agents never see raw
//! energy readings; they see their balance and the clearing price ([`Mailbox::inform`]).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use maxwell_core::work::PrimeClaim;
use maxwell_core::{Bytes, Nanos, Tokens};
pub use maxwell_ebpf::audit::{OTHER as SYSCALLS_OTHER, name as syscall_name};
pub use maxwell_ebpf::{CallCounts, Class as SyscallClass, SyscallSet};

pub mod erasure;
pub mod microvm;
pub mod process;
pub mod wasm;

/// What to run.
#[derive(Debug, Clone)]
pub enum Program {
    /// A WASM module, binary or text (WAT), exporting `run` (see docs/wasm-abi.md).
    Wasm {
        /// The module's bytes.
        module: Vec<u8>,
    },
    /// A native executable speaking docs/protocol.md over `MAXWELL_SOCKET`.
    Native {
        /// The executable.
        path: PathBuf,
        /// Its arguments.
        args: Vec<String>,
    },
}

/// Limits every backend enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Memory an agent may hold: linear memory (wasm) or `memory.max` (process).
    pub memory_max: Bytes,
    /// Processes and threads (process backend: `pids.max`).
    pub pids_max: u32,
    /// Syscalls that end the agent (process backend, where the eBPF probes load): the first
    /// one it makes kills it, with the syscall named as the cause. Empty: none.
    pub deny: SyscallSet,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            memory_max: Bytes(256 << 20),
            pids_max: 64,
            deny: SyscallSet::EMPTY,
        }
    }
}

/// How to spawn one agent.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    /// A name unique on this host: letters, digits, `-` and `_` (it names cgroups and sockets).
    pub name: String,
    /// What to run.
    pub program: Program,
    /// Its limits.
    pub limits: Limits,
}

/// What an agent said since the last [`Agent::drain`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Message {
    /// Its standing bid, per slot per quantum; only the latest counts.
    Bid {
        /// The price.
        price: Tokens,
    },
    /// It withdrew its bid.
    CancelBid,
    /// It claims useful work.
    Claim(PrimeClaim),
    /// A log line (cut to [`MAX_LOG_LINE`] bytes).
    Log(String),
    /// It broke the protocol or the ABI; the daemon decides (usually apoptosis).
    Violation(String),
    /// This many claims and logs were dropped because more than [`MAX_PENDING`] waited. Not a
    /// violation: an agent that works faster than the daemon drains (a stalled tick) loses the
    /// excess, nothing more.
    Dropped(u64),
}

/// What an agent used since the last [`Agent::usage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Usage {
    /// CPU time since the last call.
    pub cpu: Nanos,
    /// Resident bytes now.
    pub resident: Bytes,
    /// Bytes erased (overwritten or freed) since the last call, measured or estimated as the
    /// backend says ([`Sandbox::erasure_source`]).
    pub erased: Bytes,
}

/// Why an agent stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitReason {
    /// It returned or exited on its own.
    Finished,
    /// It trapped (wasm) or crashed on a signal (process).
    Crashed,
    /// It hit its memory limit.
    MemoryLimit,
    /// It broke the protocol.
    Violation,
    /// The daemon killed it.
    Killed,
}

/// An agent's end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Exit {
    /// The kind of end.
    pub reason: ExitReason,
    /// In words.
    pub detail: String,
}

/// Where an agent is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Status {
    /// Allowed to run.
    Running,
    /// Frozen.
    Paused,
    /// Gone, and why.
    Exited(Exit),
}

/// Sandbox failures. Each says what is missing and what to do.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The backend cannot run here (no root, no cgroups, ...).
    #[error("{0}")]
    Unavailable(String),
    /// The spec is wrong.
    #[error("invalid agent spec: {0}")]
    InvalidSpec(String),
    /// The agent is gone.
    #[error("agent {name} has exited: {detail}")]
    Exited {
        /// Which.
        name: String,
        /// Why.
        detail: String,
    },
    /// An operating-system call failed. The cause is in the message, not chained as a
    /// `source` (a chain would print it twice: `anyhow`'s `{:#}` shows both).
    #[error("{context}: {cause}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        cause: std::io::Error,
    },
    /// The agent did not answer in time.
    #[error("agent {name}: {what} timed out")]
    Timeout {
        /// Which.
        name: String,
        /// Which operation.
        what: &'static str,
    },
}

impl SandboxError {
    /// An I/O error with its context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> SandboxError {
        SandboxError::Io {
            context: context.into(),
            cause: source,
        }
    }
}

/// A backend.
pub trait Sandbox: Send + Sync {
    /// `wasm` or `process`.
    fn name(&self) -> &'static str;
    /// Starts an agent, paused.
    fn spawn(&self, spec: &AgentSpec) -> Result<Box<dyn Agent>, SandboxError>;

    /// How [`Usage::erased`] is obtained here, in words (for `maxwell sensors` and logs).
    fn erasure_source(&self) -> String {
        "estimated by the backend".into()
    }

    /// Events the backend's eBPF probes could not record since they loaded; `None` where
    /// there are no probes.
    fn probe_losses(&self) -> Option<Result<u64, SandboxError>> {
        None
    }
}

/// A shared backend: the daemon starts agents (compiling their modules) on its API threads
/// while the tick loop owns the node.
impl<S: Sandbox + ?Sized> Sandbox for std::sync::Arc<S> {
    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn spawn(&self, spec: &AgentSpec) -> Result<Box<dyn Agent>, SandboxError> {
        (**self).spawn(spec)
    }
    fn erasure_source(&self) -> String {
        (**self).erasure_source()
    }
    fn probe_losses(&self) -> Option<Result<u64, SandboxError>> {
        (**self).probe_losses()
    }
}

/// One contained agent. Starts paused; `resume` lets it run until `pause`.
pub trait Agent: Send {
    /// Its name.
    fn name(&self) -> &str;
    /// Lets it run (for the quantum it won; the daemon pauses it at the quantum's end unless it
    /// wins the next one too).
    fn resume(&mut self) -> Result<(), SandboxError>;
    /// Freezes it; returns once it is no longer running.
    fn pause(&mut self) -> Result<(), SandboxError>;
    /// Kills it: a graceful request, a grace period, then force; everything it held is freed.
    fn kill(&mut self, reason: &str) -> Exit;
    /// CPU time and erasure since the last call, resident memory now.
    fn usage(&mut self) -> Result<Usage, SandboxError>;
    /// What it said since the last call.
    fn drain(&mut self) -> Vec<Message> {
        self.mailbox().drain()
    }
    /// Tells it its balance and the clearing price (what `balance` and `price` answer).
    fn inform(&self, balance: Tokens, price: Tokens) {
        self.mailbox().inform(balance, price);
    }
    /// Its mailbox: what it is told (income, work leased to it) beyond balance and price.
    fn mailbox(&self) -> &Mailbox;
    /// Where it is now.
    fn status(&mut self) -> Status;

    /// The agent's syscalls since it started, where the backend audits them (the process
    /// backend with the eBPF probes loaded); `None` elsewhere.
    fn syscalls(&mut self) -> Option<Result<CallCounts, SandboxError>> {
        None
    }
    /// Whether the host must poll the agent while it is frozen: true where something outside
    /// the host can end it (a process can be killed by another), false where a frozen agent
    /// cannot change at all (a parked WASM future: no CPU, no words, no exit), which the tick
    /// loop then never visits until it runs again.
    fn poll_while_frozen(&self) -> bool {
        true
    }
}

/// Refuses a syscall deny list where the backend cannot enforce one.
pub(crate) fn refuse_deny(spec: &AgentSpec, backend: &str, why: &str) -> Result<(), SandboxError> {
    if spec.limits.deny.is_empty() {
        return Ok(());
    }
    Err(SandboxError::InvalidSpec(format!(
        "agent {}: a syscall deny list ({}) needs the process backend with its eBPF probes; the {backend} backend {why}",
        spec.name,
        spec.limits.deny.names().join(", ")
    )))
}

/// Validates an agent name: it becomes part of cgroup and socket paths.
pub fn check_name(name: &str) -> Result<(), SandboxError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(SandboxError::InvalidSpec(format!(
            "agent name {name:?}: use 1 to 64 letters, digits, '-' or '_'"
        )))
    }
}

/// The longest log line kept.
pub const MAX_LOG_LINE: usize = 512;
/// Claims and logs an agent may have waiting before more are dropped.
pub const MAX_PENDING: usize = 256;

#[derive(Debug, Default)]
struct Pending {
    /// The latest bid (`Some(None)`: the bid was withdrawn), kept as a price rather than as a
    /// `Message`, which is five times the size, in every agent's mailbox.
    bid: Option<Option<Tokens>>,
    queue: VecDeque<Message>,
    dropped: u64,
    reported_drops: u64,
}

/// Where an agent's words wait for the daemon. Bounded: the latest bid replaces the previous
/// one (a flood of bids costs nothing), and claims and logs beyond [`MAX_PENDING`] are dropped
/// and counted once per drain in a [`Message::Dropped`].
#[derive(Debug, Default)]
pub struct Mailbox {
    pending: Mutex<Pending>,
    balance: AtomicU64,
    price: AtomicU64,
    income: AtomicU64,
    quanta: AtomicU64,
    /// Ranges of work leased to the agent by its host and not yet taken.
    work: Mutex<VecDeque<(u64, u64)>>,
}

impl Mailbox {
    /// Records one message from the agent.
    pub fn post(&self, m: Message) {
        let Ok(mut p) = self.pending.lock() else {
            return;
        };
        match m {
            Message::Bid { price } => p.bid = Some(Some(price)),
            Message::CancelBid => p.bid = Some(None),
            Message::Log(mut s) => {
                if s.len() > MAX_LOG_LINE {
                    let mut cut = MAX_LOG_LINE;
                    while !s.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    s.truncate(cut);
                }
                push(&mut p, Message::Log(s));
            }
            other => push(&mut p, other),
        }
    }

    /// Everything waiting, bids last (so that a claim's bounty is settled before the new bid).
    pub fn drain(&self) -> Vec<Message> {
        let Ok(mut p) = self.pending.lock() else {
            return Vec::new();
        };
        let mut out: Vec<Message> = p.queue.drain(..).collect();
        if p.dropped > p.reported_drops {
            out.push(Message::Dropped(p.dropped - p.reported_drops));
            p.reported_drops = p.dropped;
        }
        out.extend(p.bid.take().map(|b| match b {
            Some(price) => Message::Bid { price },
            None => Message::CancelBid,
        }));
        out
    }

    /// Sets what the agent is told.
    pub fn inform(&self, balance: Tokens, price: Tokens) {
        self.balance.store(balance.0, Ordering::Relaxed);
        self.price.store(price.0, Ordering::Relaxed);
    }

    /// Sets what the agent is told of its own record: what its work earned net of the tax on
    /// what it erased (bounties less Landauer tax), and the quanta it has run. Their ratio is
    /// the value of a slot to it, which is what a truthful agent bids.
    pub fn inform_income(&self, income: Tokens, quanta: u64) {
        self.income.store(income.0, Ordering::Relaxed);
        self.quanta.store(quanta, Ordering::Relaxed);
    }

    /// Net income and quanta run, as last told.
    pub fn income(&self) -> (Tokens, u64) {
        (
            Tokens(self.income.load(Ordering::Relaxed)),
            self.quanta.load(Ordering::Relaxed),
        )
    }

    /// Queues ranges of work the host leased to the agent.
    pub fn give_work(&self, ranges: impl IntoIterator<Item = (u64, u64)>) {
        if let Ok(mut w) = self.work.lock() {
            w.extend(ranges);
        }
    }

    /// Ranges queued and not yet taken.
    pub fn work_queued(&self) -> usize {
        self.work.lock().map_or(0, |w| w.len())
    }

    /// Takes the next leased range, if any.
    pub fn take_work(&self) -> Option<(u64, u64)> {
        self.work.lock().ok().and_then(|mut w| w.pop_front())
    }

    /// The agent's balance as last told.
    pub fn balance(&self) -> Tokens {
        Tokens(self.balance.load(Ordering::Relaxed))
    }

    /// The clearing price as last told.
    pub fn price(&self) -> Tokens {
        Tokens(self.price.load(Ordering::Relaxed))
    }
}

fn push(p: &mut Pending, m: Message) {
    if p.queue.len() >= MAX_PENDING {
        p.dropped += 1;
    } else {
        p.queue.push_back(m);
    }
}

/// The nice value of agents' threads (and of other work that must yield to the tick thread,
/// such as audits): the tick thread, at the default 0, then wins every wakeup against them, so
/// an agent that burns its whole slot cannot make the tick that ends the slot late. Agents are
/// all at the same value, so their shares among themselves do not change.
pub const AGENT_NICE: i32 = 10;

/// Lowers the calling thread's scheduling priority to `nice` (raising a nice value needs no
/// privilege). On Linux the nice value is per thread.
pub fn yield_to_the_tick_thread(nice: i32) -> std::io::Result<()> {
    rustix::process::setpriority_process(Some(rustix::thread::gettid()), nice)
        .map_err(std::io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_bids_leaves_only_the_last() {
        let m = Mailbox::default();
        for i in 0..100_000 {
            m.post(Message::Bid { price: Tokens(i) });
        }
        assert_eq!(
            m.drain(),
            vec![Message::Bid {
                price: Tokens(99_999)
            }]
        );
        assert!(m.drain().is_empty());
    }

    #[test]
    fn claims_beyond_the_bound_are_dropped_and_reported_once() {
        let m = Mailbox::default();
        for i in 0..(MAX_PENDING as u64 + 10) {
            m.post(Message::Claim(PrimeClaim {
                start: i,
                end: i + 1,
                count: 0,
                digest: 0,
            }));
        }
        let out = m.drain();
        assert_eq!(out.len(), MAX_PENDING + 1);
        assert_eq!(out[MAX_PENDING], Message::Dropped(10));
        assert!(m.drain().is_empty());
    }

    #[test]
    fn long_logs_are_cut_on_a_char_boundary() {
        let m = Mailbox::default();
        m.post(Message::Log("é".repeat(MAX_LOG_LINE)));
        let Message::Log(s) = &m.drain()[0] else {
            panic!()
        };
        assert!(s.len() <= MAX_LOG_LINE && s.chars().all(|c| c == 'é'));
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("sci-1_a").is_ok());
        for bad in ["", "../x", "a b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
