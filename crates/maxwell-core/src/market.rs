//! The market: one pure state machine that the daemon and the simulator both drive.
//!
//! `Market::tick(TickInput) -> TickOutcome` does, in order (DESIGN.md section 4):
//! 1. apply the commands that arrived since the last tick (funding, bids, kills);
//! 2. attribute the tick's active energy to agents by CPU time;
//! 3. settle the quantum that just ended: Landauer tax on erased bytes at the measured
//!    temperature, memory rent from every living agent, the idle energy billed to the living by
//!    resident memory ([`MarketConfig::idle_rent`]), fines for failed audits, bounties for
//!    new claims (choosing which to audit with the seeded RNG);
//! 4. end the grace period of dying agents whose time is up (apoptosis);
//! 5. price: the PID controller turns temperature into a power budget, hence supply and reserve;
//! 6. clear the auction; winners pay the uniform price for the coming quantum; the tick's
//!    house income sets the next bounty rate and, with [`MarketConfig::recycle_income`], goes
//!    back to the bounty pool on every rent posting tick (`rent_settle_ticks`);
//! 7. check the conservation invariant (also in release builds).
//!
//! An agent that cannot pay a charge pays what it has and starts dying: its bid is withdrawn,
//! it is charged nothing more, and after `grace_ticks` it is dead. Nothing else kills an agent
//! except its owner and the hard limits its sandbox reports ([`Command::Kill`]).
//!
//! Bids are capped by the wallet: the book holds `min(requested, max_bid, balance)`, re-priced
//! whenever the balance moves, so a winner can always pay and the clearing never reads a
//! wallet.

use std::collections::{BTreeMap, BTreeSet};

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::book::{AgentId, Bid, Clearing, OrderBook};
use crate::energy::{attribute, split};
use crate::ledger::{Account, Books, Cause, Death, LedgerBatch, Transfer, TransferKind};
use crate::pricing::{Offer, PidConfig, PidConfigError, PowerAllocator, offer};
use crate::rules::{PPM, audit_fine, bounty, covered_audit_ppm, landauer_tax, memory_rent};
use crate::units::{Bytes, GridPrice, MicroJoules, MilliCelsius, MilliWatts, Nanos, Tokens};

/// Every knob of the market. Defaults are documented on each field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MarketConfig {
    /// Length of one quantum (one tick). Default 10 ms.
    pub quantum: Nanos,
    /// CPU slots Maxwell owns (the most it can ever sell per quantum). Default 2.
    pub slots_max: u32,
    /// Power one busy slot adds to the machine's draw (`P_slot`). Default 15 W.
    pub slot_power: MilliWatts,
    /// Tokens per joule. Default 1 JOULE per joule.
    pub grid_price: GridPrice,
    /// The thermal controller. Default: switch on at 60 C, control at 80 C, sustainable power
    /// of one and a half slots, gains estimated as Linux does.
    pub pid: PidConfig,
    /// Memory rent, as power per GiB resident priced at the grid price. Default 1 W/GiB: DRAM
    /// draws about 0.4 W/GiB, and the rest is the cost of the memory being unavailable to
    /// anyone else.
    pub rent_per_gib: MilliWatts,
    /// Bill the idle part of each tick's energy to the living agents, split by resident memory.
    /// Default off: agents pay for their own energy only (the slots they win, the memory they
    /// hold, what they erase), as Kepler attributes energy, and the machine's static draw is the
    /// house's. Billing it made waiting lethal: ten JOULE covered two seconds of a 5 W share,
    /// so a useful agent that was merely outbid died. On, the house keeps the idle energy only
    /// while nobody holds memory.
    pub idle_rent: bool,
    /// Price granularity of the book: every effective bid is rounded down to a multiple of it,
    /// and equal bids are ranked least recently served first. Default 15,000 micro-JOULE, a
    /// tenth of one slot's energy at the grid price. Agents whose values differ by less than a
    /// tick share the slots in turn instead of the marginally richer one winning every
    /// quantum; rounding down also leaves every winner up to a tick of surplus.
    pub bid_tick: Tokens,
    /// An agent that cannot afford one quantum at the lowest possible reserve (one slot's
    /// energy at the grid price) starts dying, insolvent: the reserve never falls below that,
    /// so such an agent can never run again, and waiting would only let it hold memory and a
    /// place in the book. Default on. An unfunded agent dies at its first tick; a frozen-out
    /// parasite dies as soon as its residue falls below a slot, not after its rent eats it.
    pub insolvent_below_reserve: bool,
    /// Quanta a new agent runs as a trial: until it has won this many, it is ranked among the
    /// equals of the marginal band whatever its bid, and pays at most its bid. Default 32: an
    /// agent measures its value over its first 24 quanta (`maxwell_agent::VALUE_WARMUP_QUANTA`)
    /// and bids it from then on, still inside its trial. Without trials, agents that measured
    /// first bid their value and newcomers, still on a lower opening bid, never run; with a trial
    /// shorter than the measurement, a first estimate biased low froze an agent out.
    pub trial_quanta: u32,
    /// Consecutive quanta an equal keeps its slot before it goes behind the other equals (its
    /// turn). Default 10 (100 ms): turns of one quantum swap every running agent every tick,
    /// which cost the scientists about 15% of their throughput in caches and resumes.
    pub turn_quanta: u32,
    /// Ticks an alive agent may go without winning before it is given another trial turn
    /// (`turn_quanta` quanta among the equals, at most at its own bid). Default 300 (3 s). A
    /// frozen agent's bid is a stale measurement: an estimate that came out low (its first quanta
    /// crowded by others' start-up) would otherwise freeze it out for good. 0 disables.
    pub retrial_ticks: u32,
    /// Half-width of the band of equals around the marginal (k-th highest) bid, in percent of
    /// it; never less than one price tick. Default 20. Agents measure their value with noise
    /// (a quantum run alone is worth more than one beside another agent, so values measured in
    /// different phases differ by several percent); bids that close are treated as equal and
    /// served in turn, which keeps equals sharing, and costs a bidder at most this much of
    /// truthfulness.
    pub band_pct: u32,
    /// How far real erasure is from Landauer's bound. Default 1e12 (the seed's figure).
    pub landauer_inefficiency: f64,
    /// The most a verified unit of useful work earns (a unit is [`crate::work::UNIT`] = 1,024
    /// numbers sieved near 1e9, so a unit is worth the same wherever it lies). Default 128
    /// micro-JOULE: the WASM scientist does about 600,000 units a second on one core of the
    /// development VM, so at this rate it earns about 77 W worth, five times the 15 W slot it
    /// buys. What a unit really earns is this or less: the pool pays out what it can sustain
    /// ([`MarketConfig::bounty_horizon_ticks`], [`MarketConfig::recycle_income`]).
    pub bounty_per_unit: Tokens,
    /// Return everything the house takes in (slot payments, rent, Landauer tax, fines) to the
    /// bounty pool, and pay it out again as bounties. Default on. The tokens are an account of
    /// energy, not the operator's revenue: without this the house hoarded every token paid,
    /// the pool only ever shrank, and once it was empty every useful agent died, however
    /// useful. With it money is never destroyed; it moves from agents that do no verified work
    /// to those that do, so useful agents as a whole get back what they pay, for ever.
    pub recycle_income: bool,
    /// The operator's standing grant to useful work: while work is being claimed and a unit
    /// earns less than `bounty_per_unit`, the pool is paid this power's worth at the grid
    /// price (accrued every tick, minted on every rent posting tick as pool funding) and pays it out
    /// at once as bounties. Default 15 W, one slot's energy. Without a grant,
    /// recycled money alone gives useful agents back exactly what they pay, so a lone useful
    /// agent's measured value sits on the reserve and measurement noise alone decides whether
    /// it runs (simulated: it won a third of the quanta it could have); the grant is the
    /// margin that makes verified work worth more than its energy. 0 turns it off, and the
    /// pool then lives on sponsors' top-ups.
    pub bounty_grant: MilliWatts,
    /// The pool's horizon: per tick it pays out at most its recent income (the house's takings
    /// with [`MarketConfig::recycle_income`], and the grant) plus `1 / bounty_horizon_ticks` of
    /// its balance, shared by the units of work claimed, never more than `bounty_per_unit`
    /// each. Default
    /// 180,000 (30 minutes at 10 ms). So the pool never runs dry: the sponsors' money (the
    /// opening pool and every top-up) is spent over about this long, and a pool with no
    /// income pays less per unit as it shrinks instead of paying in full until it stops.
    pub bounty_horizon_ticks: u64,
    /// Probability `q` that a claim is audited, in parts per million. Default 20_000 (2%): the
    /// node recomputes that share of all claimed work, and a claim is accepted only if its
    /// fine (bounty / q) is covered, so `q` also bounds the claim a wallet may make: at 2% and
    /// the default bounty, a fresh 10 JOULE wallet covers claims of 100,000 units.
    pub audit_ppm: u32,
    /// Ticks between insolvency and death. Default 50 (0.5 s at 10 ms).
    pub grace_ticks: u32,
    /// Rent accrues every tick (lazily: see [`Market::rent_due`]) and is posted to the ledger
    /// only on ticks that are multiples of `rent_settle_ticks`, so that an idle node writes its
    /// ledger at most once in that many ticks. Default 100 (one second at 10 ms). It is also
    /// posted at once when the agent cannot cover what it owes or starts dying, and bids are
    /// capped by the balance minus the rent owed, so accrual never lets an agent spend money
    /// it owes. 1 posts every tick.
    pub rent_settle_ticks: u32,
    /// Each agent's rent is posted on one posting tick in `rent_settle_spread` (its period is
    /// `rent_settle_ticks * rent_settle_spread` ticks), the agents spread over the posting
    /// ticks by id: with 10,000 agents and the defaults a posting tick writes about 170 rows
    /// once a second, instead of 10,000 rows at once or a hundred rows every tick. Default 60
    /// (an agent's rent is posted once a minute). 1 posts every agent on every posting tick.
    /// What it changes is only when owed rent appears in the ledger: every decision reads
    /// the rent owed. A crash forgives what was accrued and not yet posted, at most one
    /// period's rent.
    pub rent_settle_spread: u32,
    /// Audits awaiting a verdict at most; claims beyond this are refused until verdicts come
    /// in. Default 65_536.
    pub max_pending_audits: usize,
    /// Seed of the audit lottery.
    pub seed: u64,
}

impl Default for MarketConfig {
    fn default() -> Self {
        let slot_power = MilliWatts(15_000);
        let slots_max = 2;
        MarketConfig {
            quantum: Nanos::from_millis(10),
            slots_max,
            slot_power,
            grid_price: GridPrice(Tokens::joules(1)),
            pid: PidConfig::estimated(
                MilliCelsius(60_000),
                MilliCelsius(80_000),
                MilliWatts(slot_power.0 * 3 / 2),
                MilliWatts(slot_power.0 * u64::from(slots_max)),
            ),
            rent_per_gib: MilliWatts(1_000),
            idle_rent: false,
            bid_tick: Tokens(15_000),
            insolvent_below_reserve: true,
            trial_quanta: 32,
            turn_quanta: 10,
            retrial_ticks: 300,
            band_pct: 20,
            landauer_inefficiency: 1e12,
            bounty_per_unit: Tokens(128),
            recycle_income: true,
            bounty_grant: slot_power,
            bounty_horizon_ticks: 180_000,
            audit_ppm: 20_000,
            grace_ticks: 50,
            rent_settle_ticks: 100,
            rent_settle_spread: 60,
            max_pending_audits: 65_536,
            seed: 0,
        }
    }
}

/// Why a market configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MarketConfigError {
    /// The quantum is zero.
    #[error("quantum must be longer than zero (e.g. quantum = \"10ms\")")]
    Quantum,
    /// Slot power is zero.
    #[error("slot_power must be above zero (e.g. slot_power = \"15W\")")]
    SlotPower,
    /// No slot could ever be sold.
    #[error("slots_max must be at least 1 and pid.power_max at least one slot_power")]
    Slots,
    /// Free energy breaks every price.
    #[error("grid_price must be above zero (e.g. 1 JOULE per joule)")]
    GridPrice,
    /// Audits need somewhere to wait.
    #[error("max_pending_audits must be at least 1")]
    PendingAudits,
    /// The price tick is zero.
    #[error("bid_tick must be at least 1 micro-JOULE (default \"0.015 JOULE\")")]
    BidTick,
    /// The audit probability is out of range.
    #[error(
        "audit probability must be between 1 and 1000000 parts per million, got {0} (10000 is 1%)"
    )]
    AuditRate(u32),
    /// The inefficiency is not a finite non-negative number.
    #[error("landauer_inefficiency must be a finite number >= 0 (the seed uses 1e12)")]
    Inefficiency,
    /// The controller is malformed.
    #[error("pid: {0}")]
    Pid(#[from] PidConfigError),
    /// The pool's horizon is zero.
    #[error("bounty_horizon must be at least one tick (default \"30min\")")]
    BountyHorizon,
    /// Restored books do not balance.
    #[error("the restored books break conservation; run `maxwell ledger verify`")]
    Restore,
}

impl MarketConfig {
    /// Checks the configuration before a market is built from it.
    pub fn validate(&self) -> Result<(), MarketConfigError> {
        if self.quantum.0 == 0 {
            return Err(MarketConfigError::Quantum);
        }
        if self.slot_power.0 == 0 {
            return Err(MarketConfigError::SlotPower);
        }
        if self.slots_max == 0 || self.pid.power_max < self.slot_power {
            return Err(MarketConfigError::Slots);
        }
        if self.grid_price.0 == Tokens::ZERO {
            return Err(MarketConfigError::GridPrice);
        }
        if self.max_pending_audits == 0 {
            return Err(MarketConfigError::PendingAudits);
        }
        if self.bid_tick == Tokens::ZERO {
            return Err(MarketConfigError::BidTick);
        }
        if self.audit_ppm == 0 || self.audit_ppm > PPM {
            return Err(MarketConfigError::AuditRate(self.audit_ppm));
        }
        if self.bounty_horizon_ticks == 0 {
            return Err(MarketConfigError::BountyHorizon);
        }
        if !self.landauer_inefficiency.is_finite() || self.landauer_inefficiency < 0.0 {
            return Err(MarketConfigError::Inefficiency);
        }
        self.pid.validate()?;
        Ok(())
    }
}

/// What an agent is admitted with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSpec {
    /// The most the agent's owner lets it bid per slot, whatever it asks.
    pub max_bid: Tokens,
}

/// Where an agent is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum Life {
    /// Trading.
    Alive,
    /// Insolvent or killed; frozen out of the market until its grace period ends.
    Dying {
        /// Tick it started dying.
        since_tick: u64,
        /// Why.
        cause: Cause,
    },
    /// Gone.
    Dead {
        /// Tick of death.
        at_tick: u64,
        /// Why.
        cause: Cause,
    },
}

/// Money an agent paid, by category.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spending {
    /// Slot payments.
    pub slots: Tokens,
    /// Memory rent.
    pub rent: Tokens,
    /// Landauer tax.
    pub landauer: Tokens,
    /// Audit fines.
    pub fines: Tokens,
}

/// Running totals for one agent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStats {
    /// Energy attributed to it.
    pub energy: MicroJoules,
    /// CPU time reported for it.
    pub cpu: Nanos,
    /// Bytes it erased.
    pub erased: Bytes,
    /// Quanta it won.
    pub quanta_won: u64,
    /// Units of work claimed and paid for.
    pub work_claimed: u64,
    /// Units of work whose audit failed.
    pub work_refuted: u64,
    /// Claims audited and passed.
    pub audits_passed: u64,
    /// Claims audited and failed.
    pub audits_failed: u64,
    /// Bounties received.
    pub bounties: Tokens,
    /// Funding received.
    pub funded: Tokens,
    /// Money paid, by category.
    pub spent: Spending,
}

/// An agent's [`Life`], boxed once it is not alive: the many alive agents hold 8 bytes, not
/// the 48 of a `Life` with its cause.
#[derive(Debug, Clone, Default)]
struct LifeCell(Option<Box<Life>>);

static ALIVE: Life = Life::Alive;

impl LifeCell {
    fn of(life: Life) -> LifeCell {
        match life {
            Life::Alive => LifeCell(None),
            other => LifeCell(Some(Box::new(other))),
        }
    }

    fn get(&self) -> &Life {
        self.0.as_deref().unwrap_or(&ALIVE)
    }

    fn set(&mut self, life: Life) {
        *self = LifeCell::of(life);
    }
}

#[derive(Debug, Clone)]
struct AgentState {
    life: LifeCell,
    /// Rent accrued through tick `rent_since` and not yet posted. Rent accrues lazily: what
    /// is owed at tick `t` is `rent_due + rent_rate * (t - rent_since)` ([`Market::due`]), so
    /// no tick walks every agent to add a quantum's rent.
    rent_due: Tokens,
    /// Memory rent per tick at its current resident size.
    rent_rate: u64,
    /// The tick `rent_due` is accrued through.
    rent_since: u64,
    /// Its entry in [`Market::wakes`], while it has one.
    wake: Option<u64>,
    /// Its entry in [`Market::retrials`], while it has one.
    retrial_at: Option<u64>,
    max_bid: Tokens,
    requested: Option<Tokens>,
    resident: Bytes,
    on_probation: bool,
    /// Rank among equal bids: the sequence number of its last win (of its admission before
    /// that). Smaller is served first, so equal bidders take turns (least recently served).
    served: u64,
    /// Consecutive quanta won in the current turn.
    streak: u32,
    /// On trial while `quanta_won` is below this.
    trial_until: u64,
    /// The last tick it won (or its admission).
    last_won: u64,
    /// Whether the standing bid is the agent's own (else its owner's opening bid).
    own_bid: bool,
    stats: AgentStats,
}

/// An instruction from the agents' owners or the sandboxes, applied at the start of a tick.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Command {
    /// Mint `amount` into an agent's wallet.
    Fund {
        /// Whom.
        agent: AgentId,
        /// How much.
        amount: Tokens,
    },
    /// Mint `amount` into the bounty pool.
    FundBountyPool {
        /// How much.
        amount: Tokens,
    },
    /// Place or change an agent's standing bid (a change loses the old bid's age).
    Bid {
        /// Whose.
        agent: AgentId,
        /// Price per slot per quantum.
        price: Tokens,
    },
    /// Place the owner's opening bid for an agent that has not bid itself yet: it stands until
    /// the agent's own first bid, and meanwhile the agent is on trial (see
    /// [`MarketConfig::trial_quanta`]).
    OpeningBid {
        /// Whose.
        agent: AgentId,
        /// Price per slot per quantum, the most the trial quanta cost.
        price: Tokens,
    },
    /// Withdraw an agent's bid.
    CancelBid {
        /// Whose.
        agent: AgentId,
    },
    /// Start an agent's apoptosis: its owner asked, or its sandbox reports a broken limit.
    Kill {
        /// Whom.
        agent: AgentId,
        /// Why (`Owner` or `Limit`).
        cause: Cause,
    },
    /// Post every living agent's accrued rent in this tick (a node about to stop, so that a
    /// clean stop forgives no rent). Looks at every agent once.
    SettleRent,
}

/// Why a command, claim or verdict was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "kebab-case")]
pub enum Refusal {
    /// No such agent.
    #[error("agent {0} does not exist")]
    UnknownAgent(u32),
    /// The agent is dying or dead.
    #[error("agent {0} is not alive")]
    NotAlive(u32),
    /// The amount would overflow a balance.
    #[error("amount overflows the books")]
    Overflow,
    /// Too many audits await verdicts.
    #[error("audit backlog full: answer pending audits first")]
    AuditBacklog,
    /// A claim id is already awaiting audit.
    #[error("claim {0} is already pending")]
    DuplicateClaim(u64),
    /// A verdict names no pending audit.
    #[error("no audit is pending for claim {0}")]
    UnknownClaim(u64),
    /// `Kill` must carry an owner or limit cause.
    #[error("a kill must give the owner or a containment limit as its cause")]
    BadKillCause,
    /// A funding of nothing.
    #[error("a funding must be of at least 1 micro-JOULE")]
    ZeroFunding,
}

/// A driver-chosen identifier of one claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClaimId(pub u64);

/// A claim of useful work. The driver keeps its contents and verifies it when asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// Driver-chosen id, unique among pending audits.
    pub id: ClaimId,
    /// Who claims.
    pub agent: AgentId,
    /// Units of work claimed.
    pub units: u64,
}

/// The driver's answer to an audit request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// The audited claim.
    pub claim: ClaimId,
    /// Whether recomputation confirmed it.
    pub passed: bool,
}

/// What an agent's sandbox measured over the last quantum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Whose.
    pub agent: AgentId,
    /// CPU time used.
    pub cpu: Nanos,
    /// Resident memory now (rent is charged on it every tick until the next report).
    pub resident: Bytes,
    /// Bytes erased (freed or overwritten) during the quantum.
    pub erased: Bytes,
}

/// Everything the market learns in one tick. The market reads no clock: `now` is given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TickInput {
    /// The time of this tick on the driver's clock.
    pub now: Nanos,
    /// Die temperature now.
    pub temperature: MilliCelsius,
    /// Energy the machine used since the last tick (wrap-corrected).
    pub energy: MicroJoules,
    /// The idle part of that energy (billed as idle rent, or the house's).
    pub energy_idle: MicroJoules,
    /// CPU time the whole machine was busy over the quantum, every process included (zero when
    /// unknown). The active energy is attributed over it, so the agents are billed, in their
    /// statistics, only for their own CPU time's share, never for other processes'.
    pub machine_cpu: Nanos,
    /// Per-agent measurements for the quantum that ended.
    pub usage: Vec<Usage>,
    /// Commands since the last tick, applied in order.
    pub commands: Vec<Command>,
    /// New claims of useful work.
    pub claims: Vec<Claim>,
    /// Verdicts on audits requested earlier.
    pub verdicts: Vec<Verdict>,
}

/// A request to verify a claim by recomputation; answer with a [`Verdict`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRequest {
    /// The claim.
    pub claim: ClaimId,
    /// Its author.
    pub agent: AgentId,
}

/// What the market decided in one tick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TickOutcome {
    /// The tick number (the first tick is 1).
    pub tick: u64,
    /// Budget, supply and reserve.
    pub offer: Offer,
    /// Winners of the coming quantum and the price each paid.
    pub clearing: Clearing,
    /// Every transfer and death of the tick, to commit atomically.
    pub batch: LedgerBatch,
    /// Claims to verify.
    pub audits: Vec<AuditRequest>,
    /// Agents that started dying this tick: signal them to stop (SIGTERM, a trap).
    pub dying: Vec<(AgentId, Cause)>,
    /// Agents whose grace ended this tick: kill them and remove their sandboxes.
    pub deaths: Vec<AgentId>,
    /// What was refused this tick, and why.
    pub refused: Vec<(String, Refusal)>,
}

#[derive(Debug, Clone, Copy)]
struct PendingAudit {
    agent: AgentId,
    units: u64,
    nominal_bounty: Tokens,
    audit_ppm: u32,
}

/// The market state. See the module documentation.
#[derive(Debug, Clone)]
pub struct Market {
    config: MarketConfig,
    pid: PowerAllocator,
    book: OrderBook,
    books: Books,
    agents: crate::dense::Dense<AgentState>,
    pending_audits: BTreeMap<ClaimId, PendingAudit>,
    rng: ChaCha8Rng,
    tick: u64,
    last_now: Option<Nanos>,
    bid_seq: u64,
    last_offer: Option<Offer>,
    last_temperature: MilliCelsius,
    energy_house: MicroJoules,
    last_winners: Vec<AgentId>,
    /// Agents given a retrial turn that has not ended yet.
    trying: BTreeSet<AgentId>,
    /// Alive agents that must be looked at by a given tick even if nothing touches them: their
    /// rent period ends, their rent reaches what they can pay, or it starts to cap their bid.
    wakes: BTreeSet<(u64, AgentId)>,
    /// Alive agents with a standing bid, by the tick they are due a retrial.
    retrials: BTreeSet<(u64, AgentId)>,
    /// Agents whose wallet or bid changed since they were last looked at.
    touched: BTreeSet<AgentId>,
    /// Dying agents.
    dying: BTreeSet<AgentId>,
    /// Dead agents.
    n_dead: usize,
    /// The pool's income per tick (the house's takings and the grant), an exponential average
    /// over [`RATE_WINDOW_TICKS`], in micro-tokens times [`RATE_ONE`].
    income_rate: u128,
    /// The grant accrued since it was last minted.
    grant_due: Tokens,
    /// Units of work claimed per tick, averaged the same way, times [`RATE_ONE`].
    work_rate: u128,
    /// Minted into the bounty pool by this market (since it was built or restored).
    pool_funded: Tokens,
}

/// Ticks over which the house's income and the work claimed are averaged to set the bounty
/// rate (2.56 s at 10 ms, as long as an agent's value meter's shortest window).
pub const RATE_WINDOW_TICKS: u128 = 256;

/// Fixed-point one of the averaged rates.
const RATE_ONE: u128 = 1 << 20;

/// One step of an exponential average of per-tick amounts (fixed point, [`RATE_ONE`]).
fn ewma(rate: u128, sample: u128) -> u128 {
    rate - rate / RATE_WINDOW_TICKS + sample.saturating_mul(RATE_ONE) / RATE_WINDOW_TICKS
}

impl Market {
    /// A market with no agents.
    pub fn new(config: MarketConfig) -> Result<Market, MarketConfigError> {
        config.validate()?;
        Ok(Market {
            pid: PowerAllocator::new(config.pid.clone()),
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            config,
            book: OrderBook::new(),
            books: Books::default(),
            agents: crate::dense::Dense::new(),
            pending_audits: BTreeMap::new(),
            tick: 0,
            last_now: None,
            bid_seq: 0,
            last_offer: None,
            last_temperature: MilliCelsius(0),
            energy_house: MicroJoules(0),
            last_winners: Vec::new(),
            trying: BTreeSet::new(),
            wakes: BTreeSet::new(),
            retrials: BTreeSet::new(),
            touched: BTreeSet::new(),
            dying: BTreeSet::new(),
            n_dead: 0,
            income_rate: 0,
            grant_due: Tokens::ZERO,
            work_rate: 0,
            pool_funded: Tokens::ZERO,
        })
    }

    /// A market resumed from durable books (a daemon restart): one agent per entry of
    /// `max_bids` (ids in order), wallets as the books hold them, the agents in `dead` dead,
    /// and the tick count at `tick` so the next tick is `tick + 1`. Bids, pending audits and
    /// the controller's state start afresh: a restart forgets standing orders, not money.
    pub fn restore(
        config: MarketConfig,
        mut books: Books,
        max_bids: &[Tokens],
        dead: &BTreeMap<AgentId, (u64, Cause)>,
        stats: &BTreeMap<AgentId, AgentStats>,
        tick: u64,
    ) -> Result<Market, MarketConfigError> {
        let mut m = Market::new(config)?;
        while books.n_agents() < max_bids.len() {
            books.open_agent();
        }
        m.agents = max_bids
            .iter()
            .enumerate()
            .map(|(i, &max_bid)| AgentState {
                life: match dead.get(&AgentId(i as u32)) {
                    Some((at_tick, cause)) => LifeCell::of(Life::Dead {
                        at_tick: *at_tick,
                        cause: cause.clone(),
                    }),
                    None => LifeCell::default(),
                },
                rent_due: Tokens::ZERO,
                rent_rate: 0,
                rent_since: tick,
                wake: None,
                retrial_at: None,
                max_bid,
                requested: None,
                resident: Bytes(0),
                on_probation: false,
                served: i as u64,
                streak: 0,
                trial_until: 0,
                last_won: tick,
                own_bid: false,
                stats: stats.get(&AgentId(i as u32)).copied().unwrap_or_default(),
            })
            .collect();
        // Wallets the books know beyond `max_bids` (never: the roster is written before the
        // first tick that funds an agent) would be unreachable; keep them as dead agents.
        while m.agents.len() < books.n_agents() {
            m.agents.push(AgentState {
                life: LifeCell::of(Life::Dead {
                    at_tick: tick,
                    cause: Cause::Owner,
                }),
                rent_due: Tokens::ZERO,
                rent_rate: 0,
                rent_since: tick,
                wake: None,
                retrial_at: None,
                max_bid: Tokens::ZERO,
                requested: None,
                resident: Bytes(0),
                on_probation: false,
                served: m.agents.len() as u64,
                streak: 0,
                trial_until: 0,
                last_won: tick,
                own_bid: false,
                stats: AgentStats::default(),
            });
        }
        m.n_dead = m
            .agents
            .iter()
            .filter(|a| matches!(a.life.get(), Life::Dead { .. }))
            .count();
        m.bid_seq = m.agents.len() as u64;
        m.books = books;
        m.tick = tick;
        // Every living agent is looked at in the first tick (one may be insolvent already).
        m.touched = (0..m.agents.len() as u32)
            .map(AgentId)
            .filter(|&id| matches!(m.agents[id.0 as usize].life.get(), Life::Alive))
            .collect();
        m.check_conservation()
            .map_err(|_| MarketConfigError::Restore)?;
        Ok(m)
    }

    /// Rent an agent has accrued and not yet posted (see
    /// [`MarketConfig::rent_settle_ticks`]).
    pub fn rent_due(&self, agent: AgentId) -> Option<Tokens> {
        self.agents.get(agent.0 as usize).map(|a| self.due(a))
    }

    /// Agents alive (neither dying nor dead).
    pub fn n_alive(&self) -> usize {
        self.agents.len() - self.dying.len() - self.n_dead
    }

    /// The rent an agent owes now (accrued through the current tick).
    fn due(&self, a: &AgentState) -> Tokens {
        if !matches!(a.life.get(), Life::Alive) {
            return a.rent_due;
        }
        let ticks = self.tick.saturating_sub(a.rent_since);
        Tokens(
            a.rent_due
                .0
                .saturating_add(a.rent_rate.saturating_mul(ticks)),
        )
    }

    /// Accrues an agent's rent through tick `through`.
    fn fold(&mut self, agent: AgentId, through: u64) {
        let a = &mut self.agents[agent.0 as usize];
        if through > a.rent_since {
            let ticks = through - a.rent_since;
            a.rent_due = Tokens(
                a.rent_due
                    .0
                    .saturating_add(a.rent_rate.saturating_mul(ticks)),
            );
            a.rent_since = through;
        }
    }

    /// Whether `tick` ends an agent's rent period: a posting tick (a multiple of
    /// `rent_settle_ticks`) that is its turn among `rent_settle_spread` (by id, so that a node
    /// with many agents posts a share of them on each posting tick).
    fn settles(&self, agent: AgentId, tick: u64) -> bool {
        let (every, spread) = self.rent_cadence();
        tick.is_multiple_of(every) && (tick / every + u64::from(agent.0)).is_multiple_of(spread)
    }

    /// The first tick after `tick` that ends an agent's rent period (see [`Market::settles`]).
    fn next_settle(&self, agent: AgentId, tick: u64) -> u64 {
        let (every, spread) = self.rent_cadence();
        let k0 = (tick + 1).div_ceil(every);
        let k = k0 + (spread - (k0 + u64::from(agent.0) % spread) % spread) % spread;
        k * every
    }

    /// Ticks between two posting ticks, and posting ticks between two postings of one
    /// agent's rent (each at least 1).
    fn rent_cadence(&self) -> (u64, u64) {
        (
            u64::from(self.config.rent_settle_ticks.max(1)),
            u64::from(self.config.rent_settle_spread.max(1)),
        )
    }

    /// Ticks between two postings of one agent's rent.
    #[cfg(test)]
    fn rent_period(&self) -> u64 {
        let (every, spread) = self.rent_cadence();
        every * spread
    }

    /// Sets the tick by which an alive agent must be looked at again even if nothing touches
    /// it: the end of its rent period (if it owes or accrues anything), the tick its rent
    /// reaches what it has (or leaves it less than one slot's energy), or the tick its rent
    /// starts to cap its bid (then every tick: its bid is re-priced as the rent grows).
    fn schedule(&mut self, agent: AgentId) {
        let t = self.tick;
        let idx = agent.0 as usize;
        if let Some(w) = self.agents[idx].wake.take() {
            self.wakes.remove(&(w, agent));
        }
        let a = &self.agents[idx];
        if !matches!(a.life.get(), Life::Alive) {
            return;
        }
        let due = self.due(a).0;
        let rate = a.rent_rate;
        if rate == 0 && due == 0 {
            // Nothing accrues: nothing can change without a touch.
            return;
        }
        let next = t + 1;
        let mut wake = self.next_settle(agent, t);
        if rate > 0 {
            let balance = self.balance(agent).unwrap_or(Tokens::ZERO).0;
            // The first tick at which what is owed exceeds `room` more than it does now.
            let crossing = |room: u64| -> u64 {
                match balance.checked_sub(due).and_then(|b| b.checked_sub(room)) {
                    Some(left) => t + left / rate + 1,
                    None => next,
                }
            };
            // Rent reaching the whole balance (posted at once then).
            wake = wake.min(match balance.checked_sub(due) {
                Some(left) => t + left.div_ceil(rate).max(1),
                None => next,
            });
            if self.config.insolvent_below_reserve {
                let floor = self
                    .config
                    .grid_price
                    .cost(self.config.slot_power.over(self.config.quantum))
                    .0;
                wake = wake.min(crossing(floor));
            }
            if let Some(requested) = a.requested {
                let cap = requested.min(a.max_bid).0;
                if cap > 0 {
                    wake = wake.min(crossing(cap));
                }
            }
        }
        self.agents[idx].wake = Some(wake);
        self.wakes.insert((wake, agent));
    }

    /// Files an alive agent with a standing bid for its retrial (`retrial_ticks` after its
    /// last win); a zero bid can never be tried, so it is not filed.
    fn schedule_retrial(&mut self, agent: AgentId) {
        let idx = agent.0 as usize;
        if let Some(r) = self.agents[idx].retrial_at.take() {
            self.retrials.remove(&(r, agent));
        }
        let a = &self.agents[idx];
        if self.config.retrial_ticks == 0
            || !matches!(a.life.get(), Life::Alive)
            || a.requested.is_none_or(|r| r == Tokens::ZERO)
        {
            return;
        }
        let at = a
            .last_won
            .saturating_add(u64::from(self.config.retrial_ticks));
        self.agents[idx].retrial_at = Some(at);
        self.retrials.insert((at, agent));
    }

    /// The `n` highest standing bids, best first.
    pub fn top_bids(&self, n: usize) -> Vec<Bid> {
        self.book.iter().take(n).collect()
    }

    /// Admits an agent with an empty wallet. Pure and deterministic: ids count up from zero.
    pub fn admit(&mut self, spec: AgentSpec) -> AgentId {
        let id = self.books.open_agent();
        self.bid_seq += 1;
        self.agents.push(AgentState {
            life: LifeCell::default(),
            rent_due: Tokens::ZERO,
            rent_rate: 0,
            rent_since: self.tick,
            wake: None,
            retrial_at: None,
            max_bid: spec.max_bid,
            requested: None,
            resident: Bytes(0),
            on_probation: false,
            served: self.bid_seq,
            streak: 0,
            trial_until: u64::from(self.config.trial_quanta),
            last_won: self.tick,
            own_bid: false,
            stats: AgentStats::default(),
        });
        debug_assert_eq!(self.agents.len(), self.books.n_agents());
        // Looked at in its first tick (an unfunded agent is insolvent at once).
        self.touched.insert(id);
        id
    }

    /// The configuration.
    pub fn config(&self) -> &MarketConfig {
        &self.config
    }

    /// Ticks run so far.
    pub fn tick_count(&self) -> u64 {
        self.tick
    }

    /// Number of agents ever admitted.
    pub fn n_agents(&self) -> usize {
        self.agents.len()
    }

    /// An agent's wallet balance.
    pub fn balance(&self, agent: AgentId) -> Option<Tokens> {
        self.books.balance(Account::Agent(agent))
    }

    /// Any account's balance (`None` for mint).
    pub fn account_balance(&self, account: Account) -> Option<Tokens> {
        self.books.balance(account)
    }

    /// What may still be minted before the books reach [`MAX_SUPPLY`](crate::ledger::MAX_SUPPLY):
    /// a funding above it is refused (check it where money enters, before answering).
    pub fn mintable(&self) -> Tokens {
        Tokens(
            crate::ledger::MAX_SUPPLY
                .0
                .saturating_sub(self.books.minted().0),
        )
    }

    /// Total ever minted.
    pub fn minted(&self) -> Tokens {
        self.books.minted()
    }

    /// Where an agent is in its life.
    pub fn life(&self, agent: AgentId) -> Option<&Life> {
        self.agents.get(agent.0 as usize).map(|a| a.life.get())
    }

    /// An agent's running totals.
    pub fn stats(&self, agent: AgentId) -> Option<&AgentStats> {
        self.agents.get(agent.0 as usize).map(|a| &a.stats)
    }

    /// An agent's effective standing bid, as the book holds it.
    pub fn bid(&self, agent: AgentId) -> Option<Bid> {
        self.book.get(agent)
    }

    /// Standing bids.
    pub fn book_depth(&self) -> usize {
        self.book.len()
    }

    /// The last tick's offer.
    pub fn last_offer(&self) -> Option<Offer> {
        self.last_offer
    }

    /// Energy booked to the house (idle, and active energy nobody used the CPU for).
    pub fn energy_house(&self) -> MicroJoules {
        self.energy_house
    }

    /// Recounts the books.
    pub fn check_conservation(&self) -> Result<(), crate::ledger::ConservationError> {
        self.books.check_conservation()
    }

    fn state(&self, agent: AgentId) -> Result<&AgentState, Refusal> {
        self.agents
            .get(agent.0 as usize)
            .ok_or(Refusal::UnknownAgent(agent.0))
    }

    fn alive(&self, agent: AgentId) -> Result<(), Refusal> {
        match self.state(agent)?.life.get() {
            Life::Alive => Ok(()),
            _ => Err(Refusal::NotAlive(agent.0)),
        }
    }

    /// Moves money and records it in the batch. The market only moves money an account has,
    /// so a failure here is a bug.
    fn post(&mut self, batch: &mut LedgerBatch, t: Transfer) {
        if let Err(e) = self.books.apply(&t) {
            panic!("market bug: transfer {t:?} failed: {e}");
        }
        for acc in [t.from, t.to] {
            if let Account::Agent(a) = acc {
                self.touched.insert(a);
            }
        }
        batch.transfers.push(t);
    }

    /// The effective bid: what was asked, capped by `max_bid` and the balance less the rent
    /// owed, rounded down to the price tick.
    fn effective_bid(&self, agent: AgentId) -> Option<Tokens> {
        let a = self.agents.get(agent.0 as usize)?;
        let requested = a.requested?;
        let balance = self.balance(agent)?;
        let capped = requested
            .min(a.max_bid)
            .min(Tokens(balance.0.saturating_sub(self.due(a).0)));
        let tick = self.config.bid_tick.0.max(1);
        Some(Tokens(capped.0 - capped.0 % tick))
    }

    /// The uniform-price clearing with a band of equals: bids more than the band's half-width
    /// above the k-th highest win outright; the bids within it (the band) are equals and
    /// share the remaining slots least recently served first; every winner pays the highest
    /// losing bid (at least the reserve), never more than the lowest winning bid. Bids below
    /// the reserve never win. Without the band, equals whose measured values straddle a tick
    /// boundary would split into a class that always wins and one that never does.
    fn clear(&self, supply: u32, reserve: Tokens) -> (Clearing, Vec<(AgentId, Tokens)>) {
        let k = supply as usize;
        let tick = self.config.bid_tick.0.max(1);
        let on_trial = |b: &Bid| {
            let a = &self.agents[b.agent.0 as usize];
            a.stats.quanta_won < a.trial_until
        };
        let eligible: Vec<Bid> = self
            .book
            .iter()
            .take_while(|b| b.price >= reserve)
            .collect();
        let (mut trials, limits): (Vec<Bid>, Vec<Bid>) = eligible.into_iter().partition(on_trial);
        // Agents on trial with a bid below the reserve (a first estimate that came out low, or a
        // low opening bid) still get their trial: at most at their own bid, so the house pays
        // for the measurement, a turn at a time.
        for &id in &self.trying {
            if let Some(b) = self.book.get(id)
                && b.price < reserve
                && b.price > Tokens::ZERO
                && on_trial(&b)
                && !trials.iter().any(|t| t.agent == id)
            {
                trials.push(b);
            }
        }
        let pay = |winners: &[Bid], trial: &[Bid], price: Tokens| {
            let mut paid: Vec<(AgentId, Tokens)> =
                winners.iter().map(|b| (b.agent, price)).collect();
            paid.extend(trial.iter().map(|b| (b.agent, price.min(b.price))));
            paid
        };
        if limits.len() + trials.len() <= k {
            // Fewer bids at the reserve than slots: all of them win, at the reserve.
            let price = reserve;
            let winners = limits.iter().chain(&trials).map(|b| b.agent).collect();
            return (Clearing { winners, price }, pay(&limits, &trials, price));
        }
        // The band: limit bids within one tick of the k-th highest (or, with fewer limit bids
        // than slots, all of them), plus every trial.
        let kth = limits.get(k.saturating_sub(1)).map_or(reserve, |b| b.price);
        let half = (kth.0 / 100)
            .saturating_mul(u64::from(self.config.band_pct))
            .max(tick);
        let (lo, hi) = (
            Tokens(kth.0.saturating_sub(half)),
            Tokens(kth.0.saturating_add(half)),
        );
        let mut winners: Vec<Bid> = limits.iter().filter(|b| b.price > hi).copied().collect();
        let winners_sure = winners.len().min(k);
        winners.truncate(winners_sure);
        let mut band: Vec<Bid> = limits
            .iter()
            .filter(|b| b.price <= hi && b.price >= lo)
            .copied()
            .chain(trials.iter().copied())
            .collect();
        band.sort_by_key(|b| (b.placed_at, b.agent));
        let need = k - winners.len();
        let (band_won, band_lost) = band.split_at(need.min(band.len()));
        let mut trial_won = Vec::new();
        for b in band_won {
            if on_trial(b) {
                trial_won.push(*b);
            } else {
                winners.push(*b);
            }
        }
        // The price: the highest losing limit bid (in the band or below it), at least the
        // reserve, never above a limit winner's bid. Trials set no price and pay at most their
        // own opening bid.
        let highest_loser = band_lost
            .iter()
            .filter(|b| !on_trial(b))
            .map(|b| b.price)
            .chain(limits.iter().map(|b| b.price).find(|&p| p < lo))
            .max()
            .unwrap_or(Tokens::ZERO);
        let lowest_winner = winners
            .iter()
            .map(|b| b.price)
            .min()
            .unwrap_or(Tokens(u64::MAX));
        let price = highest_loser.max(reserve).min(lowest_winner);
        let all: Vec<AgentId> = winners.iter().chain(&trial_won).map(|b| b.agent).collect();
        (
            Clearing {
                winners: all,
                price,
            },
            pay(&winners, &trial_won, price),
        )
    }

    /// Re-prices a standing bid after the balance moved; keeps the bid's age.
    fn rekey(&mut self, agent: AgentId) {
        if let Some(price) = self.effective_bid(agent) {
            self.book.reprice(agent, price);
        }
    }

    /// Takes up to `amount` from an agent for a charge of `kind`, records it in the agent's
    /// spending, and returns what was paid.
    fn take(
        &mut self,
        batch: &mut LedgerBatch,
        agent: AgentId,
        amount: Tokens,
        kind: TransferKind,
    ) -> Tokens {
        let balance = self.balance(agent).unwrap_or(Tokens::ZERO);
        let paid = balance.min(amount);
        if paid > Tokens::ZERO {
            let to = kind.house().unwrap_or(Account::HouseEnergy);
            self.post(
                batch,
                Transfer {
                    from: Account::Agent(agent),
                    to,
                    amount: paid,
                    kind,
                },
            );
            let spent = &mut self.agents[agent.0 as usize].stats.spent;
            let bucket = match kind {
                TransferKind::Rent => &mut spent.rent,
                TransferKind::LandauerTax => &mut spent.landauer,
                TransferKind::Fine => &mut spent.fines,
                _ => &mut spent.slots,
            };
            *bucket = bucket.saturating_add(paid);
        }
        paid
    }

    /// Posts the rent an agent owes (up to what it has; the rest is forgiven, as it is dying).
    fn settle_rent(&mut self, batch: &mut LedgerBatch, agent: AgentId) {
        self.fold(agent, self.tick);
        let due = std::mem::take(&mut self.agents[agent.0 as usize].rent_due);
        if due > Tokens::ZERO {
            self.take(batch, agent, due, TransferKind::Rent);
        }
    }

    /// Charges an agent. Pays in full, or pays everything it has and starts dying.
    fn charge(
        &mut self,
        batch: &mut LedgerBatch,
        out_dying: &mut Vec<(AgentId, Cause)>,
        agent: AgentId,
        amount: Tokens,
        kind: TransferKind,
    ) {
        if amount == Tokens::ZERO {
            return;
        }
        let paid = self.take(batch, agent, amount, kind);
        if paid < amount {
            // What it still owes in rent is paid from whatever is left, before it dies.
            self.settle_rent(batch, agent);
            let cause = Cause::Insolvent {
                charge: kind,
                owed: amount,
                paid,
            };
            self.begin_dying(agent, cause.clone());
            out_dying.push((agent, cause));
        } else {
            self.rekey(agent);
        }
    }

    /// Pays a bounty from the pool, at most what the pool holds (payouts round down to what
    /// exists).
    fn pay_bounty(&mut self, batch: &mut LedgerBatch, agent: AgentId, nominal: Tokens) {
        if self.config.recycle_income
            && self
                .books
                .balance(Account::BountyPool)
                .unwrap_or(Tokens::ZERO)
                < nominal
        {
            self.recycle(batch);
        }
        let pool = self
            .books
            .balance(Account::BountyPool)
            .unwrap_or(Tokens::ZERO);
        let paid = nominal.min(pool);
        if paid > Tokens::ZERO {
            self.post(
                batch,
                Transfer {
                    from: Account::BountyPool,
                    to: Account::Agent(agent),
                    amount: paid,
                    kind: TransferKind::Bounty,
                },
            );
        }
        let s = &mut self.agents[agent.0 as usize].stats;
        s.bounties = s.bounties.saturating_add(paid);
        self.rekey(agent);
    }

    /// What the pool may pay out per tick now, in micro-tokens times [`RATE_ONE`]: its recent
    /// income (the house's takings when they are recycled, and the grant), plus its balance
    /// over its horizon.
    fn payout_budget(&self) -> u128 {
        let pool = u128::from(
            self.books
                .balance(Account::BountyPool)
                .unwrap_or(Tokens::ZERO)
                .0,
        );
        self.income_rate.saturating_add(
            pool.saturating_mul(RATE_ONE) / u128::from(self.config.bounty_horizon_ticks.max(1)),
        )
    }

    /// The bounty `units` of verified work earn if claimed now: the payout budget shared by
    /// the work claimed recently, at most `bounty_per_unit` a unit. Rounded down.
    fn bounty_now(&self, units: u64) -> Tokens {
        let cap = bounty(units, self.config.bounty_per_unit);
        if self.work_rate == 0 {
            return cap;
        }
        let due = u128::from(units).saturating_mul(self.payout_budget()) / self.work_rate;
        Tokens(u64::try_from(due).unwrap_or(u64::MAX)).min(cap)
    }

    /// Minted into the bounty pool by this market since it was built or restored.
    pub fn pool_funded(&self) -> Tokens {
        self.pool_funded
    }

    /// What one unit of verified work earns now, in thousandths of a micro-token (so 128_000
    /// is the default cap of 128 micro-JOULE).
    pub fn bounty_rate_milli(&self) -> u64 {
        // What 1,000 units earn, in micro-tokens, is one unit's rate in thousandths.
        self.bounty_now(1_000).0
    }

    /// Moves everything the house accounts hold into the bounty pool
    /// ([`MarketConfig::recycle_income`]).
    fn recycle(&mut self, batch: &mut LedgerBatch) {
        for house in [
            Account::HouseEnergy,
            Account::HouseRent,
            Account::HouseLandauer,
            Account::HouseSlash,
        ] {
            let held = self.books.balance(house).unwrap_or(Tokens::ZERO);
            if held > Tokens::ZERO {
                self.post(
                    batch,
                    Transfer {
                        from: house,
                        to: Account::BountyPool,
                        amount: held,
                        kind: TransferKind::Recycling,
                    },
                );
            }
        }
    }

    fn begin_dying(&mut self, agent: AgentId, cause: Cause) {
        self.book.cancel(agent);
        self.fold(agent, self.tick);
        let a = &mut self.agents[agent.0 as usize];
        a.requested = None;
        a.life.set(Life::Dying {
            since_tick: self.tick,
            cause,
        });
        self.dying.insert(agent);
        self.schedule(agent);
        self.schedule_retrial(agent);
    }

    fn apply_command(
        &mut self,
        batch: &mut LedgerBatch,
        out_dying: &mut Vec<(AgentId, Cause)>,
        cmd: &Command,
    ) -> Result<(), Refusal> {
        match cmd {
            Command::Fund { agent, amount } => {
                self.alive(*agent)?;
                if *amount == Tokens::ZERO {
                    return Err(Refusal::ZeroFunding);
                }
                let t = Transfer {
                    from: Account::Mint,
                    to: Account::Agent(*agent),
                    amount: *amount,
                    kind: TransferKind::Funding,
                };
                self.books.apply(&t).map_err(|_| Refusal::Overflow)?;
                batch.transfers.push(t);
                let s = &mut self.agents[agent.0 as usize].stats;
                s.funded = s.funded.saturating_add(*amount);
                self.touched.insert(*agent);
                self.rekey(*agent);
            }
            Command::FundBountyPool { amount } => {
                let t = Transfer {
                    from: Account::Mint,
                    to: Account::BountyPool,
                    amount: *amount,
                    kind: TransferKind::PoolFunding,
                };
                self.books.apply(&t).map_err(|_| Refusal::Overflow)?;
                batch.transfers.push(t);
                self.pool_funded = self.pool_funded.saturating_add(*amount);
            }
            Command::Bid { agent, price } | Command::OpeningBid { agent, price } => {
                self.alive(*agent)?;
                let own = matches!(cmd, Command::Bid { .. });
                let a = &mut self.agents[agent.0 as usize];
                if !own && a.own_bid {
                    // The agent already speaks for itself.
                    return Ok(());
                }
                a.own_bid = own;
                a.requested = Some(*price);
                let effective = self.effective_bid(*agent).unwrap_or(Tokens::ZERO);
                // A new bid keeps the agent's place among equals: priority is least recently
                // served, not oldest bid, so re-bidding the same value costs no turn.
                let placed = self.book.place(Bid {
                    agent: *agent,
                    price: effective,
                    placed_at: self.agents[agent.0 as usize].served,
                });
                debug_assert!(placed.is_ok(), "bid_seq never reaches u64::MAX");
                self.touched.insert(*agent);
                self.schedule_retrial(*agent);
            }
            Command::CancelBid { agent } => {
                self.alive(*agent)?;
                self.agents[agent.0 as usize].requested = None;
                self.book.cancel(*agent);
                self.touched.insert(*agent);
                self.schedule_retrial(*agent);
            }
            Command::Kill { agent, cause } => {
                if matches!(cause, Cause::Insolvent { .. }) {
                    return Err(Refusal::BadKillCause);
                }
                self.alive(*agent)?;
                self.settle_rent(batch, *agent);
                self.begin_dying(*agent, cause.clone());
                out_dying.push((*agent, cause.clone()));
            }
            Command::SettleRent => {
                for i in 0..self.agents.len() {
                    let agent = AgentId(i as u32);
                    if matches!(self.agents[i].life.get(), Life::Alive)
                        && self.due(&self.agents[i]).0 > 0
                    {
                        self.settle_rent(batch, agent);
                        self.touched.insert(agent);
                    }
                }
            }
        }
        Ok(())
    }

    /// One tick. See the module documentation for the order of events.
    ///
    /// # Panics
    /// If the conservation invariant fails after the tick: a bug, caught before the batch can
    /// be committed.
    pub fn tick(&mut self, input: TickInput) -> TickOutcome {
        self.tick += 1;
        // The driver's clock is trusted only so far: time never runs backwards for the market,
        // and one tick never covers more than ten quanta (a stalled driver must not be billed
        // hours at once). Rent is charged per quantum, not per elapsed time.
        let quantum = self.config.quantum;
        let dt = match self.last_now {
            Some(last) => Nanos(
                input
                    .now
                    .saturating_sub(last)
                    .0
                    .min(quantum.0.saturating_mul(10)),
            ),
            None => quantum,
        };
        self.last_now = Some(self.last_now.map_or(input.now, |last| last.max(input.now)));
        self.last_temperature = input.temperature;
        let mut batch = LedgerBatch {
            tick: self.tick,
            ..LedgerBatch::default()
        };
        let mut dying = Vec::new();
        let mut refused = Vec::new();

        // 1. Commands.
        for (i, cmd) in input.commands.iter().enumerate() {
            if let Err(e) = self.apply_command(&mut batch, &mut dying, cmd) {
                refused.push((format!("command {i}"), e));
            }
        }

        // 2. Energy attribution among agents that are not dead.
        let active = input.energy.saturating_sub(input.energy_idle);
        let cpu: Vec<(AgentId, Nanos)> = input
            .usage
            .iter()
            .filter(|u| {
                self.agents
                    .get(u.agent.0 as usize)
                    .is_some_and(|a| !matches!(a.life.get(), Life::Dead { .. }))
            })
            .map(|u| (u.agent, u.cpu))
            .collect();
        let shares = attribute(active, &cpu, input.machine_cpu);
        let attributed: u64 = shares.iter().map(|(_, e)| e.0).sum();
        self.energy_house = self
            .energy_house
            .saturating_add(input.energy.saturating_sub(MicroJoules(attributed)));
        for ((agent, e), (_, cpu_t)) in shares.iter().zip(&cpu) {
            let s = &mut self.agents[agent.0 as usize].stats;
            s.energy = s.energy.saturating_add(*e);
            s.cpu = Nanos(s.cpu.0.saturating_add(cpu_t.0));
        }

        // 3a. Usage: resident memory and the Landauer tax on erasure.
        let grid = self.config.grid_price;
        for u in &input.usage {
            let Some(a) = self.agents.get_mut(u.agent.0 as usize) else {
                refused.push((
                    format!("usage of agent {}", u.agent.0),
                    Refusal::UnknownAgent(u.agent.0),
                ));
                continue;
            };
            if !matches!(a.life.get(), Life::Alive) {
                continue;
            }
            a.stats.erased = Bytes(a.stats.erased.0.saturating_add(u.erased.0));
            if a.resident != u.resident {
                // Rent through the last tick at the old size; this tick's at the new one.
                self.fold(u.agent, self.tick.saturating_sub(1));
                let a = &mut self.agents[u.agent.0 as usize];
                a.resident = u.resident;
                a.rent_rate = memory_rent(u.resident, self.config.rent_per_gib, quantum, grid).0;
                self.touched.insert(u.agent);
            }
            let tax = landauer_tax(
                u.erased,
                input.temperature,
                self.config.landauer_inefficiency,
                grid,
            );
            self.charge(
                &mut batch,
                &mut dying,
                u.agent,
                tax,
                TransferKind::LandauerTax,
            );
        }

        // 3b. Rent from every living agent, frozen or not: memory rent, plus (with
        // `idle_rent`) its share of the machine's static draw this tick, split by resident
        // memory. Memory rent accrues lazily (`Market::due`); an agent is looked at only when
        // something touched its wallet or bid, or its wake-up tick came (its rent period ended,
        // or its rent reached what it can pay or started to cap its bid). With `idle_rent`
        // every living agent's share changes every tick, so all are looked at: O(agents).
        let mut looked: BTreeSet<AgentId> = std::mem::take(&mut self.touched);
        while let Some(&(at, id)) = self.wakes.first() {
            if at > self.tick {
                break;
            }
            self.wakes.pop_first();
            self.agents[id.0 as usize].wake = None;
            looked.insert(id);
        }
        if self.config.idle_rent {
            let living: Vec<(AgentId, u64)> = self
                .agents
                .iter()
                .enumerate()
                .filter(|(_, a)| matches!(a.life.get(), Life::Alive))
                .map(|(i, a)| (AgentId(i as u32), a.resident.0))
                .collect();
            let idle_shares = split(input.energy_idle.0.min(input.energy.0), &living);
            for (agent, idle) in idle_shares {
                let a = &mut self.agents[agent.0 as usize];
                a.rent_due = Tokens(a.rent_due.0.saturating_add(grid.cost(MicroJoules(idle)).0));
                looked.insert(agent);
            }
        }
        for &agent in &looked {
            if !matches!(self.agents[agent.0 as usize].life.get(), Life::Alive) {
                continue;
            }
            self.fold(agent, self.tick);
            let due = self.agents[agent.0 as usize].rent_due;
            let balance = self.balance(agent).unwrap_or(Tokens::ZERO);
            if due > Tokens::ZERO && (due >= balance || self.settles(agent, self.tick)) {
                self.agents[agent.0 as usize].rent_due = Tokens::ZERO;
                self.charge(&mut batch, &mut dying, agent, due, TransferKind::Rent);
            } else {
                // The bid is capped by what is not owed.
                self.rekey(agent);
            }
        }

        // 3c. Verdicts: a failed audit costs bounty / q and puts the agent on probation.
        for v in &input.verdicts {
            let Some(p) = self.pending_audits.remove(&v.claim) else {
                refused.push((
                    format!("verdict on claim {}", v.claim.0),
                    Refusal::UnknownClaim(v.claim.0),
                ));
                continue;
            };
            let a = &mut self.agents[p.agent.0 as usize];
            if v.passed {
                a.stats.audits_passed += 1;
                // The bounty of an audited claim was held until now.
                if !matches!(a.life.get(), Life::Dead { .. }) {
                    self.pay_bounty(&mut batch, p.agent, p.nominal_bounty);
                }
                continue;
            }
            a.stats.audits_failed += 1;
            a.stats.work_refuted = a.stats.work_refuted.saturating_add(p.units);
            a.on_probation = true;
            let fine = audit_fine(p.nominal_bounty, p.audit_ppm);
            match a.life.get() {
                Life::Alive => {
                    self.charge(&mut batch, &mut dying, p.agent, fine, TransferKind::Fine);
                }
                // Dying does not excuse a fine: take what there is, without a second apoptosis.
                Life::Dying { .. } => {
                    self.take(&mut batch, p.agent, fine, TransferKind::Fine);
                }
                Life::Dead { .. } => {}
            }
        }

        // 3d. Claims. A claim is audited at least at the base rate q, and more often when the
        // wallet could not pay the fine (bounty / q) at that rate (`covered_audit_ppm`), so that
        // cheating has an expected fine of at least its bounty whatever the claimant's wealth,
        // while a poor honest agent can still work; the audit lottery is drawn first; an
        // audited claim's bounty is held until its verdict passes, an unaudited one is paid
        // now. While the audit backlog is full every claim is refused, so a full backlog cannot
        // be used to dodge audits.
        let mut audits = Vec::new();
        let mut claimed_units: u128 = 0;
        for c in &input.claims {
            let refuse = |refused: &mut Vec<(String, Refusal)>, e| {
                refused.push((format!("claim {}", c.id.0), e));
            };
            if let Err(e) = self.alive(c.agent) {
                refuse(&mut refused, e);
                continue;
            }
            if self.pending_audits.contains_key(&c.id) {
                refuse(&mut refused, Refusal::DuplicateClaim(c.id.0));
                continue;
            }
            if self.pending_audits.len() >= self.config.max_pending_audits {
                refuse(&mut refused, Refusal::AuditBacklog);
                continue;
            }
            let on_probation = self.agents[c.agent.0 as usize].on_probation;
            let nominal = self.bounty_now(c.units);
            claimed_units = claimed_units.saturating_add(u128::from(c.units));
            let ppm = if on_probation {
                PPM
            } else {
                covered_audit_ppm(
                    nominal,
                    self.balance(c.agent).unwrap_or(Tokens::ZERO),
                    self.config.audit_ppm,
                )
            };
            let audited = ppm >= PPM || (self.rng.next_u64() % u64::from(PPM)) < u64::from(ppm);
            let s = &mut self.agents[c.agent.0 as usize].stats;
            s.work_claimed = s.work_claimed.saturating_add(c.units);
            if audited {
                self.pending_audits.insert(
                    c.id,
                    PendingAudit {
                        agent: c.agent,
                        units: c.units,
                        nominal_bounty: nominal,
                        audit_ppm: ppm,
                    },
                );
                audits.push(AuditRequest {
                    claim: c.id,
                    agent: c.agent,
                });
            } else {
                self.pay_bounty(&mut batch, c.agent, nominal);
            }
        }

        // 3e. An agent that can no longer afford one quantum at the lowest reserve can never
        // run again: it is insolvent now, not when rent has eaten its residue.
        // Only agents looked at or touched this tick can have crossed the line: any other's
        // wallet is as it was, and its rent's crossing is one of its wake-up ticks.
        looked.append(&mut std::mem::take(&mut self.touched));
        if self.config.insolvent_below_reserve {
            let floor = grid.cost(self.config.slot_power.over(quantum));
            for &agent in &looked {
                let a = &self.agents[agent.0 as usize];
                if !matches!(a.life.get(), Life::Alive) {
                    continue;
                }
                let balance = self.balance(agent).unwrap_or(Tokens::ZERO);
                let free = Tokens(balance.0.saturating_sub(self.due(a).0));
                if free < floor {
                    self.settle_rent(&mut batch, agent);
                    let cause = Cause::Insolvent {
                        charge: TransferKind::SlotPayment,
                        owed: floor,
                        paid: free,
                    };
                    self.begin_dying(agent, cause.clone());
                    dying.push((agent, cause));
                }
            }
        }

        for &agent in &looked {
            self.schedule(agent);
        }

        // 4. Apoptosis: dying agents whose grace is over die now.
        let mut deaths = Vec::new();
        let dying_now: Vec<AgentId> = self.dying.iter().copied().collect();
        for id in dying_now {
            let idx = id.0 as usize;
            let a = &mut self.agents[idx];
            if let Life::Dying { since_tick, cause } = a.life.get()
                && self.tick >= since_tick.saturating_add(u64::from(self.config.grace_ticks))
            {
                self.dying.remove(&id);
                self.n_dead += 1;
                let cause = cause.clone();
                batch.deaths.push(Death {
                    agent: AgentId(idx as u32),
                    cause: cause.clone(),
                });
                deaths.push(AgentId(idx as u32));
                a.life.set(Life::Dead {
                    at_tick: self.tick,
                    cause,
                });
                a.resident = Bytes(0);
            }
        }

        // 4b. Retrials: an alive agent frozen out for `retrial_ticks` gets a trial turn.
        if self.config.retrial_ticks > 0 {
            let turn = u64::from(self.config.turn_quanta.max(1));
            while let Some(&(at, id)) = self.retrials.first() {
                if at > self.tick {
                    break;
                }
                self.retrials.pop_first();
                let tick = self.tick;
                let a = &mut self.agents[id.0 as usize];
                a.retrial_at = None;
                // An agent frozen in the middle of its first trial (its bid fell below the
                // reserve before the trial was over) finishes that trial; any other gets a
                // new turn.
                if a.stats.quanta_won >= a.trial_until {
                    a.trial_until = a.stats.quanta_won + turn;
                }
                a.last_won = tick;
                self.trying.insert(id);
                self.schedule_retrial(id);
            }
            let agents = &self.agents;
            self.trying.retain(|id| {
                let a = &agents[id.0 as usize];
                matches!(a.life.get(), Life::Alive) && a.stats.quanta_won < a.trial_until
            });
        }

        // 5. Price.
        let budget = self.pid.step(input.temperature, dt);
        let offer = offer(
            budget,
            self.config.pid.power_sustainable,
            self.config.slot_power,
            self.config.slots_max,
            self.config.quantum,
            grid,
        );
        self.last_offer = Some(offer);

        // 6. Clear; winners pay the uniform price. Bids are capped by balances, so every winner
        // can pay.
        let (clearing, payments) = self.clear(offer.supply, offer.reserve);
        assert!(clearing.winners.len() <= offer.supply as usize);
        for &(w, price) in &payments {
            let bid = self.book.get(w).map_or(Tokens::ZERO, |b| b.price);
            assert!(bid >= price, "a winner never pays more than its bid");
            self.post(
                &mut batch,
                Transfer {
                    from: Account::Agent(w),
                    to: Account::HouseEnergy,
                    amount: price,
                    kind: TransferKind::SlotPayment,
                },
            );
            let turn = self.config.turn_quanta.max(1);
            let tick = self.tick;
            let a = &mut self.agents[w.0 as usize];
            a.stats.quanta_won += 1;
            a.last_won = tick;
            if a.retrial_at != Some(tick + u64::from(self.config.retrial_ticks)) {
                self.schedule_retrial(w);
            }
            let a = &mut self.agents[w.0 as usize];
            a.stats.spent.slots = a.stats.spent.slots.saturating_add(price);
            // A turn over: behind every equal bidder for the next clearing.
            a.streak += 1;
            let requeue = a.streak >= turn;
            if requeue {
                a.streak = 0;
                self.bid_seq += 1;
                a.served = self.bid_seq;
            }
            let served = a.served;
            if let Some(price) = self.effective_bid(w) {
                let placed = self.book.place(Bid {
                    agent: w,
                    price,
                    placed_at: served,
                });
                debug_assert!(placed.is_ok(), "bid_seq never reaches u64::MAX");
            }
        }
        // An equal that lost its slot mid-turn starts its next turn afresh.
        for prev in std::mem::replace(&mut self.last_winners, clearing.winners.clone()) {
            if !clearing.winners.contains(&prev) {
                self.agents[prev.0 as usize].streak = 0;
            }
        }

        // 6b. The house's income this tick sets the next ticks' bounty rate, and (with
        // `recycle_income`) goes back to the pool on every rent posting tick, or sooner when a bounty
        // needs it.
        let mut income: u128 = if self.config.recycle_income {
            batch
                .transfers
                .iter()
                .filter(|t| t.kind.house() == Some(t.to))
                .map(|t| u128::from(t.amount.0))
                .sum()
        } else {
            0
        };
        // The operator's grant accrues while work is being claimed and the pool pays less
        // than the most a unit may earn (so it never piles up in a pool that pays in full).
        let granting = self.config.bounty_grant.0 > 0
            && self.work_rate >= RATE_ONE
            && self.bounty_rate_milli() < self.config.bounty_per_unit.0.saturating_mul(1_000);
        if granting {
            let grant = grid.cost(self.config.bounty_grant.over(quantum));
            income = income.saturating_add(u128::from(grant.0));
            self.grant_due = self.grant_due.saturating_add(grant);
        }
        self.income_rate = ewma(self.income_rate, income);
        self.work_rate = ewma(self.work_rate, claimed_units);
        if self.tick.is_multiple_of(self.rent_cadence().0) {
            let due = std::mem::take(&mut self.grant_due);
            if due > Tokens::ZERO {
                let t = Transfer {
                    from: Account::Mint,
                    to: Account::BountyPool,
                    amount: due,
                    kind: TransferKind::PoolFunding,
                };
                match self.books.apply(&t) {
                    Ok(()) => batch.transfers.push(t),
                    // All the money there may ever be is minted: the grant stops.
                    Err(_) => refused.push(("the bounty grant".into(), Refusal::Overflow)),
                }
            }
            if self.config.recycle_income {
                self.recycle(&mut batch);
            }
        }

        // 7. The invariant, in every build.
        if let Err(e) = self.books.check_conservation() {
            panic!("tick {}: {e}", self.tick);
        }

        TickOutcome {
            tick: self.tick,
            offer,
            clearing,
            batch,
            audits,
            dying,
            deaths,
            refused,
        }
    }
}

#[cfg(test)]
mod tests;
