//! The tick loop on its own OS thread. It owns the [`Node`]; the API talks to it through a
//! channel of [`Op`]s (applied at the start of the next tick) and reads what it publishes in
//! [`Shared`]: a snapshot for queries and a broadcast of [`Event`]s.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, oneshot};

use maxwell_core::{AgentId, Life, Tokens};
use maxwell_node::Node;
use maxwell_sandbox::{Agent, AgentSpec, Limits, Program};

use crate::api::{
    AgentView, BookEntry, BountyPoolView, Event, FundRequest, MarketView, ProgramRef, SpawnRequest,
    Stats, WalletView,
};
use crate::config::Config;

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

/// What the API asks of the tick loop.
pub enum Op {
    /// Admit an agent the API thread already started (paused) from the request.
    Spawn(Box<SpawnRequest>, Box<dyn Agent>, Reply<AgentView>),
    /// The owner kills an agent.
    Kill(String, Reply<AgentView>),
    /// Fund a wallet (signature checked by the loop, which knows the owner and nonce).
    Fund(String, FundRequest, Reply<WalletView>),
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

/// What the tick loop publishes.
pub struct Shared {
    /// Market state after the last tick.
    pub market: Mutex<MarketView>,
    /// Agents, refreshed every 10 ticks and after every change.
    pub agents: Mutex<Vec<AgentView>>,
    /// Tick loop health.
    pub stats: Mutex<Stats>,
    /// Events.
    pub events: broadcast::Sender<Event>,
    /// Set to stop: the loop freezes every agent, saves, and returns.
    pub stop: AtomicBool,
    /// The node's public key (hex).
    pub node_key: String,
}

/// One agent of the roster, as saved in `agents.json` (index = market id).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// Name.
    pub name: String,
    /// Program.
    pub program: ProgramRef,
    /// Owner's public key.
    pub owner: String,
    /// Bid cap.
    pub max_bid: Tokens,
    /// Opening bid.
    pub opening_bid: Tokens,
    /// Memory cap.
    pub memory_max: maxwell_core::Bytes,
    /// Last funding nonce.
    pub nonce: u64,
    /// Syscalls that kill it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_syscalls: Vec<String>,
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

/// Writes a small JSON file atomically (temporary file, fsync, rename, fsync of the directory).
fn save_json<T: Serialize + ?Sized>(data: &Path, p: &Path, value: &T) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = p.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(serde_json::to_string_pretty(value)?.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, p)?;
    std::fs::File::open(data)?.sync_all()
}

/// The roster file.
pub fn roster_path(data: &Path) -> PathBuf {
    data.join("agents.json")
}

/// Reads the roster (empty when absent).
pub fn load_roster(data: &Path) -> anyhow::Result<Vec<Record>> {
    let p = roster_path(data);
    match std::fs::read_to_string(&p) {
        Ok(t) => serde_json::from_str(&t).map_err(|e| {
            anyhow::anyhow!(
                "{}: {e}; it is written by the daemon only: restore it from a backup or move \
                 the data directory aside",
                p.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(anyhow::anyhow!("{}: {e}", p.display())),
    }
}

/// Writes the roster atomically (temporary file, fsync, rename).
fn save_roster(data: &Path, roster: &[Record]) -> std::io::Result<()> {
    save_json(data, &roster_path(data), roster)
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

fn state_of(node: &Node, id: AgentId) -> (String, Option<String>) {
    match node.market().life(id) {
        Some(Life::Alive) if node.is_running(id) => ("running".into(), None),
        Some(Life::Alive) => ("frozen".into(), None),
        Some(Life::Dying { cause, .. }) => ("dying".into(), Some(cause.to_string())),
        Some(Life::Dead { cause, .. }) => ("dead".into(), Some(cause.to_string())),
        None => ("unknown".into(), None),
    }
}

/// The tick loop.
pub struct Engine {
    /// The node.
    pub node: Node,
    /// Roster, index = market id.
    pub roster: Vec<Record>,
    /// Data directory.
    pub data: PathBuf,
    /// Configuration.
    pub config: Config,
    /// Backend name.
    pub backend: String,
    /// Published state.
    pub shared: Arc<Shared>,
    energy_uj: u128,
    audits_passed: std::cell::Cell<u64>,
    late: VecDeque<u64>,
    work: VecDeque<u64>,
    /// Fundings queued for the next tick, answered once that tick is committed.
    fundings: Vec<PendingFunding>,
    /// Each agent's most recent log lines, with the tick they arrived.
    logs: BTreeMap<AgentId, VecDeque<(u64, String)>>,
    /// Each audited agent's syscall series.
    audit: BTreeMap<AgentId, crate::audit::Series>,
    /// Agents whose syscalls could not be read (warned once each).
    audit_failed: std::collections::BTreeSet<AgentId>,
    /// Top-ups of the bounty pool queued for the next tick, answered once it is committed.
    pool_fundings: Vec<(Tokens, String, Reply<BountyPoolView>)>,
    /// The pool's sponsors and their last nonces (`sponsors.json`), read at first use.
    sponsors: Option<BTreeMap<String, u64>>,
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

impl Engine {
    /// An engine around a node whose roster is `roster`.
    pub fn new(
        node: Node,
        roster: Vec<Record>,
        data: PathBuf,
        config: Config,
        backend: String,
        shared: Arc<Shared>,
    ) -> Engine {
        Engine {
            node,
            roster,
            data,
            config,
            backend,
            shared,
            energy_uj: 0,
            audits_passed: std::cell::Cell::new(0),
            late: VecDeque::new(),
            work: VecDeque::new(),
            fundings: Vec::new(),
            logs: BTreeMap::new(),
            audit: BTreeMap::new(),
            audit_failed: std::collections::BTreeSet::new(),
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
    /// makes the nonce durable and queues the top-up for the next tick.
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
        save_json(&self.data, &p, &next)
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

    /// What the books can still mint beyond every funding and top-up already queued.
    fn mint_room(&self) -> Tokens {
        let queued: u64 = self
            .fundings
            .iter()
            .map(|f| f.amount.0)
            .chain(self.pool_fundings.iter().map(|f| f.0.0))
            .fold(0, u64::saturating_add);
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
        for f in std::mem::take(&mut self.fundings) {
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
        self.roster
            .iter()
            .position(|r| r.name == name)
            .map(|i| AgentId(i as u32))
            .ok_or_else(|| {
                ApiError::new(
                    404,
                    format!("no agent named {name:?}; `maxwell agents list` shows them"),
                )
            })
    }

    fn view(&self, id: AgentId) -> AgentView {
        let m = self.node.market();
        let r = &self.roster[id.0 as usize];
        let stats = m.stats(id).copied().unwrap_or_default();
        let (state, cause) = state_of(&self.node, id);
        AgentView {
            id: id.0,
            name: r.name.clone(),
            backend: self.backend.clone(),
            state,
            cause,
            balance: m.balance(id).unwrap_or(Tokens::ZERO),
            bid: m.bid(id).map(|b| b.price),
            cpu_s: stats.cpu.0 as f64 / 1e9,
            energy_j: stats.energy.0 as f64 / 1e6,
            work: stats.work_claimed,
            bounties: stats.bounties,
            quanta: stats.quanta_won,
            owner: r.owner.clone(),
            syscalls: self.audit.get(&id).map(|s| s.summary().clone()),
        }
    }

    /// Reads the syscall counts of `ids` into their series.
    fn sample_syscalls(&mut self, tick: u64, ids: &[AgentId]) {
        for &id in ids {
            match self.node.syscalls(id) {
                None => {}
                Some(Ok(c)) => {
                    let deny = self
                        .roster
                        .get(id.0 as usize)
                        .map(|r| r.deny_syscalls.clone())
                        .unwrap_or_default();
                    self.audit.entry(id).or_default().push(tick, &c, &deny);
                }
                Some(Err(e)) if self.audit_failed.insert(id) => {
                    let name = self
                        .roster
                        .get(id.0 as usize)
                        .map_or("?", |r| r.name.as_str());
                    tracing::warn!(agent = %name, error = %e, "cannot read the agent's syscall counts; its series stops");
                }
                // Warned already.
                Some(Err(_)) => {}
            }
        }
    }

    fn wallet(&self, id: AgentId) -> WalletView {
        let m = self.node.market();
        let r = &self.roster[id.0 as usize];
        let stats = m.stats(id).copied().unwrap_or_default();
        WalletView {
            name: r.name.clone(),
            balance: m.balance(id).unwrap_or(Tokens::ZERO),
            funded: stats.funded,
            bounties: stats.bounties,
            spent: stats.spent,
            nonce: r.nonce,
            owner: r.owner.clone(),
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

    fn save(&self) -> Result<(), ApiError> {
        save_roster(&self.data, &self.roster).map_err(|e| {
            ApiError::new(
                500,
                format!("cannot save {}: {e}", roster_path(&self.data).display()),
            )
        })
    }

    fn apply(&mut self, op: Op) {
        let tick = self.node.market().tick_count();
        match op {
            Op::Spawn(req, agent, reply) => {
                match self.spawn(&req, agent, tick) {
                    // Answered once the tick that credits its opening funds is committed.
                    Ok((v, funds)) => self.fundings.push(PendingFunding {
                        agent: AgentId(v.id),
                        amount: funds,
                        funded_after: funds,
                        reply: FundingReply::Agent(reply),
                    }),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
                return;
            }
            Op::Kill(name, reply) => {
                let r = self.find(&name).and_then(|id| {
                    if matches!(self.node.market().life(id), Some(Life::Dead { .. })) {
                        return Err(ApiError::new(409, format!("{name} is already dead")));
                    }
                    self.node.kill(id);
                    self.emit(tick, "kill", Some(&name), "killed by its owner".into());
                    Ok(self.view(id))
                });
                let _ = reply.send(r);
            }
            Op::Fund(name, req, reply) => {
                match self.accept_funding(&name, &req, tick) {
                    // Answered after the tick that credits it is committed.
                    Ok((id, funded_after)) => self.fundings.push(PendingFunding {
                        agent: id,
                        amount: req.amount,
                        funded_after,
                        reply: FundingReply::Wallet(reply),
                    }),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
                return;
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
                let _ = reply.send(r);
                return;
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
                let _ = reply.send(r);
                return;
            }
            Op::FundPool(req, reply) => {
                match self.accept_pool_funding(&req, tick) {
                    Ok(()) => self.pool_fundings.push((req.amount, req.owner, reply)),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
                return;
            }
            Op::Pool(sponsor, reply) => {
                let r = self
                    .load_sponsors_once()
                    .map(|()| self.pool_view(sponsor.as_deref()));
                let _ = reply.send(r);
                return;
            }
            Op::Wallet(name, reply) => {
                let _ = reply.send(self.find(&name).map(|id| self.wallet(id)));
                return;
            }
        }
        // A client that changed something sees the change in its next listing.
        self.refresh_agents();
    }

    /// Checks a funding (signature, nonce, amount against what the books can hold, the
    /// agent's life), makes its nonce durable and queues it for the next tick. Returns the
    /// agent and the funded total the wallet must reach once it is credited.
    fn accept_funding(
        &mut self,
        name: &str,
        req: &FundRequest,
        tick: u64,
    ) -> Result<(AgentId, Tokens), ApiError> {
        let id = self.find(name)?;
        let rec = &self.roster[id.0 as usize];
        crate::sign::check_fund(req, &self.shared.node_key, name, &rec.owner, rec.nonce)
            .map_err(|m| ApiError::new(403, m))?;
        if req.amount == Tokens::ZERO {
            return Err(ApiError::new(
                400,
                "amount must be at least 1 micro-JOULE (e.g. \"10 JOULE\")",
            ));
        }
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
            Some(Life::Alive) => {}
            Some(Life::Dying { cause, .. }) => {
                return Err(ApiError::new(
                    409,
                    format!(
                        "{name} is dying ({cause}) and cannot be revived: funds would be lost. \
                         Spawn a new agent and fund it"
                    ),
                ));
            }
            _ => {
                return Err(ApiError::new(
                    409,
                    format!("{name} is dead; funds would be lost"),
                ));
            }
        }
        // The nonce is durable before the money moves: a crash in between loses a funding
        // (the owner signs again), never mints twice.
        self.roster[id.0 as usize].nonce = req.nonce;
        self.save()?;
        let before = self
            .node
            .market()
            .stats(id)
            .map_or(Tokens::ZERO, |s| s.funded);
        let queued_here: u64 = self
            .fundings
            .iter()
            .filter(|f| f.agent == id)
            .map(|f| f.amount.0)
            .sum();
        self.node.fund(id, req.amount);
        self.emit(
            tick,
            "funding",
            Some(name),
            format!("{} funded", req.amount),
        );
        Ok((
            id,
            Tokens(
                before
                    .0
                    .saturating_add(queued_here)
                    .saturating_add(req.amount.0),
            ),
        ))
    }

    fn refresh_agents(&self) {
        let agents: Vec<AgentView> = (0..self.roster.len() as u32)
            .map(|i| self.view(AgentId(i)))
            .collect();
        if let Ok(mut g) = self.shared.agents.lock() {
            *g = agents;
        }
    }

    fn spawn(
        &mut self,
        req: &SpawnRequest,
        mut agent: Box<dyn Agent>,
        tick: u64,
    ) -> Result<(AgentView, Tokens), ApiError> {
        let r = self.admit(req);
        match r {
            Ok((funds, max_bid, opening)) => {
                match self.node.adopt(agent, funds, max_bid, opening) {
                    Ok(got) => {
                        self.emit(
                            tick,
                            "spawn",
                            Some(&req.name),
                            format!("{} agent funded with {funds}", self.backend),
                        );
                        Ok((self.view(got), funds))
                    }
                    Err(e) => {
                        self.roster.pop();
                        let _ = self.save();
                        Err(ApiError::new(
                            422,
                            format!("cannot start {}: {e}", req.name),
                        ))
                    }
                }
            }
            Err(e) => {
                agent.kill("refused by the daemon");
                Err(e)
            }
        }
    }

    /// Checks a spawn request and records it in the roster; returns funds, bid cap and opening
    /// bid.
    fn admit(&mut self, req: &SpawnRequest) -> Result<(Tokens, Tokens, Tokens), ApiError> {
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
        if self.roster.iter().any(|r| r.name == req.name) {
            return Err(ApiError::new(
                409,
                format!(
                    "an agent named {:?} exists (names are never reused)",
                    req.name
                ),
            ));
        }
        crate::sign::parse_public_key(&req.owner).map_err(|m| ApiError::new(422, m))?;
        let a = &self.config.agents;
        let memory_max = req.memory_max.unwrap_or(a.memory_max);
        let max_bid = req.max_bid.unwrap_or(a.max_bid);
        let opening = req.opening_bid.unwrap_or(a.opening_bid);
        let (funds, nonce) = match &req.fund {
            Some(f) => {
                crate::sign::check_fund(f, &self.shared.node_key, &req.name, &req.owner, 0)
                    .map_err(|m| ApiError::new(403, m))?;
                (f.amount, f.nonce)
            }
            None => (Tokens::ZERO, 0),
        };
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
        // Saved before the market admits it, so ids in the ledger always have a record.
        self.roster.push(Record {
            name: req.name.clone(),
            program: req.program.clone(),
            owner: req.owner.clone(),
            max_bid,
            opening_bid: opening,
            memory_max,
            nonce,
            deny_syscalls: req.deny_syscalls.clone(),
        });
        if let Err(e) = self.save() {
            self.roster.pop();
            return Err(e);
        }
        Ok((funds, max_bid, opening))
    }

    fn publish(&mut self, report: &maxwell_node::TickReport, full: bool) {
        let m = self.node.market();
        self.energy_uj += u128::from(report.energy.0);
        let names = |id: AgentId| {
            self.roster
                .get(id.0 as usize)
                .map_or_else(|| id.0.to_string(), |r| r.name.clone())
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
            alive: (0..m.n_agents() as u32)
                .filter(|&i| matches!(m.life(AgentId(i)), Some(Life::Alive)))
                .count(),
        };
        if let Ok(mut g) = self.shared.market.lock() {
            *g = view;
        }
        if full {
            self.refresh_agents();
        }
    }

    fn events(&self, r: &maxwell_node::TickReport) {
        if self.shared.events.receiver_count() == 0 {
            return;
        }
        let winners: Vec<String> = r
            .winners
            .iter()
            .filter_map(|w| self.roster.get(w.0 as usize).map(|x| x.name.clone()))
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

    /// Runs until `shared.stop`; then freezes every agent and returns (every tick is already
    /// in the ledger).
    pub fn run(mut self, ops: Receiver<Op>) -> anyhow::Result<()> {
        let quantum = Duration::from_nanos(self.config.tick.0);
        let mut pacer = maxwell_node::pacer::Pacer::new(quantum);
        let mut n: u64 = 0;
        let mut ops_open = true;
        self.refresh_agents();
        loop {
            n += 1;
            let due = pacer.wait();
            let began = Instant::now();
            let late = u64::try_from(due.late.as_micros()).unwrap_or(u64::MAX);
            if self.shared.stop.load(Ordering::Acquire) {
                break;
            }
            let mut changed = false;
            while ops_open {
                match ops.try_recv() {
                    Ok(op) => {
                        self.apply(op);
                        changed = true;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => ops_open = false,
                }
            }
            let sponsored_before = self.node.market().pool_funded();
            let report = self.node.tick(due.now)?;
            // The tick is committed: its fundings are credited (or refused), durably.
            self.answer_fundings();
            self.answer_pool_fundings(sponsored_before);
            for d in &report.deaths {
                tracing::info!(agent = %d.name, cause = %d.cause, tick = d.tick, "apoptosis");
            }
            for (id, line) in &report.logs {
                let name = self
                    .roster
                    .get(id.0 as usize)
                    .map_or("?", |r| r.name.as_str());
                tracing::info!(agent = %name, line = %line, "agent log");
                let q = self.logs.entry(*id).or_default();
                if q.len() >= LOG_LINES_KEPT {
                    q.pop_front();
                }
                q.push_back((report.tick, line.clone()));
            }
            for (id, what) in &report.sandbox_errors {
                let name = self
                    .roster
                    .get(id.0 as usize)
                    .map_or("?", |r| r.name.as_str());
                tracing::warn!(agent = %name, error = %what, "sandbox operation failed");
            }
            self.events(&report);
            let dead: Vec<AgentId> = report.deaths.iter().map(|d| d.agent).collect();
            if report.tick.is_multiple_of(crate::audit::SAMPLE_TICKS) {
                let alive: Vec<AgentId> = (0..self.roster.len() as u32)
                    .map(AgentId)
                    .filter(|&id| matches!(self.node.market().life(id), Some(Life::Alive)))
                    .collect();
                self.sample_syscalls(report.tick, &alive);
            }
            // The dead, once more: their counts when they ended (a forbidden call among them).
            self.sample_syscalls(report.tick, &dead);
            self.publish(
                &report,
                changed || n.is_multiple_of(10) || !report.deaths.is_empty(),
            );
            let work = u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX);
            self.record(late, work, due.skipped, report.audit_backlog);
        }
        for (name, e) in self.node.freeze_all() {
            tracing::warn!(agent = %name, error = %e, "could not freeze at shutdown");
        }
        if let Err(e) = save_roster(&self.data, &self.roster) {
            tracing::error!(error = %e, "could not save the roster at shutdown");
        }
        tracing::info!(
            tick = self.node.market().tick_count(),
            "stopped: agents frozen, ledger committed"
        );
        Ok(())
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
        if let Ok(mut g) = self.shared.stats.lock() {
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
            // Percentiles are recomputed every 100 ticks (sorting 1,000 numbers each tick
            // would cost more than the tick itself with idle agents).
            if g.ticks.is_multiple_of(100) || g.ticks < 100 {
                g.late_p50_us = pct(&self.late, 0.5);
                g.late_p99_us = pct(&self.late, 0.99);
                g.late_max_us = self.late.iter().copied().max().unwrap_or(0);
                g.work_p99_us = pct(&self.work, 0.99);
            }
        }
    }
}
