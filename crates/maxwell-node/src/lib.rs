//! # maxwell-node: the driver around the pure market
//!
//! One [`Node`] owns a [`Market`], the machine's [`Physics`], a [`Sandbox`] with its agents, and
//! optionally a durable [`Ledger`]. Each [`Node::tick`]:
//!
//! 1. samples physics for the quantum that ended (energy, temperature; modelled where the
//!    hardware hides them);
//! 2. collects each agent's usage and words: bids become commands, claims become market claims
//!    (only a claim of a range the node's [`Dispenser`] leased to that agent is accepted, so work
//!    never collides and cannot be reserved), violations and exits become `Kill` commands;
//! 3. runs `Market::tick`;
//! 4. commits the tick's batch to the ledger (before acting on it: a crash never acts on a tick
//!    that is not durable);
//! 5. hands the claims the market drew for audit to the [`audit::Auditor`]'s worker thread,
//!    whose verdicts reach the market at the first tick after they are ready (a recomputation
//!    never delays a tick);
//! 6. kills the dead, freezes the dying and the losers, resumes the winners, and tells each
//!    winner its balance, the price and its net income per quantum, and tops up the ranges of
//!    work leased to it.
//!
//! The node reads no clock itself: the caller passes `now` (the daemon and the experiment use a
//! monotonic clock; tests may pass anything monotone).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use maxwell_core::work::{Dispenser, PrimeClaim, units};
use maxwell_core::{
    AgentId, Cause, Claim, ClaimId, Command, Life, Market, MarketConfig, MicroJoules, MilliCelsius,
    MilliWatts, Nanos, TickInput, Tokens,
};
use maxwell_ledger::Ledger;
use maxwell_physics::Physics;
use maxwell_sandbox::{Agent, AgentSpec, ExitReason, Message, Sandbox, SandboxError, Status};

/// The market configuration `base`, with the thermal controller's sustainable power taken from
/// the physics model when the temperature is modelled: the model knows exactly how much power
/// holds the die at the control temperature (`(T_control - T_ambient) / R - P_idle`), so the
/// controller need not discover it through its integral term. With a real sensor, `base` is
/// returned unchanged (its estimate stands until the controller corrects it).
pub fn tuned_for(base: MarketConfig, physics: &Physics) -> MarketConfig {
    if !physics.temperature_source().modelled {
        return base;
    }
    let p = physics.model_params();
    let pid = &base.pid;
    let sustainable = MilliWatts(
        p.rc.sustainable_power(pid.temp_control)
            .0
            .saturating_sub(p.idle.0),
    );
    let max = MilliWatts(
        p.active_per_core
            .0
            .saturating_mul(u64::from(base.slots_max))
            .max(1),
    );
    MarketConfig {
        pid: maxwell_core::pricing::PidConfig::estimated(
            pid.temp_switch_on,
            pid.temp_control,
            sustainable.min(max),
            max,
        ),
        ..base
    }
}

pub mod audit;
pub mod defaults;
pub mod pacer;

/// Ranges of work kept queued for each agent that runs: about three quanta of the scientist's
/// sieving, so a resumed agent never waits for the next tick to be handed work.
pub const LEASE_AHEAD: usize = 32;

/// Node failures.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The market configuration is invalid.
    #[error("market configuration: {0}")]
    Config(#[from] maxwell_core::market::MarketConfigError),
    /// A sandbox refused.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// The ledger refused a batch or failed.
    #[error(transparent)]
    Ledger(#[from] maxwell_ledger::LedgerError),
    /// An agent name is taken.
    #[error("an agent named {0:?} already exists; names must be unique")]
    DuplicateName(String),
    /// The audit worker could not start or is gone.
    #[error("audits: {0}")]
    Auditor(String),
}

/// The slots by agent id, in a [`Dense`](maxwell_core::dense::Dense) array (ids count up from
/// zero; a dead agent restored from the ledger has none): one `Slot` of memory per agent, where
/// a map ordered by id held about twice that.
#[derive(Default)]
struct Slots(maxwell_core::dense::Dense<Option<Slot>>);

impl Slots {
    fn get(&self, id: &AgentId) -> Option<&Slot> {
        self.0.get(id.0 as usize)?.as_ref()
    }

    fn get_mut(&mut self, id: &AgentId) -> Option<&mut Slot> {
        self.0.get_mut(id.0 as usize)?.as_mut()
    }

    fn insert(&mut self, id: AgentId, slot: Slot) {
        let i = id.0 as usize;
        while self.0.len() <= i {
            self.0.push(None);
        }
        self.0[i] = Some(slot);
    }
}

struct Slot {
    name: std::sync::Arc<str>,
    agent: Box<dyn Agent>,
    running: bool,
    killed: bool,
    exit_reported: bool,
    /// Ticks it has been frozen through. After a whole frozen quantum it has nothing new to
    /// say (no CPU, no words), so it is polled only every [`FROZEN_POLL`] ticks: idle agents
    /// cost the tick loop almost nothing.
    frozen_for: u64,
    /// Quanta it had won when its words were last drained: the income the market has paid it
    /// covers exactly those (its claims are paid the tick they are drained).
    quanta_drained: u64,
    /// Log lines it may still send in this period of [`LOG_PERIOD_TICKS`].
    log_budget: u32,
    /// The period `log_budget` belongs to (budgets are renewed when a line arrives in a new
    /// period, not by a sweep over every agent).
    log_period: u64,
    /// Whether its backend needs it polled while frozen (a process can be killed from
    /// outside); a frozen WASM agent cannot change, so it is never visited.
    poll_frozen: bool,
    /// Its entry in `Node::polls`, while it has one.
    poll_due: Option<u64>,
    /// Log lines dropped: over its budget, or by its mailbox's bound.
    logs_dropped: u64,
}

/// Log lines an agent may send per [`LOG_PERIOD_TICKS`] (10 a second at 10 ms ticks); more are
/// dropped and counted.
pub const LOG_LINES_PER_PERIOD: u32 = 10;
/// The period of the log budget, in ticks.
pub const LOG_PERIOD_TICKS: u64 = 100;

/// How often a frozen agent's usage and status are read anyway (exits while frozen, such as a
/// process killed from outside, are noticed within this many ticks).
pub const FROZEN_POLL: u64 = 10;

/// The first tick after `tick` at which a frozen agent is polled: every [`FROZEN_POLL`] ticks,
/// staggered by id so that the polls of many agents spread over the ticks.
fn next_poll(tick: u64, id: AgentId) -> u64 {
    let phase = u64::from(id.0) % FROZEN_POLL;
    let next = tick + 1;
    next + (phase + FROZEN_POLL - next % FROZEN_POLL) % FROZEN_POLL
}

/// A death, as the node reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeathReport {
    /// The market's id.
    pub agent: AgentId,
    /// The agent's name.
    pub name: String,
    /// Why, in words.
    pub cause: String,
    /// The tick it died.
    pub tick: u64,
}

/// What one tick did.
#[derive(Debug, Clone, Serialize)]
pub struct TickReport {
    /// The tick number.
    pub tick: u64,
    /// Slots sold.
    pub supply: u32,
    /// Clearing price.
    pub price: Tokens,
    /// Who runs in the coming quantum.
    pub winners: Vec<AgentId>,
    /// Die temperature.
    pub temperature: MilliCelsius,
    /// Power over the quantum that ended.
    pub power: MilliWatts,
    /// Energy over the quantum that ended.
    pub energy: MicroJoules,
    /// Whether energy came from the model.
    pub energy_modelled: bool,
    /// Agents that died this tick.
    pub deaths: Vec<DeathReport>,
    /// Claims whose audit verdicts reached the market this tick: passed, failed.
    pub audits: (u32, u32),
    /// Audits asked for and not answered yet (recomputations queued on the audit worker).
    pub audit_backlog: usize,
    /// Claims refused: the range was not leased to the claimant (someone else's, already
    /// claimed, or never handed out).
    pub refused_claims: u32,
    /// Sandbox operations that failed this tick, with the agent and what failed (a usage read,
    /// a resume, a pause). A failed usage read keeps the last known memory for rent; a failed
    /// resume or pause kills the agent (`Cause::Limit`), since it can no longer be held to the
    /// quantum it paid for.
    pub sandbox_errors: Vec<(AgentId, String)>,
    /// Commands and claims the market refused, with the reason.
    pub refused: Vec<String>,
    /// Claims accepted this tick (not duplicates), by agent.
    pub claims: Vec<(AgentId, PrimeClaim)>,
    /// Log lines agents sent, within their budget (each cut to 512 bytes by the sandbox).
    pub logs: Vec<(AgentId, String)>,
    /// Agents whose state, wallet or usage may have changed this tick (visited, won, lost,
    /// dying, dead, or named in a transfer), in id order: what a listing must refresh.
    pub changed: Vec<AgentId>,
}

/// The tick loop's state.
pub struct Node {
    market: Market,
    physics: Physics,
    sandbox: Box<dyn Sandbox>,
    ledger: Option<Ledger>,
    slots: Slots,
    /// Agents visited every tick: running, or frozen for less than two ticks (their last
    /// words are still drained), or new (their first usage is still to be read).
    active: BTreeSet<AgentId>,
    /// Frozen agents whose backend wants them polled, by the tick they are next due.
    polls: BTreeSet<(u64, AgentId)>,
    /// Running agents.
    running: BTreeSet<AgentId>,
    /// Names, for unique names without a scan.
    names: HashMap<std::sync::Arc<str>, AgentId>,
    commands: Vec<Command>,
    pending: BTreeMap<ClaimId, PrimeClaim>,
    auditor: audit::Auditor,
    work: Dispenser,
    next_claim: u64,
    last_now: Option<Nanos>,
    deaths: Vec<DeathReport>,
}

impl Node {
    /// A node with no agents. With a ledger, every tick's batch is committed before it is acted
    /// on.
    pub fn new(
        config: MarketConfig,
        physics: Physics,
        sandbox: Box<dyn Sandbox>,
        ledger: Option<Ledger>,
    ) -> Result<Node, NodeError> {
        Ok(Node {
            market: Market::new(config)?,
            physics,
            sandbox,
            ledger,
            slots: Slots::default(),
            active: BTreeSet::new(),
            polls: BTreeSet::new(),
            running: BTreeSet::new(),
            names: HashMap::new(),
            commands: Vec::new(),
            pending: BTreeMap::new(),
            auditor: audit::Auditor::start()
                .map_err(|e| NodeError::Auditor(format!("cannot start the worker thread: {e}")))?,
            work: Dispenser::default(),
            next_claim: 0,
            last_now: None,
            deaths: Vec::new(),
        })
    }

    /// Spawns an agent (paused), funds its wallet with `funds` and places its owner's opening
    /// bid at the next tick. An agent bids itself only while it runs, so without an opening bid
    /// it would never run; after its first quantum its own bids replace the opening one.
    pub fn spawn(
        &mut self,
        spec: &AgentSpec,
        funds: Tokens,
        max_bid: Tokens,
        opening_bid: Tokens,
    ) -> Result<AgentId, NodeError> {
        if self.names.contains_key(spec.name.as_str()) {
            return Err(NodeError::DuplicateName(spec.name.clone()));
        }
        let agent = self.sandbox.spawn(spec)?;
        self.adopt(agent, funds, max_bid, opening_bid)
    }

    /// [`Node::spawn`] for an agent already started (paused) by a sandbox elsewhere: the
    /// daemon compiles modules off the tick thread, so a spawn never delays a tick.
    pub fn adopt(
        &mut self,
        mut agent: Box<dyn Agent>,
        funds: Tokens,
        max_bid: Tokens,
        opening_bid: Tokens,
    ) -> Result<AgentId, NodeError> {
        let name = agent.name().to_owned();
        if self.names.contains_key(name.as_str()) {
            agent.kill("refused: duplicate name");
            return Err(NodeError::DuplicateName(name));
        }
        let id = self.market.admit(maxwell_core::AgentSpec { max_bid });
        if funds > Tokens::ZERO {
            self.commands.push(Command::Fund {
                agent: id,
                amount: funds,
            });
        }
        self.commands.push(Command::OpeningBid {
            agent: id,
            price: opening_bid,
        });
        self.insert_slot(id, name, agent);
        Ok(id)
    }

    /// A node resumed from its ledger after a restart. `roster` holds every agent ever admitted,
    /// in id order: its spec (`None` if it is dead, or its program is gone), its `max_bid` and
    /// the owner's opening bid. Wallets and deaths come from the ledger; living agents are
    /// started afresh (their programs restart; their memory is not checkpointed), and ranges of
    /// work accepted before the restart stay claimed.
    pub fn restore(
        config: MarketConfig,
        physics: Physics,
        sandbox: Box<dyn Sandbox>,
        ledger: Ledger,
        roster: &[(Option<AgentSpec>, Tokens, Tokens)],
    ) -> Result<Node, NodeError> {
        let max_bids: Vec<Tokens> = roster.iter().map(|r| r.1).collect();
        let ranges = ledger.work_ranges()?;
        // Each wallet's history (funded, bounties, spending, quanta, work claimed) survives a
        // restart with its balance.
        let mut history: BTreeMap<AgentId, maxwell_core::AgentStats> = ledger
            .history()
            .iter()
            .map(|(&id, h)| {
                let stats = maxwell_core::AgentStats {
                    funded: h.funded,
                    bounties: h.bounties,
                    quanta_won: h.quanta_won,
                    spent: maxwell_core::market::Spending {
                        slots: h.slots,
                        rent: h.rent,
                        landauer: h.landauer,
                        fines: h.fines,
                    },
                    ..maxwell_core::AgentStats::default()
                };
                (id, stats)
            })
            .collect();
        for &(id, start, end) in &ranges {
            let s = history.entry(id).or_default();
            s.work_claimed = s.work_claimed.saturating_add(units(start, end));
        }
        let market = Market::restore(
            config,
            ledger.books().clone(),
            &max_bids,
            ledger.deaths(),
            &history,
            ledger.last_tick().unwrap_or(0),
        )?;
        let after = ranges.iter().map(|&(_, _, end)| end).max().unwrap_or(0);
        let mut node = Node::new(market.config().clone(), physics, sandbox, Some(ledger))?;
        node.market = market;
        node.work = Dispenser::resuming_after(after);
        for (i, (spec, _, opening)) in roster.iter().enumerate() {
            let id = AgentId(i as u32);
            let Some(spec) = spec else { continue };
            if !matches!(node.market.life(id), Some(Life::Alive)) {
                continue;
            }
            let agent = node.sandbox.spawn(spec)?;
            node.commands.push(Command::OpeningBid {
                agent: id,
                price: *opening,
            });
            node.insert_slot(id, spec.name.clone(), agent);
        }
        Ok(node)
    }

    /// A new agent's slot: visited from the next tick (its first usage is read then).
    fn insert_slot(&mut self, id: AgentId, name: String, agent: Box<dyn Agent>) {
        // One copy of the name, shared by the index and the slot.
        let name: std::sync::Arc<str> = name.into();
        self.names.insert(name.clone(), id);
        self.active.insert(id);
        let poll_frozen = agent.poll_while_frozen();
        self.slots.insert(
            id,
            Slot {
                name,
                agent,
                running: false,
                killed: false,
                exit_reported: false,
                frozen_for: 0,
                quanta_drained: 0,
                log_budget: LOG_LINES_PER_PERIOD,
                log_period: 0,
                poll_frozen,
                poll_due: None,
                logs_dropped: 0,
            },
        );
    }

    /// Mints `amount` into an agent's wallet at the next tick (the caller checked the owner's
    /// signature).
    pub fn fund(&mut self, agent: AgentId, amount: Tokens) {
        self.commands.push(Command::Fund { agent, amount });
    }

    /// Whether the agent is running this quantum.
    pub fn is_running(&self, agent: AgentId) -> bool {
        self.slots.get(&agent).is_some_and(|s| s.running)
    }

    /// Mints `amount` into the bounty pool at the next tick.
    pub fn fund_bounty_pool(&mut self, amount: Tokens) {
        self.commands.push(Command::FundBountyPool { amount });
    }

    /// The agent's syscalls since it started, where its backend audits them (after its death:
    /// its counts when it ended).
    pub fn syscalls(
        &mut self,
        agent: AgentId,
    ) -> Option<Result<maxwell_sandbox::CallCounts, maxwell_sandbox::SandboxError>> {
        self.slots.get_mut(&agent)?.agent.syscalls()
    }

    /// Posts every living agent's accrued rent at the next tick (before a clean stop: rent is
    /// otherwise posted once per agent's period, and what is unposted at a stop is forgiven).
    pub fn settle_rent(&mut self) {
        self.commands.push(Command::SettleRent);
    }

    /// Asks for an agent's death (its owner's wish), at the next tick.
    pub fn kill(&mut self, agent: AgentId) {
        self.commands.push(Command::Kill {
            agent,
            cause: Cause::Owner,
        });
    }

    /// The market, for reading state.
    pub fn market(&self) -> &Market {
        &self.market
    }

    /// The physics in use.
    pub fn physics(&self) -> &Physics {
        &self.physics
    }

    /// An agent's name.
    pub fn name(&self, agent: AgentId) -> Option<&str> {
        self.slots.get(&agent).map(|s| &*s.name)
    }

    /// Every death so far.
    pub fn deaths(&self) -> &[DeathReport] {
        &self.deaths
    }

    /// The ledger, if any.
    pub fn ledger(&self) -> Option<&Ledger> {
        self.ledger.as_ref()
    }

    /// Log lines an agent sent that were dropped (over its budget of
    /// [`LOG_LINES_PER_PERIOD`], or by its mailbox's bound).
    pub fn logs_dropped(&self, agent: AgentId) -> u64 {
        self.slots.get(&agent).map_or(0, |s| s.logs_dropped)
    }

    /// One tick at time `now` (monotone; the first call only starts the clock's count).
    pub fn tick(&mut self, now: Nanos) -> Result<TickReport, NodeError> {
        let dt = Nanos(
            self.last_now
                .map_or(self.market.config().quantum.0, |last| {
                    now.0.saturating_sub(last.0)
                })
                .max(1),
        );
        self.last_now = Some(now);
        let reading = self.physics.sample(dt);
        let idle = MicroJoules(
            self.physics
                .model_params()
                .idle
                .over(dt)
                .0
                .min(reading.energy.0),
        );

        let mut usage = Vec::new();
        let mut claims = Vec::new();
        let mut refused_claims = 0u32;
        let mut accepted = Vec::new();
        let mut sandbox_errors = Vec::new();
        let mut logs = Vec::new();
        let tick_no = self.market.tick_count() + 1;
        let log_period = tick_no / LOG_PERIOD_TICKS;
        // Only agents that can have changed are visited: the active ones and the frozen ones
        // whose poll is due. A frozen WASM agent is not visited at all.
        let mut visit: BTreeSet<AgentId> = self.active.clone();
        while let Some(&(due, id)) = self.polls.first() {
            if due > tick_no {
                break;
            }
            self.polls.pop_first();
            visit.insert(id);
        }
        let mut polled = Vec::new();
        for &id in &visit {
            let Some(slot) = self.slots.get_mut(&id) else {
                continue;
            };
            if slot.killed {
                continue;
            }
            if !self.active.contains(&id) {
                polled.push(id);
            }
            if slot.log_period != log_period {
                slot.log_period = log_period;
                slot.log_budget = LOG_LINES_PER_PERIOD;
            }
            // A failed read reports nothing: the market keeps charging rent on the memory it
            // last knew, rather than on zero.
            match slot.agent.usage() {
                Ok(u) => usage.push(maxwell_core::Usage {
                    agent: id,
                    cpu: u.cpu,
                    // Every agent pays rent on at least the floor: none lives for free.
                    resident: u.resident.max(maxwell_core::defaults::RENT_FLOOR),
                    erased: u.erased,
                }),
                Err(e) => sandbox_errors.push((id, format!("usage: {e}"))),
            }
            // A dying agent's words no longer trade: it is frozen out of the market.
            let alive = matches!(self.market.life(id), Some(Life::Alive));
            slot.quanta_drained = self.market.stats(id).map_or(0, |s| s.quanta_won);
            for m in slot.agent.drain() {
                if !alive {
                    continue;
                }
                match m {
                    Message::Bid { price } => self.commands.push(Command::Bid { agent: id, price }),
                    Message::CancelBid => self.commands.push(Command::CancelBid { agent: id }),
                    Message::Claim(c) => {
                        // Only a range leased to this agent, once: no collisions, no
                        // squatting, and a claim's width (so its audit cost) is one lease.
                        if self.work.redeem(id.0, c.start, c.end).is_err() {
                            refused_claims += 1;
                            continue;
                        }
                        self.next_claim += 1;
                        let cid = ClaimId(self.next_claim);
                        self.pending.insert(cid, c);
                        accepted.push((id, c));
                        claims.push(Claim {
                            id: cid,
                            agent: id,
                            units: units(c.start, c.end),
                        });
                    }
                    Message::Log(line) => {
                        if slot.log_budget > 0 {
                            slot.log_budget -= 1;
                            logs.push((id, line));
                        } else {
                            slot.logs_dropped += 1;
                        }
                    }
                    Message::Dropped(n) => slot.logs_dropped += n,
                    Message::Violation(what) => self.commands.push(Command::Kill {
                        agent: id,
                        cause: Cause::Limit { what },
                    }),
                }
            }
            // An agent that ended on its own (trap, memory cap, crash) is reported once.
            if !slot.exit_reported
                && let Status::Exited(e) = slot.agent.status()
                && e.reason != ExitReason::Killed
            {
                slot.exit_reported = true;
                self.commands.push(Command::Kill {
                    agent: id,
                    cause: Cause::Limit {
                        what: format!("{:?}: {}", e.reason, e.detail),
                    },
                });
            }
        }

        let verdicts = self
            .auditor
            .ready()
            .map_err(|e| NodeError::Auditor(e.to_string()))?;
        let audits = (
            verdicts.iter().filter(|v| v.passed).count() as u32,
            verdicts.iter().filter(|v| !v.passed).count() as u32,
        );
        let outcome = self.market.tick(TickInput {
            now,
            temperature: reading.temperature,
            energy: reading.energy,
            energy_idle: idle,
            machine_cpu: self.physics.machine_busy(dt),
            usage,
            commands: std::mem::take(&mut self.commands),
            claims,
            verdicts,
        });
        // Durable before acted on.
        // A tick that moved no money, killed nobody and accepted no work changes nothing
        // durable: it is not written (an idle node does not fsync a hundred times a second).
        if let Some(l) = self.ledger.as_mut()
            && !(outcome.batch.transfers.is_empty()
                && outcome.batch.deaths.is_empty()
                && accepted.is_empty())
        {
            let work: Vec<(AgentId, u64, u64)> =
                accepted.iter().map(|(a, c)| (*a, c.start, c.end)).collect();
            l.commit_with_work(&outcome.batch, &work)?;
        }

        // Audits are drawn among this tick's claims; the others need no recomputation.
        for a in &outcome.audits {
            if let Some(c) = self.pending.remove(&a.claim) {
                self.auditor
                    .submit(a.claim, c)
                    .map_err(|e| NodeError::Auditor(e.to_string()))?;
            }
        }
        self.pending.clear();

        let mut deaths = Vec::new();
        for &id in &outcome.deaths {
            if let Some(slot) = self.slots.get_mut(&id) {
                let cause = match self.market.life(id) {
                    Some(Life::Dead { cause, .. }) => cause.to_string(),
                    _ => "dead".into(),
                };
                slot.agent.kill(&cause);
                slot.killed = true;
                slot.running = false;
                self.running.remove(&id);
                self.active.remove(&id);
                if let Some(due) = slot.poll_due.take() {
                    self.polls.remove(&(due, id));
                }
                self.work.release(id.0);
                deaths.push(DeathReport {
                    agent: id,
                    name: slot.name.to_string(),
                    cause,
                    tick: outcome.tick,
                });
            }
        }
        let price = outcome.clearing.price;
        let winners: BTreeSet<AgentId> = outcome.clearing.winners.iter().copied().collect();
        // Losers are frozen before winners are resumed: a loser parks on a CPU a winner does
        // not yet compete for (agents yield to the tick thread, so a winner woken first could
        // keep a parking loser, and the tick waiting for it, off the CPU for a whole slice).
        let losers: Vec<AgentId> = self.running.difference(&winners).copied().collect();
        for id in losers {
            self.running.remove(&id);
            let Some(slot) = self.slots.get_mut(&id) else {
                continue;
            };
            if slot.killed || !slot.running {
                continue;
            }
            slot.running = false;
            if let Err(e) = slot.agent.pause() {
                // It may still be running, unpaid: end it.
                sandbox_errors.push((id, format!("pause: {e}")));
                self.commands.push(Command::Kill {
                    agent: id,
                    cause: Cause::Limit {
                        what: format!("pause failed: {e}"),
                    },
                });
            }
        }
        // Frozen agents age; after two frozen ticks they have nothing left to say and leave
        // the active set (polled from then on only if their backend needs it).
        let frozen: Vec<AgentId> = self.active.difference(&winners).copied().collect();
        for id in frozen {
            let Some(slot) = self.slots.get_mut(&id) else {
                self.active.remove(&id);
                continue;
            };
            if slot.killed {
                self.active.remove(&id);
                continue;
            }
            slot.frozen_for += 1;
            if slot.frozen_for >= 2 {
                self.active.remove(&id);
                if slot.poll_frozen {
                    let due = next_poll(tick_no, id);
                    slot.poll_due = Some(due);
                    self.polls.insert((due, id));
                }
            }
        }
        for id in polled {
            if let Some(slot) = self.slots.get_mut(&id) {
                slot.poll_due = None;
                if !slot.killed && !winners.contains(&id) {
                    let due = next_poll(tick_no, id);
                    slot.poll_due = Some(due);
                    self.polls.insert((due, id));
                }
            }
        }
        for &id in &outcome.clearing.winners {
            let Some(slot) = self.slots.get_mut(&id) else {
                continue;
            };
            if slot.killed {
                continue;
            }
            // Told its balance, the price and its record before it runs, and handed work;
            // a frozen agent reads nothing.
            slot.agent
                .inform(self.market.balance(id).unwrap_or(Tokens::ZERO), price);
            // Income so far covers the quanta it had run when its words were last drained
            // (a frozen agent is drained only every few ticks): told those, the ratio is the
            // value of a won quantum as the agent really gets it, not biased low by claims
            // still in its mailbox. (Valuing CPU time instead overbid: a won quantum is less
            // than a whole CPU on a busy machine, and equals paid more than they earned.)
            if let Some(s) = self.market.stats(id) {
                let income = s.bounties.0.saturating_sub(s.spent.landauer.0);
                slot.agent
                    .mailbox()
                    .inform_income(Tokens(income), slot.quanta_drained);
            }
            let mailbox = slot.agent.mailbox();
            let want = LEASE_AHEAD.saturating_sub(mailbox.work_queued());
            let work = &mut self.work;
            mailbox.give_work((0..want).map(|_| work.lease(id.0)));
            if !slot.running {
                match slot.agent.resume() {
                    Ok(()) => {
                        slot.running = true;
                        self.running.insert(id);
                    }
                    // It paid for a quantum it cannot have: end it, and say so.
                    Err(e) => {
                        sandbox_errors.push((id, format!("resume: {e}")));
                        self.commands.push(Command::Kill {
                            agent: id,
                            cause: Cause::Limit {
                                what: format!("resume failed: {e}"),
                            },
                        });
                    }
                }
            }
            slot.frozen_for = 0;
            self.active.insert(id);
            if let Some(due) = slot.poll_due.take() {
                self.polls.remove(&(due, id));
            }
        }

        // What a listing of agents may show differently after this tick.
        let mut changed: BTreeSet<AgentId> = visit;
        changed.extend(winners.iter().copied());
        changed.extend(deaths.iter().map(|d| d.agent));
        changed.extend(outcome.dying.iter().map(|(a, _)| *a));
        for t in &outcome.batch.transfers {
            for acc in [t.from, t.to] {
                if let maxwell_core::Account::Agent(a) = acc {
                    changed.insert(a);
                }
            }
        }
        self.deaths.extend(deaths.iter().cloned());
        Ok(TickReport {
            tick: outcome.tick,
            supply: outcome.offer.supply,
            price,
            winners: outcome.clearing.winners,
            temperature: reading.temperature,
            power: reading.power,
            energy: reading.energy,
            energy_modelled: reading.energy_modelled,
            deaths,
            audits,
            audit_backlog: self.auditor.backlog(),
            refused_claims,
            sandbox_errors,
            refused: outcome
                .refused
                .iter()
                .map(|(what, why)| format!("{what}: {why:?}"))
                .collect(),
            claims: accepted,
            logs,
            changed: changed.into_iter().collect(),
        })
    }

    /// Freezes every agent (for a clean stop); the ledger already holds every tick. Returns the
    /// agents that could not be frozen, with why (the caller decides; the next start reaps
    /// them).
    pub fn freeze_all(&mut self) -> Vec<(String, SandboxError)> {
        let mut failed = Vec::new();
        for id in std::mem::take(&mut self.running) {
            if let Some(slot) = self.slots.get_mut(&id)
                && slot.running
            {
                if let Err(e) = slot.agent.pause() {
                    failed.push((slot.name.to_string(), e));
                }
                slot.running = false;
            }
        }
        failed
    }
}
