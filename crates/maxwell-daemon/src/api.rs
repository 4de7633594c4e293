//! The API's request and response bodies (JSON), shared by the daemon and its clients. Money
//! is integer micro-JOULE ([`Tokens`]); every path is under `/v1` except `/metrics`.
//!
//! | method and path | body | answer |
//! | --- | --- | --- |
//! | `GET /v1/node` | | [`NodeInfo`] |
//! | `GET /v1/market` | | [`MarketView`] |
//! | `GET /v1/agents` | | `[AgentView]` |
//! | `POST /v1/agents` | [`SpawnRequest`] | 201 [`AgentView`] |
//! | `DELETE /v1/agents/{name}` | | 202 [`AgentView`] |
//! | `GET /v1/wallets/{name}` | | [`WalletView`] |
//! | `POST /v1/wallets/{name}/fund` | [`FundRequest`] (signed by the owner) | [`WalletView`] |
//! | `GET /v1/bounty-pool` | | [`BountyPoolView`] |
//! | `POST /v1/bounty-pool/fund` | [`FundRequest`] (signed by any sponsor) | [`BountyPoolView`] |
//! | `GET /v1/events` | | server-sent events, each data line an [`Event`] |
//! | `GET /v1/stats` | | [`Stats`] |
//! | `GET /metrics` | | Prometheus text |
//!
//! Errors are 4xx or 5xx with `{"error": "what is wrong and what to do"}`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use maxwell_core::market::Spending;
use maxwell_core::{Bytes, Tokens};

/// What to run. Exactly one of `builtin`, `wasm` and `native`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgramRef {
    /// A built-in WASM agent: `scientist`, `leech`, `squatter`, `liar` or `idle`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builtin: Option<String>,
    /// A WASM module (binary or text) on the daemon's machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wasm: Option<PathBuf>,
    /// A native executable (process backend).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub native: Option<PathBuf>,
    /// Arguments of a native executable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
}

/// `POST /v1/agents`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpawnRequest {
    /// Unique name: letters, digits, `-`, `_`, `.`.
    pub name: String,
    /// The program.
    pub program: ProgramRef,
    /// The owner's Ed25519 public key (64 hex digits): only its signatures fund this wallet.
    pub owner: String,
    /// Cap on the agent's bid per slot (default from the config).
    #[serde(default)]
    pub max_bid: Option<Tokens>,
    /// Bid placed for it until it bids itself (default from the config).
    #[serde(default)]
    pub opening_bid: Option<Tokens>,
    /// Memory cap (default from the config).
    #[serde(default)]
    pub memory_max: Option<Bytes>,
    /// Opening funds, signed by `owner` like any funding. Without them the wallet is empty and
    /// the first rent makes the agent insolvent: fund it in the same request.
    #[serde(default)]
    pub fund: Option<FundRequest>,
    /// Syscalls (x86-64 names, or classes such as `@network`, `@privileged`) that kill the
    /// agent: the process backend with its eBPF probes enforces them; other backends refuse
    /// a non-empty list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_syscalls: Vec<String>,
}

/// `POST /v1/wallets/{name}/fund`: minting `amount` into the wallet, signed by its owner over
/// [`crate::sign::fund_message`]. `nonce` must exceed every nonce used before for this wallet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FundRequest {
    /// Micro-JOULE.
    pub amount: Tokens,
    /// Replay protection.
    pub nonce: u64,
    /// The owner's public key (hex).
    pub owner: String,
    /// Ed25519 signature (128 hex digits).
    pub signature: String,
}

/// `GET /v1/node`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node's ledger key (hex); fund signatures name it, so they cannot be replayed on
    /// another node.
    pub public_key: String,
    /// Sandbox backend.
    pub backend: String,
    /// Tick length in nanoseconds.
    pub tick_ns: u64,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Daemon version.
    pub version: String,
}

/// One standing bid.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BookEntry {
    /// Agent name.
    pub agent: String,
    /// Price per slot.
    pub price: Tokens,
}

/// `GET /v1/market`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MarketView {
    /// Ticks so far.
    pub tick: u64,
    /// Clearing price of the last tick.
    pub price: Tokens,
    /// Slots sold.
    pub supply: u32,
    /// Reserve price.
    pub reserve: Tokens,
    /// Most slots ever for sale.
    pub slots_max: u32,
    /// Standing bids.
    pub depth: usize,
    /// The highest bids.
    pub top: Vec<BookEntry>,
    /// Die temperature, C.
    pub temperature_c: f64,
    /// Power over the last tick, W.
    pub power_w: f64,
    /// Energy since the daemon started, J.
    pub energy_j: f64,
    /// Whether energy and temperature come from the model.
    pub modelled: bool,
    /// The energy source, in words.
    pub energy_source: String,
    /// The bounty pool.
    pub bounty_pool: Tokens,
    /// What a unit of verified work earns now, in thousandths of a micro-JOULE.
    #[serde(default)]
    pub bounty_rate_milli: u64,
    /// Agents alive.
    pub alive: usize,
}

/// `GET /v1/bounty-pool`, and the answer to a top-up once it is credited and committed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BountyPoolView {
    /// What the pool holds.
    pub balance: Tokens,
    /// What a unit of verified work earns now, in thousandths of a micro-JOULE (at most
    /// `cap_per_unit` times 1,000).
    pub rate_milli_per_unit: u64,
    /// The most a unit ever earns (`bounty_per_unit` in the configuration).
    pub cap_per_unit: Tokens,
    /// Whether the house's income goes back to the pool (`recycle_income`).
    pub recycle_income: bool,
    /// The pool pays out at most its income plus its balance over this many seconds a second.
    pub horizon_s: f64,
    /// Minted into the pool by fundings since the daemon started: top-ups through the API, and
    /// the opening pool when the ledger was new (the grant is not counted).
    pub sponsored: Tokens,
    /// The last nonce of the sponsor who asked (0 when it never funded the pool here).
    pub nonce: u64,
}

/// `GET /v1/agents` entries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentView {
    /// Market id.
    pub id: u32,
    /// Name.
    pub name: String,
    /// Sandbox backend.
    pub backend: String,
    /// `running`, `frozen`, `dying` or `dead`.
    pub state: String,
    /// Why it is dying or dead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// Wallet.
    pub balance: Tokens,
    /// Standing bid.
    pub bid: Option<Tokens>,
    /// CPU seconds used.
    pub cpu_s: f64,
    /// Energy attributed, J.
    pub energy_j: f64,
    /// Units of work claimed and paid.
    pub work: u64,
    /// Bounties received.
    pub bounties: Tokens,
    /// Quanta won.
    pub quanta: u64,
    /// Owner's public key.
    pub owner: String,
    /// Its syscalls (process agents, where the eBPF probes load), sampled once a second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syscalls: Option<crate::audit::SyscallSummary>,
}

/// `GET /v1/wallets/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WalletView {
    /// Agent name.
    pub name: String,
    /// Balance, as the ledger holds it.
    pub balance: Tokens,
    /// Rent accrued and not yet posted: rent is posted once per agent's rent period (a minute
    /// at the defaults), or at once when it could not be covered. The agent can spend the
    /// balance less this.
    #[serde(default)]
    pub rent_owed: Tokens,
    /// Funding received.
    pub funded: Tokens,
    /// Bounties received.
    pub bounties: Tokens,
    /// Money paid, by kind.
    pub spent: Spending,
    /// The last funding nonce used (the next must be larger).
    pub nonce: u64,
    /// The owner's public key.
    pub owner: String,
}

/// One event of the stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    /// Tick.
    pub tick: u64,
    /// `clearing`, `death`, `audit`, `slash`, `funding`, `spawn`, `kill`.
    pub kind: String,
    /// Agent concerned, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Details in words.
    pub detail: String,
}

/// `GET /v1/agents/{name}/logs`: an agent's most recent log lines (at most 200 kept; an agent
/// may send 10 a second, more are dropped and counted).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogsView {
    /// The agent.
    pub name: String,
    /// Oldest first.
    pub lines: Vec<LogLine>,
    /// Lines dropped (over the rate, or the mailbox's bound).
    pub dropped: u64,
}

/// One log line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogLine {
    /// The tick it arrived.
    pub tick: u64,
    /// The line (cut to 512 bytes).
    pub line: String,
}

/// `GET /v1/stats`: the tick loop's own health.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stats {
    /// Ticks run since start.
    pub ticks: u64,
    /// Lateness of tick starts over the last 1,000 ticks, microseconds.
    pub late_p50_us: u64,
    /// 99th percentile.
    pub late_p99_us: u64,
    /// Worst.
    pub late_max_us: u64,
    /// Work time of a tick (p99), microseconds.
    pub work_p99_us: u64,
    /// Ticks skipped since start because a tick overran by more than a quantum (a stall).
    #[serde(default)]
    pub skipped: u64,
    /// Audits asked for and not answered yet (recomputations queued off the tick thread).
    #[serde(default)]
    pub audit_backlog: u64,
    /// Ticks since start that began more than 1, 2, 5 and 10 ms late: the whole run's
    /// lateness (the percentiles above cover only the last 1,000 ticks). A p99 under 2 ms
    /// over the run is `late_over_ms[1] <= ticks / 100`.
    #[serde(default)]
    pub late_over_ms: [u64; 4],
}

/// The thresholds of [`Stats::late_over_ms`], milliseconds.
pub const LATE_THRESHOLDS_MS: [u64; 4] = [1, 2, 5, 10];

/// An error body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What is wrong and what to do.
    pub error: String,
}
