//! The tick loop on its own OS thread. It owns the [`Node`]; the API talks to it through a
//! channel of [`Op`]s (applied at the start of the next tick) and reads what it publishes in
//! [`Shared`]: a snapshot for queries and a broadcast of [`Event`]s.
//!
//! Nothing on the tick thread grows with the number of agents, per tick or per op: names are
//! found in a map, the published agent list is updated where the tick report says something
//! changed (and where an op touched it), the alive count is the market's, syscalls are sampled
//! only for agents whose backend audits them, and the roster's journal is written and synced
//! by its own thread ([`crate::roster`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, oneshot};

use maxwell_core::{AgentId, Life, Tokens};
use maxwell_node::Node;
use maxwell_sandbox::{Agent, AgentSpec, Limits, Program};

use crate::api::{
    AgentView, BookEntry, BountyPoolView, Event, FundRequest, MarketView, ProgramRef, SpawnRequest,
    Stats, WalletView,
};
use crate::config::Config;
use crate::roster::{Entry, Journal};

pub use crate::roster::Record;

/// An error for the API: an HTTP status and a message saying what to do.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// Message.
    pub message: String,
}

/// The longest error message the API sends, in bytes.
const MAX_ERROR: usize = 2_000;

impl ApiError {
    pub(crate) fn new(status: u16, message: impl Into<String>) -> ApiError {
        let mut message = message.into();
        // An error never echoes large input (a parser's message can quote a whole module).
        if message.len() > MAX_ERROR {
            let mut cut = MAX_ERROR;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str(" ... (truncated)");
        }
        ApiError { status, message }
    }
}

type Reply<T> = oneshot::Sender<Result<T, ApiError>>;

/// A request whose signature was checked off the tick thread (an Ed25519 verification costs
/// some 50 us: a burst of spawns would make ticks late). Only its constructors make one.
#[derive(Debug, Clone)]
pub struct Verified<T>(T);

impl<T> Verified<T> {
    /// The request.
    pub fn get(&self) -> &T {
        &self.0
    }
}

impl Verified<SpawnRequest> {
    /// A spawn whose owner key is one, and whose opening funds, if any, are signed by it for
    /// this agent on `node` (a new wallet's nonces start above 0).
    pub fn spawn(req: SpawnRequest, node: &str) -> Result<Self, ApiError> {
        crate::sign::parse_public_key(&req.owner).map_err(|m| ApiError::new(422, m))?;
        if let Some(f) = &req.fund {
            crate::sign::check_fund(f, node, &req.name, &req.owner, 0)
                .map_err(|m| ApiError::new(403, m))?;
        }
        Ok(Verified(req))
    }
}

impl Verified<FundRequest> {
    /// A funding of `agent` on `node` signed by the key it names (`req.owner`); the tick loop
    /// checks that this key owns the wallet and that the nonce is fresh.
    pub fn funding(req: FundRequest, node: &str, agent: &str) -> Result<Self, ApiError> {
        crate::sign::verify_fund_signature(&req, node, agent).map_err(|m| ApiError::new(403, m))?;
        Ok(Verified(req))
    }
}

/// What the API asks of the tick loop.
pub enum Op {
    /// Admit an agent the API thread already started (paused) from the request.
    Spawn(
        Box<Verified<SpawnRequest>>,
        Box<dyn Agent>,
        Reply<AgentView>,
    ),
    /// The owner kills an agent.
    Kill(String, Reply<AgentView>),
    /// Fund a wallet (signature verified by the API; owner and nonce checked by the loop,
    /// which knows them).
    Fund(String, Verified<FundRequest>, Reply<WalletView>),
    /// Read a wallet.
    Wallet(String, Reply<WalletView>),
    /// Read an agent's recent log lines.
    Logs(String, Reply<crate::api::LogsView>),
    /// Read an agent's syscall series.
    Syscalls(String, Reply<crate::audit::SeriesView>),
    /// Top up the bounty pool (any sponsor's signature, checked by the loop).
    FundPool(FundRequest, Reply<BountyPoolView>),
    /// Read the bounty pool (and this sponsor's last nonce, if a key is given).
    Pool(Option<String>, Reply<BountyPoolView>),
}

/// Log lines kept per agent (the most recent).
pub const LOG_LINES_KEPT: usize = 200;

/// The most time a tick spends applying ops; the rest wait for the next tick.
const OPS_BUDGET: Duration = Duration::from_micros(500);

/// Ticks between two batches handed to the journal, at least: each sync flushes the disk's
/// cache, which makes the ledger's own sync on the tick thread wait, so a burst of spawns costs
/// a few syncs a second, not one a tick (it adds at most this many ticks to an answer).
const SYNC_EVERY_TICKS: u64 = 4;

/// How long a stopping loop goes on ticking so that ops already accepted (waiting for the
/// journal, or for the tick that credits them) are answered.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// One agent as the tick loop publishes it: what changes, and its name and owner shared with
/// the roster (a frozen agent costs the daemon as few bytes as can be); [`Listed::view`] makes
/// the API's [`AgentView`] when a client asks.
#[derive(Debug, Clone)]
pub struct Listed {
    /// Market id.
    pub id: u32,
    /// Name.
    pub name: Arc<str>,
    /// Owner's public key.
    pub owner: Arc<str>,
    /// `running`, `frozen`, `dying` or `dead`.
    pub state: &'static str,
    /// Why it is dying or dead.
    pub cause: Option<Box<str>>,
    /// Wallet.
    pub balance: Tokens,
    /// Standing bid.
    pub bid: Option<Tokens>,
    /// CPU time used, ns.
    pub cpu_ns: u64,
    /// Energy attributed, micro-joules.
    pub energy_uj: u64,
    /// Units of work claimed and paid.
    pub work: u64,
    /// Bounties received.
    pub bounties: Tokens,
    /// Quanta won.
    pub quanta: u64,
    /// Its syscalls, where they are audited.
    pub syscalls: Option<Box<crate::audit::SyscallSummary>>,
}

impl Listed {
    /// The API's view of it, on a node whose backend is `backend`.
    pub fn view(&self, backend: &str) -> AgentView {
        AgentView {
            id: self.id,
            name: self.name.to_string(),
            backend: backend.to_owned(),
            state: self.state.to_owned(),
            cause: self.cause.as_deref().map(str::to_owned),
            balance: self.balance,
            bid: self.bid,
            cpu_s: self.cpu_ns as f64 / 1e9,
            energy_j: self.energy_uj as f64 / 1e6,
            work: self.work,
            bounties: self.bounties,
            quanta: self.quanta,
            owner: self.owner.to_string(),
            syscalls: self.syscalls.as_deref().cloned(),
        }
    }
}

/// The published agent list: index = market id. Readers clone the outer `Arc` (the lock is
/// held for that only); the tick loop updates the entries that changed in place, copying the
/// list of pointers (or an entry) only while a reader still holds the previous one.
pub type AgentList = Arc<Vec<Arc<Listed>>>;

/// What the tick loop publishes.
pub struct Shared {
    /// Market state after the last tick.
    pub market: Mutex<MarketView>,
    /// Agents, updated every 10 ticks (where something changed) and after every op.
    pub agents: Mutex<AgentList>,
    /// Tick loop health.
    pub stats: Mutex<Stats>,
    /// Events.
    pub events: broadcast::Sender<Event>,
    /// Set to stop: the loop freezes every agent, saves, and returns.
    pub stop: AtomicBool,
    /// Wakes the API's tasks that wait for `stop` ([`Shared::request_stop`] sets both).
    pub stopped: tokio::sync::Notify,
    /// The node's public key (hex).
    pub node_key: String,
}

impl Shared {
    /// Asks the tick loop and the API to stop.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.stopped.notify_waiters();
    }
}

/// The bounty pool's sponsors and their last nonces.
pub fn sponsors_path(data: &Path) -> PathBuf {
    data.join("sponsors.json")
}

fn load_sponsors(data: &Path) -> Result<BTreeMap<String, u64>, ApiError> {
    let p = sponsors_path(data);
    match std::fs::read_to_string(&p) {
        Ok(t) => serde_json::from_str(&t).map_err(|e| {
            ApiError::new(
                500,
                format!(
                    "{}: {e}; it is written by the daemon only: restore it from a backup (or \
                     delete it, and sponsors' old signatures could be replayed)",
                    p.display()
                ),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(ApiError::new(500, format!("{}: {e}", p.display()))),
    }
}

/// A built-in agent's module.
const IDLE_WAT: &str = r#"(module
  (import "maxwell" "log" (func $log (param i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "idle")
  (func (export "run") (call $log (i32.const 0) (i32.const 4)) (loop $l (br $l))))"#;

/// Parses a spec's syscall deny list; errors are 422s naming the bad entry.
pub fn deny_of(names: &[String]) -> Result<maxwell_sandbox::SyscallSet, ApiError> {
    maxwell_sandbox::SyscallSet::parse(names)
        .map_err(|e| ApiError::new(422, format!("deny_syscalls: {e}")))
}

/// Turns a program reference into a sandbox spec; errors are 4xx messages. `native_builtins`
/// is where the built-in agents' native programs are, for backends that run native programs
/// (the microvm backend's statically linked ones); without it built-ins are WASM modules.
pub fn spec_of(
    name: &str,
    program: &ProgramRef,
    memory_max: maxwell_core::Bytes,
    pids_max: u32,
    deny: maxwell_sandbox::SyscallSet,
    native_builtins: Option<&std::path::Path>,
) -> Result<AgentSpec, ApiError> {
    let given = [
        program.builtin.is_some(),
        program.wasm.is_some(),
        program.native.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if given != 1 {
        return Err(ApiError::new(
            422,
            "program must name exactly one of builtin (scientist, leech, squatter, liar, idle), \
             wasm (a module's path) or native (an executable's path)",
        ));
    }
    let program = if let (Some(b), Some(dir)) = (&program.builtin, native_builtins) {
        if !["scientist", "leech", "squatter", "liar"].contains(&b.as_str()) {
            return Err(ApiError::new(
                422,
                format!(
                    "no native built-in agent {b:?}; choose scientist, leech, squatter or liar"
                ),
            ));
        }
        let path = dir.join(b);
        if !path.is_file() {
            return Err(ApiError::new(
                503,
                format!(
                    "the built-in {b} is not built for guests: {} is missing; run \
                     scripts/build-guest",
                    path.display()
                ),
            ));
        }
        Program::Native {
            path,
            args: program.args.clone(),
        }
    } else if let Some(b) = &program.builtin {
        let wat: String = match b.as_str() {
            "scientist" => maxwell_agents::SCIENTIST_WAT.into(),
            "leech" => maxwell_agents::LEECH_WAT.into(),
            "squatter" => maxwell_agents::SQUATTER_WAT.into(),
            "liar" => maxwell_agents::LIAR_WAT.into(),
            "idle" => IDLE_WAT.into(),
            other => {
                return Err(ApiError::new(
                    422,
                    format!(
                        "no built-in agent {other:?}; choose scientist, leech, squatter, liar or idle"
                    ),
                ));
            }
        };
        Program::Wasm {
            module: wat.into_bytes(),
        }
    } else if let Some(p) = &program.wasm {
        let module = crate::files::read_bounded(p, crate::files::MAX_MODULE, "module")
            .map_err(|e| ApiError::new(422, format!("{e}; give a path the daemon can read")))?;
        Program::Wasm { module }
    } else if let Some(p) = &program.native {
        Program::Native {
            path: p.clone(),
            args: program.args.clone(),
        }
    } else {
        return Err(ApiError::new(422, "program is empty"));
    };
    Ok(AgentSpec {
        name: name.to_owned(),
        program,
        limits: Limits {
            memory_max,
            pids_max,
            deny,
        },
    })
}

fn state_of(node: &Node, id: AgentId) -> (&'static str, Option<String>) {
    match node.market().life(id) {
        Some(Life::Alive) if node.is_running(id) => ("running", None),
        Some(Life::Alive) => ("frozen", None),
        Some(Life::Dying { cause, .. }) => ("dying", Some(cause.to_string())),
        Some(Life::Dead { cause, .. }) => ("dead", Some(cause.to_string())),
        None => ("unknown", None),
    }
}

/// The tick loop.
pub struct Engine {
    /// The node.
    pub node: Node,
    /// Roster, index = market id: the agents the market has admitted.
    pub roster: maxwell_core::dense::Dense<Record>,
    /// Data directory.
    pub data: PathBuf,
    /// Configuration.
    pub config: Config,
    /// Backend name.
    pub backend: String,
    /// Published state.
    pub shared: Arc<Shared>,
    /// The roster's journal (`None` once closed, at the end of [`Engine::run`]).
    journal: Option<Journal>,
    /// Roster ids by name (the name shared with the record).
    names: HashMap<Arc<str>, AgentId>,
    /// Owners' keys, one shared string each.
    owners: HashSet<Arc<str>>,
    /// Programs, one shared copy of each distinct one (10,000 agents of one built-in hold one).
    programs: HashSet<Arc<ProgramRef>>,
    /// Names of spawns waiting for the journal.
    reserved: HashSet<Arc<str>>,
    /// Ops accepted this tick or while a batch was in flight, their lines not yet handed to
    /// the journal.
    queued: Vec<Awaiting>,
    /// The batch the journal is writing and syncing (one at a time, so that the ids of the
    /// spawns in a batch follow the roster as it is when the batch takes effect).
    in_flight: Option<(u64, Vec<Awaiting>)>,
    /// The loop's tick count when the last batch was handed over.
    submitted_at: u64,
    /// Entries of the published list (index = market id).
    published: usize,
    /// Published entries to rebuild at the next publication (and a flag per agent, so each is
    /// listed once).
    dirty: Vec<AgentId>,
    is_dirty: Vec<bool>,
    /// Agents not yet asked whether their backend audits their syscalls.
    unprobed: BTreeSet<AgentId>,
    /// Agents whose backend audits their syscalls, sampled once a second while they live.
    audited: BTreeSet<AgentId>,
    energy_uj: u128,
    audits_passed: std::cell::Cell<u64>,
    late: VecDeque<u64>,
    work: VecDeque<u64>,
    /// Fundings queued for the next tick, answered once that tick is committed.
    fundings: Vec<PendingFunding>,
    /// What `fundings` adds to each wallet.
    funding_by_agent: HashMap<AgentId, u64>,
    /// Money accepted and not yet credited: `fundings`, `queued` and `in_flight` (so that the
    /// room left in the books is known without a walk over them).
    accepted: u64,
    /// Each agent's most recent log lines, with the tick they arrived.
    logs: BTreeMap<AgentId, VecDeque<(u64, String)>>,
    /// Each audited agent's syscall series.
    audit: BTreeMap<AgentId, crate::audit::Series>,
    /// Agents whose syscalls could not be read (warned once each).
    audit_failed: BTreeSet<AgentId>,
    /// Top-ups of the bounty pool queued for the next tick, answered once it is committed.
    pool_fundings: Vec<(Tokens, String, Reply<BountyPoolView>)>,
    /// The pool's sponsors and their last nonces (`sponsors.json`), read at first use.
    sponsors: Option<BTreeMap<String, u64>>,
}

/// An op accepted by the loop whose roster line is not durable yet: it takes effect (the
/// market admits the agent, the funding is queued) at the first tick after the journal says
/// the line is synced, and is refused if the journal fails.
enum Awaiting {
    Spawn {
        record: Box<Record>,
        agent: Box<dyn Agent>,
        funds: Tokens,
        reply: Reply<AgentView>,
    },
    Fund {
        agent: AgentId,
        nonce: u64,
        amount: Tokens,
        reply: Reply<WalletView>,
    },
}

impl Awaiting {
    fn amount(&self) -> Tokens {
        match self {
            Awaiting::Spawn { funds, .. } => *funds,
            Awaiting::Fund { amount, .. } => *amount,
        }
    }
}

/// A funding the loop has accepted and queued: its answer waits for the tick that credits it.
struct PendingFunding {
    agent: AgentId,
    amount: Tokens,
    /// The wallet's funded total once it is credited (with every funding queued before it in
    /// the same tick), so that the credit is checked, not assumed.
    funded_after: Tokens,
    reply: FundingReply,
}

/// Who waits for a funding: a `fund` request (the wallet) or a `spawn` with funds (the agent).
enum FundingReply {
    Wallet(Reply<WalletView>),
    Agent(Reply<AgentView>),
}

/// The shared copy of `v` in `set`, added (as `make` makes it) if new.
fn intern<T: ?Sized + Eq + std::hash::Hash>(
    set: &mut HashSet<Arc<T>>,
    v: &T,
    make: impl FnOnce(&T) -> Arc<T>,
) -> Arc<T> {
    if let Some(a) = set.get(v) {
        return a.clone();
    }
    let a = make(v);
    set.insert(a.clone());
    a
}

/// Sends an answer; a client that hung up is not an error (what it asked for happened, or
/// not, as the answer says), only worth a debug line.
fn answer<T>(reply: Reply<T>, r: Result<T, ApiError>, what: &str) {
    if reply.send(r).is_err() {
        tracing::debug!(what, "a client left before its answer");
    }
}

impl Engine {
    /// An engine around a node whose roster is `roster`, saved in `journal`.
    pub fn new(
        node: Node,
        roster: Vec<Record>,
        journal: Journal,
        data: PathBuf,
        config: Config,
        backend: String,
        shared: Arc<Shared>,
    ) -> Engine {
        let mut roster = roster;
        let mut owners: HashSet<Arc<str>> = HashSet::new();
        let mut programs: HashSet<Arc<ProgramRef>> = HashSet::new();
        for r in &mut roster {
            r.owner = intern(&mut owners, &r.owner, |s| Arc::from(s));
            r.program = intern(&mut programs, &r.program, |p| Arc::new(p.clone()));
        }
        let names = roster
            .iter()
            .enumerate()
            .map(|(i, r)| (r.name.clone(), AgentId(i as u32)))
            .collect();
        // Once, at start: which of the living agents are audited is asked at the first sample.
        let unprobed = (0..roster.len() as u32)
            .map(AgentId)
            .filter(|&id| matches!(node.market().life(id), Some(Life::Alive)))
            .collect();
        let is_dirty = vec![false; roster.len()];
        Engine {
            node,
            roster: roster.into_iter().collect(),
            data,
            config,
            backend,
            shared,
            journal: Some(journal),
            names,
            owners,
            programs,
            reserved: HashSet::new(),
            queued: Vec::new(),
            in_flight: None,
            submitted_at: 0,
            published: 0,
            dirty: Vec::new(),
            is_dirty,
            unprobed,
            audited: BTreeSet::new(),
            energy_uj: 0,
            audits_passed: std::cell::Cell::new(0),
            late: VecDeque::new(),
            work: VecDeque::new(),
            fundings: Vec::new(),
            funding_by_agent: HashMap::new(),
            accepted: 0,
            logs: BTreeMap::new(),
            audit: BTreeMap::new(),
            audit_failed: BTreeSet::new(),
            pool_fundings: Vec::new(),
            sponsors: None,
        }
    }

    fn pool_view(&self, sponsor: Option<&str>) -> BountyPoolView {
        let m = self.node.market();
        let c = m.config();
        BountyPoolView {
            balance: m
                .account_balance(maxwell_core::Account::BountyPool)
                .unwrap_or(Tokens::ZERO),
            rate_milli_per_unit: m.bounty_rate_milli(),
            cap_per_unit: c.bounty_per_unit,
            recycle_income: c.recycle_income,
            horizon_s: c.quantum.0 as f64 * c.bounty_horizon_ticks as f64 / 1e9,
            sponsored: m.pool_funded(),
            nonce: sponsor
                .and_then(|k| self.sponsors.as_ref()?.get(k).copied())
                .unwrap_or(0),
        }
    }

    /// Checks a top-up of the bounty pool (signature, the sponsor's nonce, room in the books),
    /// makes the nonce durable and queues the top-up for the next tick. Top-ups are rare: the
    /// small `sponsors.json` is written here, on the tick thread.
    fn accept_pool_funding(&mut self, req: &FundRequest, tick: u64) -> Result<(), ApiError> {
        self.load_sponsors_once()?;
        let last = self
            .sponsors
            .as_ref()
            .and_then(|m| m.get(&req.owner).copied())
            .unwrap_or(0);
        crate::sign::check_pool_fund(req, &self.shared.node_key, last)
            .map_err(|m| ApiError::new(403, m))?;
        let room = self.mint_room();
        if req.amount > room {
            return Err(ApiError::new(
                400,
                format!(
                    "amount {} is more than the books can still mint ({room}); fund less",
                    req.amount
                ),
            ));
        }
        // The nonce is durable before the money moves: a crash in between loses a top-up (the
        // sponsor signs again), never mints twice.
        let mut next = self.sponsors.clone().unwrap_or_default();
        next.insert(req.owner.clone(), req.nonce);
        let p = sponsors_path(&self.data);
        crate::roster::save_json(&self.data, &p, &next)
            .map_err(|e| ApiError::new(500, format!("cannot save {}: {e}", p.display())))?;
        self.sponsors = Some(next);
        self.node.fund_bounty_pool(req.amount);
        self.emit(
            tick,
            "funding",
            None,
            format!(
                "{} into the bounty pool from sponsor {}",
                req.amount, req.owner
            ),
        );
        Ok(())
    }

    /// What the books can still mint beyond every funding and top-up already accepted.
    fn mint_room(&self) -> Tokens {
        // Top-ups of the pool are rare: walked.
        let queued: u64 = self
            .pool_fundings
            .iter()
            .map(|f| f.0.0)
            .fold(self.accepted, u64::saturating_add);
        Tokens(self.node.market().mintable().0.saturating_sub(queued))
    }

    /// Reads `sponsors.json` the first time the pool's sponsors are needed.
    fn load_sponsors_once(&mut self) -> Result<(), ApiError> {
        if self.sponsors.is_none() {
            self.sponsors = Some(load_sponsors(&self.data)?);
        }
        Ok(())
    }

    /// Answers the pool's top-ups queued before the tick just committed.
    fn answer_pool_fundings(&mut self, sponsored_before: Tokens) {
        let mut expected = sponsored_before;
        for (amount, sponsor, reply) in std::mem::take(&mut self.pool_fundings) {
            expected = expected.saturating_add(amount);
            let r = if self.node.market().pool_funded() >= expected {
                Ok(self.pool_view(Some(&sponsor)))
            } else {
                Err(ApiError::new(
                    500,
                    format!(
                        "the top-up of {amount} was refused by the market (the books would overflow); nothing was credited"
                    ),
                ))
            };
            if reply.send(r).is_err() {
                tracing::debug!(%sponsor, "a top-up's client left before its answer");
            }
        }
    }

    /// Answers the fundings queued before the tick just committed: credited (the wallet as it
    /// now is, durably), or refused with why.
    fn answer_fundings(&mut self) {
        self.funding_by_agent.clear();
        for f in std::mem::take(&mut self.fundings) {
            self.accepted = self.accepted.saturating_sub(f.amount.0);
            let funded = self
                .node
                .market()
                .stats(f.agent)
                .map_or(Tokens::ZERO, |s| s.funded);
            let name = self.roster[f.agent.0 as usize].name.clone();
            let credited = funded >= f.funded_after;
            let refused = || {
                ApiError::new(
                    409,
                    format!(
                        "{name} died before the funding of {} was credited; nothing was \
                         credited (the nonce stays used)",
                        f.amount
                    ),
                )
            };
            let answered = match f.reply {
                FundingReply::Wallet(reply) => reply
                    .send(credited.then(|| self.wallet(f.agent)).ok_or_else(refused))
                    .is_ok(),
                FundingReply::Agent(reply) => reply
                    .send(credited.then(|| self.view(f.agent)).ok_or_else(refused))
                    .is_ok(),
            };
            if !answered {
                // A client that hung up still got its money, if credited: the ledger has it.
                tracing::debug!(agent = %name, credited, "a funding's client left before its answer");
            }
        }
    }

    fn find(&self, name: &str) -> Result<AgentId, ApiError> {
        self.names.get(name).copied().ok_or_else(|| {
            ApiError::new(
                404,
                format!("no agent named {name:?}; `maxwell agents list` shows them"),
            )
        })
    }

    fn view(&self, id: AgentId) -> AgentView {
        self.listed(id).view(&self.backend)
    }

    /// The agent as published.
    fn listed(&self, id: AgentId) -> Listed {
        let r = &self.roster[id.0 as usize];
        let mut l = Listed {
            id: id.0,
            name: r.name.clone(),
            owner: r.owner.clone(),
            state: "unknown",
            cause: None,
            balance: Tokens::ZERO,
            bid: None,
            cpu_ns: 0,
            energy_uj: 0,
            work: 0,
            bounties: Tokens::ZERO,
            quanta: 0,
            syscalls: None,
        };
        self.refresh(&mut l, id);
        l
    }

    /// Updates what changes of a published agent (its name and owner never do).
    fn refresh(&self, l: &mut Listed, id: AgentId) {
        let m = self.node.market();
        let stats = m.stats(id).copied().unwrap_or_default();
        let (state, cause) = state_of(&self.node, id);
        l.state = state;
        l.cause = cause.map(String::into_boxed_str);
        l.balance = m.balance(id).unwrap_or(Tokens::ZERO);
        l.bid = m.bid(id).map(|b| b.price);
        l.cpu_ns = stats.cpu.0;
        l.energy_uj = stats.energy.0;
        l.work = stats.work_claimed;
        l.bounties = stats.bounties;
        l.quanta = stats.quanta_won;
        l.syscalls = self.audit.get(&id).map(|s| Box::new(s.summary().clone()));
    }

    /// Reads the syscall counts of `ids` into their series. An agent whose backend does not
    /// audit syscalls (`None`) is never asked again; nor is one whose counts cannot be read, or
    /// that is dead (these were its counts when it ended).
    fn sample_syscalls(&mut self, tick: u64, ids: &[AgentId]) {
        for &id in ids {
            let keep = match self.node.syscalls(id) {
                None => false,
                Some(Ok(c)) => {
                    let deny = self
                        .roster
                        .get(id.0 as usize)
                        .map(|r| r.deny_syscalls.as_slice())
                        .unwrap_or_default();
                    self.audit.entry(id).or_default().push(tick, &c, deny);
                    self.mark(id);
                    !matches!(self.node.market().life(id), Some(Life::Dead { .. }))
                }
                Some(Err(e)) => {
                    if self.audit_failed.insert(id) {
                        let name = self.roster.get(id.0 as usize).map_or("?", |r| &*r.name);
                        tracing::warn!(agent = %name, error = %e, "cannot read the agent's syscall counts; its series stops");
                    }
                    false
                }
            };
            if keep {
                self.audited.insert(id);
            } else {
                self.audited.remove(&id);
            }
        }
    }

    fn wallet(&self, id: AgentId) -> WalletView {
        let m = self.node.market();
        let r = &self.roster[id.0 as usize];
        let stats = m.stats(id).copied().unwrap_or_default();
        WalletView {
            name: r.name.to_string(),
            balance: m.balance(id).unwrap_or(Tokens::ZERO),
            rent_owed: m.rent_due(id).unwrap_or(Tokens::ZERO),
            funded: stats.funded,
            bounties: stats.bounties,
            spent: stats.spent,
            nonce: r.nonce,
            owner: r.owner.to_string(),
        }
    }

    fn emit(&self, tick: u64, kind: &str, agent: Option<&str>, detail: String) {
        // No subscriber is not an error.
        let _ = self.shared.events.send(Event {
            tick,
            kind: kind.into(),
            agent: agent.map(str::to_owned),
            detail,
        });
    }

    /// Marks a published entry for rebuilding at the next publication.
    fn mark(&mut self, id: AgentId) {
        let i = id.0 as usize;
        if i < self.published
            && let Some(d) = self.is_dirty.get_mut(i)
            && !*d
        {
            *d = true;
            self.dirty.push(id);
        }
    }

    /// Publishes the agent list: the entries marked since the last time are rebuilt, new
    /// agents appended (their views built before the lock is taken).
    fn publish_agents(&mut self) {
        if self.dirty.is_empty() && self.published == self.roster.len() {
            return;
        }
        let new: Vec<Arc<Listed>> = (self.published..self.roster.len())
            .map(|i| Arc::new(self.listed(AgentId(i as u32))))
            .collect();
        let dirty = std::mem::take(&mut self.dirty);
        for id in &dirty {
            self.is_dirty[id.0 as usize] = false;
        }
        // A reader that panicked holding the lock left the list whole (it only clones it).
        let shared = self.shared.clone();
        let mut g = shared.agents.lock().unwrap_or_else(PoisonError::into_inner);
        // The list of pointers is copied only if a reader still holds the previous one; an
        // entry no reader holds is updated in place.
        let list = Arc::make_mut(&mut g);
        for id in dirty {
            if let Some(slot) = list.get_mut(id.0 as usize) {
                match Arc::get_mut(slot) {
                    Some(l) => self.refresh(l, id),
                    None => *slot = Arc::new(self.listed(id)),
                }
            }
        }
        list.extend(new);
        self.published = list.len();
    }

    fn apply(&mut self, op: Op, tick: u64) {
        match op {
            Op::Spawn(req, mut agent, reply) => match self.admit(req.get()) {
                // Takes effect once its record is durable; answered once the tick that credits
                // its opening funds is committed.
                Ok((record, funds)) => {
                    self.reserved.insert(record.name.clone());
                    self.accepted = self.accepted.saturating_add(funds.0);
                    self.queued.push(Awaiting::Spawn {
                        record: Box::new(record),
                        agent,
                        funds,
                        reply,
                    });
                }
                Err(e) => {
                    agent.kill("refused by the daemon");
                    answer(reply, Err(e), "spawn");
                }
            },
            Op::Kill(name, reply) => {
                let r = self.find(&name).and_then(|id| {
                    if matches!(self.node.market().life(id), Some(Life::Dead { .. })) {
                        return Err(ApiError::new(409, format!("{name} is already dead")));
                    }
                    self.node.kill(id);
                    self.emit(tick, "kill", Some(&name), "killed by its owner".into());
                    self.mark(id);
                    Ok(self.view(id))
                });
                answer(reply, r, "kill");
            }
            Op::Fund(name, req, reply) => {
                // Takes effect once its nonce is durable; answered after the tick that credits
                // it is committed.
                if let Err(e) = self.accept_funding(&name, req.get(), reply) {
                    // The reply went back with the error.
                    tracing::debug!(agent = %name, error = %e.message, "funding refused");
                }
            }
            Op::Syscalls(name, reply) => {
                let r = self.find(&name).and_then(|id| {
                    self.audit.get(&id).map(|s| s.view(&name)).ok_or_else(|| {
                        ApiError::new(
                            404,
                            format!(
                                "{name} has no syscall series: only process agents are audited, where the eBPF probes load (`maxwell sensors` says whether they do)"
                            ),
                        )
                    })
                });
                answer(reply, r, "syscalls");
            }
            Op::Logs(name, reply) => {
                let r = self.find(&name).map(|id| crate::api::LogsView {
                    name: name.clone(),
                    lines: self
                        .logs
                        .get(&id)
                        .map(|q| {
                            q.iter()
                                .map(|(tick, line)| crate::api::LogLine {
                                    tick: *tick,
                                    line: line.clone(),
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                    dropped: self.node.logs_dropped(id),
                });
                answer(reply, r, "logs");
            }
            Op::FundPool(req, reply) => match self.accept_pool_funding(&req, tick) {
                Ok(()) => self.pool_fundings.push((req.amount, req.owner, reply)),
                Err(e) => answer(reply, Err(e), "bounty pool funding"),
            },
            Op::Pool(sponsor, reply) => {
                let r = self
                    .load_sponsors_once()
                    .map(|()| self.pool_view(sponsor.as_deref()));
                answer(reply, r, "bounty pool");
            }
            Op::Wallet(name, reply) => {
                let r = self.find(&name).map(|id| self.wallet(id));
                answer(reply, r, "wallet");
            }
        }
    }

    /// Checks a funding (owner, nonce, amount against what the books can hold, the agent's
    /// life; the signature was verified by the API) and queues its nonce for the journal. A
    /// refusal is answered here, and returned.
    fn accept_funding(
        &mut self,
        name: &str,
        req: &FundRequest,
        reply: Reply<WalletView>,
    ) -> Result<(), ApiError> {
        match self.check_funding(name, req) {
            Ok(id) => {
                // The nonce is used from now on (a later request must sign a larger one, even
                // if this one fails to be saved); it is durable before the money moves: a crash
                // in between loses a funding (the owner signs again), never mints twice.
                self.roster[id.0 as usize].nonce = req.nonce;
                self.accepted = self.accepted.saturating_add(req.amount.0);
                self.queued.push(Awaiting::Fund {
                    agent: id,
                    nonce: req.nonce,
                    amount: req.amount,
                    reply,
                });
                Ok(())
            }
            Err(e) => {
                answer(reply, Err(e.clone()), "funding");
                Err(e)
            }
        }
    }

    fn check_funding(&self, name: &str, req: &FundRequest) -> Result<AgentId, ApiError> {
        let id = self.find(name)?;
        let rec = &self.roster[id.0 as usize];
        crate::sign::check_fund_terms(req, name, &rec.owner, rec.nonce)
            .map_err(|m| ApiError::new(403, m))?;
        let room = self.mint_room();
        if req.amount > room {
            return Err(ApiError::new(
                400,
                format!(
                    "amount {} is more than the books can still mint ({room}: all the money \
                     there may ever be is {}, what the ledger's 64-bit columns hold exactly); \
                     fund less",
                    req.amount,
                    maxwell_core::ledger::MAX_SUPPLY
                ),
            ));
        }
        match self.node.market().life(id) {
            Some(Life::Alive) => Ok(id),
            Some(Life::Dying { cause, .. }) => Err(ApiError::new(
                409,
                format!(
                    "{name} is dying ({cause}) and cannot be revived: funds would be lost. \
                     Spawn a new agent and fund it"
                ),
            )),
            _ => Err(ApiError::new(
                409,
                format!("{name} is dead; funds would be lost"),
            )),
        }
    }

    /// Checks a spawn request (its signature was verified by the API) and makes its record;
    /// returns the record and the opening funds.
    fn admit(&mut self, req: &SpawnRequest) -> Result<(Record, Tokens), ApiError> {
        if req.name.is_empty()
            || req.name.len() > 64
            || !req
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(ApiError::new(
                422,
                format!(
                    "agent name {:?} must be 1 to 64 letters, digits, '-', '_' or '.'",
                    req.name
                ),
            ));
        }
        if self.names.contains_key(req.name.as_str()) || self.reserved.contains(req.name.as_str()) {
            return Err(ApiError::new(
                409,
                format!(
                    "an agent named {:?} exists (names are never reused)",
                    req.name
                ),
            ));
        }
        let a = &self.config.agents;
        let memory_max = req.memory_max.unwrap_or(a.memory_max);
        let max_bid = req.max_bid.unwrap_or(a.max_bid);
        let opening = req.opening_bid.unwrap_or(a.opening_bid);
        let (funds, nonce) = req
            .fund
            .as_ref()
            .map_or((Tokens::ZERO, 0), |f| (f.amount, f.nonce));
        // An agent below one slot's energy is insolvent at its first tick: refused here, so
        // that no unfunded agent lingers (each costs a thread or a process).
        let cfg = self.node.market().config();
        let floor = cfg.grid_price.cost(cfg.slot_power.over(cfg.quantum));
        if funds < floor {
            return Err(ApiError::new(
                422,
                format!(
                    "{:?} would have {funds}, less than one slot's energy ({floor}), and die at \
                     its first tick; fund it in the same request (e.g. --fund \"10 JOULE\")",
                    req.name
                ),
            ));
        }
        let room = self.mint_room();
        if funds > room {
            return Err(ApiError::new(
                400,
                format!(
                    "opening funds {funds} are more than the books can still mint ({room}; all \
                     the money there may ever be is {}); fund less",
                    maxwell_core::ledger::MAX_SUPPLY
                ),
            ));
        }
        Ok((
            Record {
                name: Arc::from(req.name.as_str()),
                program: intern(&mut self.programs, &req.program, |p| Arc::new(p.clone())),
                owner: intern(&mut self.owners, &req.owner, |s| Arc::from(s)),
                max_bid,
                opening_bid: opening,
                memory_max,
                nonce,
                deny_syscalls: req.deny_syscalls.clone(),
            },
            funds,
        ))
    }

    /// Hands the lines of the ops accepted since the last batch to the journal, unless a
    /// batch is in flight or the last went less than [`SYNC_EVERY_TICKS`] ticks ago (`n` is
    /// the loop's tick count). A spawn's id is the roster's length when it takes effect: the
    /// ones before it in flight are all admitted by then.
    fn submit(&mut self, n: u64) {
        if self.in_flight.is_some()
            || self.queued.is_empty()
            || n < self.submitted_at.saturating_add(SYNC_EVERY_TICKS)
        {
            return;
        }
        self.submitted_at = n;
        let items = std::mem::take(&mut self.queued);
        let sent = {
            let mut id = self.roster.len() as u32;
            let entries: Vec<Entry<'_>> = items
                .iter()
                .map(|a| match a {
                    Awaiting::Spawn { record, .. } => {
                        let e = Entry::Agent { id, record };
                        id += 1;
                        e
                    }
                    Awaiting::Fund { agent, nonce, .. } => Entry::Nonce {
                        id: agent.0,
                        nonce: *nonce,
                    },
                })
                .collect();
            match self.journal.as_mut() {
                Some(j) => j.submit(&entries),
                None => Err("the roster's journal is closed".to_string()),
            }
        };
        match sent {
            Ok(seq) => self.in_flight = Some((seq, items)),
            Err(why) => {
                tracing::error!(error = %why, "the roster's journal failed; the ops it held are refused");
                for item in items {
                    self.refuse(item, 500, &why);
                }
            }
        }
    }

    /// The batch in flight, once the journal has answered for it: its ops take effect
    /// (durable) or are refused (not written). Returns whether anything happened.
    fn take_durable(&mut self, tick: u64) -> anyhow::Result<bool> {
        if self.in_flight.is_none() {
            return Ok(false);
        }
        let Some(synced) = self.journal.as_ref().and_then(Journal::poll) else {
            return Ok(false);
        };
        let Some((seq, items)) = self.in_flight.take() else {
            return Ok(false);
        };
        if synced.seq != seq {
            anyhow::bail!(
                "the roster's journal answered for batch {} while batch {seq} was in flight",
                synced.seq
            );
        }
        match synced.result {
            Ok(()) => {
                for item in items {
                    self.take_effect(item, tick)?;
                }
            }
            Err(why) => {
                for item in items {
                    self.refuse(item, 500, &why);
                }
            }
        }
        Ok(true)
    }

    /// An op whose line is durable: the market admits the agent, or the funding is queued
    /// for this tick.
    fn take_effect(&mut self, item: Awaiting, tick: u64) -> anyhow::Result<()> {
        match item {
            Awaiting::Spawn {
                record,
                agent,
                funds,
                reply,
            } => {
                self.reserved.remove(&*record.name);
                let want = self.roster.len();
                // Names are unique (checked against every record and every reserved name), so
                // the node cannot refuse it; if it ever did, the durable record and the market
                // would disagree on ids from here on: stop, and a restart resumes both.
                let id = self
                    .node
                    .adopt(agent, funds, record.max_bid, record.opening_bid)
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "the node refused {} after its roster entry was saved: {e}; \
                             stopping so that the roster and the market agree on ids",
                            record.name
                        )
                    })?;
                if id.0 as usize != want {
                    anyhow::bail!(
                        "the market gave {} id {} where the roster has {want} agents; stopping \
                         so that the roster and the market agree on ids",
                        record.name,
                        id.0
                    );
                }
                self.emit(
                    tick,
                    "spawn",
                    Some(&record.name),
                    format!("{} agent funded with {funds}", self.backend),
                );
                self.names.insert(record.name.clone(), id);
                self.roster.push(*record);
                self.is_dirty.push(false);
                self.unprobed.insert(id);
                self.funding_by_agent.insert(id, funds.0);
                self.fundings.push(PendingFunding {
                    agent: id,
                    amount: funds,
                    funded_after: funds,
                    reply: FundingReply::Agent(reply),
                });
            }
            Awaiting::Fund {
                agent,
                amount,
                reply,
                ..
            } => {
                let before = self
                    .node
                    .market()
                    .stats(agent)
                    .map_or(Tokens::ZERO, |s| s.funded);
                let here = self.funding_by_agent.entry(agent).or_default();
                let queued_here = *here;
                *here = here.saturating_add(amount.0);
                self.node.fund(agent, amount);
                let name = self.roster[agent.0 as usize].name.clone();
                self.emit(tick, "funding", Some(&name), format!("{amount} funded"));
                self.mark(agent);
                self.fundings.push(PendingFunding {
                    agent,
                    amount,
                    funded_after: Tokens(
                        before
                            .0
                            .saturating_add(queued_here)
                            .saturating_add(amount.0),
                    ),
                    reply: FundingReply::Wallet(reply),
                });
            }
        }
        Ok(())
    }

    /// Refuses an op whose line was not made durable.
    fn refuse(&mut self, item: Awaiting, status: u16, why: &str) {
        self.accepted = self.accepted.saturating_sub(item.amount().0);
        match item {
            Awaiting::Spawn {
                record,
                mut agent,
                reply,
                ..
            } => {
                self.reserved.remove(&*record.name);
                agent.kill("refused by the daemon");
                let e = ApiError::new(status, format!("{why}; {} was not spawned", record.name));
                answer(reply, Err(e), "spawn");
            }
            Awaiting::Fund { amount, reply, .. } => {
                let e = ApiError::new(
                    status,
                    format!(
                        "{why}; the funding of {amount} was not queued and nothing was credited \
                         (the nonce stays used: sign again with a larger one)"
                    ),
                );
                answer(reply, Err(e), "funding");
            }
        }
    }

    /// Whether ops accepted are still to be answered.
    fn busy(&self) -> bool {
        !self.queued.is_empty()
            || self.in_flight.is_some()
            || !self.fundings.is_empty()
            || !self.pool_fundings.is_empty()
    }

    fn publish(&mut self, report: &maxwell_node::TickReport, full: bool) {
        let m = self.node.market();
        self.energy_uj += u128::from(report.energy.0);
        let names = |id: AgentId| {
            self.roster
                .get(id.0 as usize)
                .map_or_else(|| id.0.to_string(), |r| r.name.to_string())
        };
        let view = MarketView {
            tick: report.tick,
            price: report.price,
            supply: report.supply,
            reserve: m.last_offer().map_or(Tokens::ZERO, |o| o.reserve),
            slots_max: m.config().slots_max,
            depth: m.book_depth(),
            top: m
                .top_bids(5)
                .into_iter()
                .map(|b| BookEntry {
                    agent: names(b.agent),
                    price: b.price,
                })
                .collect(),
            temperature_c: f64::from(report.temperature.0) / 1000.0,
            power_w: report.power.0 as f64 / 1000.0,
            energy_j: self.energy_uj as f64 / 1e6,
            modelled: report.energy_modelled,
            energy_source: self.node.physics().energy_source().detail.clone(),
            bounty_pool: m
                .account_balance(maxwell_core::Account::BountyPool)
                .unwrap_or(Tokens::ZERO),
            bounty_rate_milli: m.bounty_rate_milli(),
            alive: m.n_alive(),
        };
        *self
            .shared
            .market
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = view;
        if full {
            self.publish_agents();
        }
    }

    fn events(&self, r: &maxwell_node::TickReport) {
        if self.shared.events.receiver_count() == 0 {
            return;
        }
        let winners: Vec<String> = r
            .winners
            .iter()
            .filter_map(|w| self.roster.get(w.0 as usize).map(|x| x.name.to_string()))
            .collect();
        self.emit(
            r.tick,
            "clearing",
            None,
            format!(
                "supply {} price {} winners [{}] {:.1} C {:.1} W",
                r.supply,
                r.price,
                winners.join(", "),
                f64::from(r.temperature.0) / 1000.0,
                r.power.0 as f64 / 1000.0
            ),
        );
        for d in &r.deaths {
            self.emit(r.tick, "death", Some(&d.name), d.cause.clone());
        }
        // Passed audits come many a second: one event a second sums them up.
        let n = self.audits_passed.get() + u64::from(r.audits.0);
        self.audits_passed.set(n);
        if r.tick.is_multiple_of(100) && n > 0 {
            self.audits_passed.set(0);
            self.emit(
                r.tick,
                "audit",
                None,
                format!("{n} claims passed their audit in the last second"),
            );
        }
        if r.audits.1 > 0 {
            self.emit(
                r.tick,
                "slash",
                None,
                format!("{} claims failed their audit and were fined", r.audits.1),
            );
        }
    }

    /// Runs until `shared.stop`; then answers the ops already accepted (for at most
    /// [`STOP_GRACE`]), freezes every agent, folds the roster's journal into `agents.json` and
    /// returns (every tick is already in the ledger).
    pub fn run(mut self, ops: Receiver<Op>) -> anyhow::Result<()> {
        let r = self.ticks(&ops);
        // Whatever still waits for the journal is refused (its line may be durable: a spawn
        // the market never saw is left out of the snapshot below, a nonce stays used).
        for item in std::mem::take(&mut self.queued).into_iter().chain(
            self.in_flight
                .take()
                .into_iter()
                .flat_map(|(_, items)| items),
        ) {
            self.refuse(item, 503, "the daemon is stopping");
        }
        for (name, e) in self.node.freeze_all() {
            tracing::warn!(agent = %name, error = %e, "could not freeze at shutdown");
        }
        // The syncer has written all it was given before the journal is emptied.
        if let Some(j) = self.journal.take() {
            j.close();
        }
        if let Err(e) = crate::roster::compact(&self.data, self.roster.iter()) {
            // The journal is whole: the next start folds it in.
            tracing::error!(error = %e, "could not fold the roster's journal in at shutdown");
        }
        tracing::info!(
            tick = self.node.market().tick_count(),
            "stopped: agents frozen, ledger committed"
        );
        r
    }

    fn ticks(&mut self, ops: &Receiver<Op>) -> anyhow::Result<()> {
        let quantum = Duration::from_nanos(self.config.tick.0);
        let mut pacer = maxwell_node::pacer::Pacer::new(quantum);
        let mut n: u64 = 0;
        let mut ops_open = true;
        let mut stopping: Option<Instant> = None;
        let mut settled = false;
        self.publish_agents();
        loop {
            n += 1;
            let due = pacer.wait();
            let began = Instant::now();
            let late = u64::try_from(due.late.as_micros()).unwrap_or(u64::MAX);
            if stopping.is_none() && self.shared.stop.load(Ordering::Acquire) {
                stopping = Some(began);
            }
            if let Some(since) = stopping
                && (!self.busy() || since.elapsed() > STOP_GRACE)
            {
                if settled {
                    return Ok(());
                }
                // One last tick posts every agent's accrued rent, so a clean stop forgives
                // none.
                self.node.settle_rent();
                settled = true;
            }
            let tick = self.node.market().tick_count();
            // What the journal made durable since the last tick takes effect first.
            let mut touched = self.take_durable(tick)?;
            while ops_open && stopping.is_none() {
                match ops.try_recv() {
                    Ok(op) => {
                        self.apply(op, tick);
                        touched = true;
                        if began.elapsed() >= OPS_BUDGET {
                            break;
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => ops_open = false,
                }
            }
            // The journal writes and syncs while the tick runs.
            self.submit(n);
            let sponsored_before = self.node.market().pool_funded();
            let report = self.node.tick(due.now)?;
            for &id in &report.changed {
                self.mark(id);
            }
            for d in &report.deaths {
                tracing::info!(agent = %d.name, cause = %d.cause, tick = d.tick, "apoptosis");
            }
            for (id, line) in &report.logs {
                let name = self.roster.get(id.0 as usize).map_or("?", |r| &*r.name);
                tracing::info!(agent = %name, line = %line, "agent log");
                let q = self.logs.entry(*id).or_default();
                if q.len() >= LOG_LINES_KEPT {
                    q.pop_front();
                }
                q.push_back((report.tick, line.clone()));
            }
            for (id, what) in &report.sandbox_errors {
                let name = self.roster.get(id.0 as usize).map_or("?", |r| &*r.name);
                tracing::warn!(agent = %name, error = %what, "sandbox operation failed");
            }
            self.events(&report);
            if report.tick.is_multiple_of(crate::audit::SAMPLE_TICKS) {
                let ids: Vec<AgentId> = std::mem::take(&mut self.unprobed)
                    .into_iter()
                    .chain(self.audited.iter().copied())
                    .collect();
                self.sample_syscalls(report.tick, &ids);
            }
            // The audited dead (and those not asked yet), once more: their counts when they
            // ended (a forbidden call among them).
            let dead: Vec<AgentId> = report
                .deaths
                .iter()
                .map(|d| d.agent)
                .filter(|id| self.audited.contains(id) || self.unprobed.remove(id))
                .collect();
            self.sample_syscalls(report.tick, &dead);
            self.publish(
                &report,
                touched || n.is_multiple_of(10) || !report.deaths.is_empty(),
            );
            // The tick is committed and listed: its fundings are credited (or refused),
            // durably.
            self.answer_fundings();
            self.answer_pool_fundings(sponsored_before);
            let work = u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX);
            self.record(late, work, due.skipped, report.audit_backlog);
        }
    }

    fn record(&mut self, late: u64, work: u64, skipped: u64, audit_backlog: usize) {
        self.late.push_back(late);
        self.work.push_back(work);
        if self.late.len() > 1000 {
            self.late.pop_front();
            self.work.pop_front();
        }
        let pct = |v: &VecDeque<u64>, p: f64| {
            let mut s: Vec<u64> = v.iter().copied().collect();
            s.sort_unstable();
            s.get(((s.len() as f64 - 1.0) * p).round() as usize)
                .copied()
                .unwrap_or(0)
        };
        let mut g = self
            .shared
            .stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        g.ticks += 1;
        g.skipped = g.skipped.saturating_add(skipped);
        g.audit_backlog = audit_backlog as u64;
        for (n, ms) in g
            .late_over_ms
            .iter_mut()
            .zip(crate::api::LATE_THRESHOLDS_MS)
        {
            *n += u64::from(late > ms * 1000);
        }
        // Percentiles are recomputed every 100 ticks (sorting 1,000 numbers each tick would
        // cost more than the tick itself with idle agents).
        if g.ticks.is_multiple_of(100) || g.ticks < 100 {
            g.late_p50_us = pct(&self.late, 0.5);
            g.late_p99_us = pct(&self.late, 0.99);
            g.late_max_us = self.late.iter().copied().max().unwrap_or(0);
            g.work_p99_us = pct(&self.work, 0.99);
        }
    }
}
