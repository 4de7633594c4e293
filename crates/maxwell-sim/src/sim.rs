//! The simulation engine: a virtual clock, simulated physics (power per running slot through the
//! RC thermal model), simulated agents, and invariant checkers after every tick.

use std::collections::BTreeMap;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde::Serialize;
use sha2::{Digest, Sha256};

use maxwell_agent::ValueMeter;
use maxwell_core::ledger::Books;
use maxwell_core::thermal::ThermalRc;
use maxwell_core::work::{RANGE, UNIT};
use maxwell_core::{
    Account, AgentId, AgentSpec, Claim, ClaimId, Command, Life, Market, MilliCelsius, MilliWatts,
    Nanos, TickInput, Tokens, Usage, Verdict,
};

use crate::scenario::{Profile, Scenario, group_names};
use crate::story::{Phases, phases};

/// One simulated agent.
#[derive(Debug, Clone)]
pub(crate) struct SimAgent {
    pub name: String,
    pub profile: Profile,
    pub id: AgentId,
    funds: Tokens,
    max_bid: Tokens,
    memory: maxwell_core::Bytes,
    churn: maxwell_core::Bytes,
    /// Power drawn per busy slot relative to the slot power.
    activity: f64,
    /// Fraction of a won quantum spent on the CPU.
    cpu_fraction: f64,
    fixed_bid: Option<Tokens>,
    /// Units of work per quantum won at full clock (scientist and liar).
    units: u64,
    /// Quanta it had won when its words were last read (what its income is counted over).
    drained: u64,
    /// Units done (or pretended) in a lease not yet finished.
    unclaimed: u64,
    /// The bid it last placed.
    bid: Option<Tokens>,
    /// The scientist's meter of its own value per quantum: the real agents' code.
    meter: ValueMeter,
    /// Units of work actually done (ground truth, not claims).
    pub found: u64,
}

/// Units of work in one lease of the node's dispenser.
const LEASE_UNITS: u64 = RANGE / UNIT;

/// One tick as the story and the plots need it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TickRecord {
    pub tick: u64,
    pub temperature: MilliCelsius,
    pub power: MilliWatts,
    pub supply: u32,
    pub reserve: Tokens,
    pub price: Tokens,
    /// Indices into the agent list.
    pub winners: Vec<usize>,
}

/// A death as the story tells it.
#[derive(Debug, Clone, Serialize)]
pub struct DeathEvent {
    /// Tick of death.
    pub tick: u64,
    /// Tick it became insolvent (or was killed).
    pub dying_since_tick: u64,
    /// Agent name.
    pub agent: String,
    /// Profile name.
    pub profile: &'static str,
    /// Why, in words.
    pub cause: String,
}

/// Money an agent paid, by category, in micro-JOULE.
#[derive(Debug, Clone, Serialize)]
pub struct SpentSummary {
    /// Slot payments.
    pub slots: u64,
    /// Memory rent.
    pub rent: u64,
    /// Landauer tax.
    pub landauer: u64,
    /// Audit fines.
    pub fines: u64,
}

/// One agent at the end of the run.
#[derive(Debug, Clone, Serialize)]
pub struct AgentSummary {
    /// Name.
    pub name: String,
    /// Profile.
    pub profile: &'static str,
    /// Still alive at the end.
    pub alive: bool,
    /// Tick of death.
    pub died_at_tick: Option<u64>,
    /// Why it died.
    pub cause: Option<String>,
    /// Useful work: units (1,024 numbers sieved) actually done.
    pub work: u64,
    /// Units claimed (and paid a bounty for, before audits).
    pub claimed: u64,
    /// Claims that failed an audit.
    pub audits_failed: u64,
    /// Quanta won.
    pub quanta_won: u64,
    /// Energy attributed to it, joules.
    pub energy_j: f64,
    /// Final balance, micro-JOULE.
    pub balance: u64,
    /// Funding received, micro-JOULE.
    pub funded: u64,
    /// Bounties received, micro-JOULE.
    pub bounties: u64,
    /// Money paid by category.
    pub spent: SpentSummary,
}

/// Useful work per joule in one arm.
#[derive(Debug, Clone, Serialize)]
pub struct ArmSummary {
    /// Units of work done by honest agents.
    pub useful_work: u64,
    /// Energy the whole machine used, joules.
    pub energy_j: f64,
    /// `useful_work / energy_j`.
    pub efficiency: f64,
    /// Hottest the die got.
    pub max_temperature_c: f64,
    /// Temperature at the end.
    pub final_temperature_c: f64,
    /// Ticks the hardware spent throttled at TjMax.
    pub throttled_ticks: u64,
}

/// Balances of the system accounts at the end, micro-JOULE.
#[derive(Debug, Clone, Serialize)]
pub struct BooksSummary {
    /// Total minted.
    pub minted: u64,
    /// Slot payments received.
    pub house_energy: u64,
    /// Rent received.
    pub house_rent: u64,
    /// Landauer tax received.
    pub house_landauer: u64,
    /// Fines received.
    pub house_slash: u64,
    /// Left in the bounty pool.
    pub bounty_pool: u64,
    /// Transfers written.
    pub transfers: u64,
}

/// Everything `maxwell simulate --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Always true: nothing real ran.
    pub simulated: bool,
    /// Scenario name.
    pub scenario: String,
    /// Seed.
    pub seed: u64,
    /// Ticks run.
    pub ticks: u64,
    /// Tick length, milliseconds.
    pub tick_ms: f64,
    /// Where energy and temperature came from.
    pub energy_source: String,
    /// Money unit of every integer amount.
    pub money_unit: &'static str,
    /// Agents in scenario order.
    pub agents: Vec<AgentSummary>,
    /// Die temperature at the end.
    pub final_temperature_c: f64,
    /// Hottest the die got.
    pub max_temperature_c: f64,
    /// Whether the books balanced after every tick (checked twice: the market's recount and an
    /// independent replay of every batch).
    pub conservation_ok: bool,
    /// Invariant violations found by the checkers (empty on a correct run).
    pub violations: Vec<String>,
    /// SHA-256 over every tick's ledger batch, in order.
    pub ledger_digest: String,
    /// The system accounts at the end.
    pub books: BooksSummary,
    /// The market arm.
    pub maxwell: ArmSummary,
    /// The same machine and agents under fair sharing with no market.
    pub baseline: ArmSummary,
    /// `maxwell.efficiency / baseline.efficiency`.
    pub ratio_vs_baseline: f64,
    /// The story.
    pub phases: Phases,
}

/// What the story and renderers need besides the summary.
pub(crate) struct Trace {
    pub records: Vec<TickRecord>,
    pub agents: Vec<SimAgent>,
    pub deaths: Vec<DeathEvent>,
}

fn build_agents(scenario: &Scenario, rng: &mut ChaCha8Rng) -> Vec<SimAgent> {
    let mut out = Vec::new();
    for g in &scenario.agents {
        for name in group_names(g) {
            // Every agent draws from the RNG in the same order, used or not, so that editing
            // one group's parameters does not reshuffle the others.
            let draw = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            let (activity, cpu_fraction, churn) = match g.profile {
                Profile::Scientist => (1.0, 1.0, maxwell_core::Bytes(0)),
                Profile::Leech => (1.0, 1.0, maxwell_core::Bytes::mib(4)),
                Profile::Squatter => (0.0, 0.0, maxwell_core::Bytes(0)),
                Profile::Liar => (0.1, 0.1, maxwell_core::Bytes(0)),
            };
            let speed = g.speed.unwrap_or(1.0);
            out.push(SimAgent {
                name,
                profile: g.profile,
                id: AgentId(0),
                funds: g.funds,
                max_bid: g.max_bid.unwrap_or(scenario.market.max_bid),
                memory: g.memory,
                churn: g.churn.unwrap_or(churn),
                activity: g.activity.unwrap_or(activity),
                cpu_fraction,
                // A fixed bid is the group's give or take 20%, so that such agents compete.
                fixed_bid: g
                    .bid
                    .map(|b| Tokens((b.0 as f64 * (0.8 + 0.4 * draw)) as u64)),
                units: ((scenario.work.units_per_quantum as f64 * speed).round() as u64).max(1),
                drained: 0,
                unclaimed: 0,
                bid: None,
                meter: ValueMeter::default(),
                found: 0,
            });
        }
    }
    out
}

/// The bid an agent places after a quantum it ran, as the built-in WASM agent of its profile
/// does: a fixed bid if the scenario gives one; the scientist its measured net income per
/// quantum (the same [`ValueMeter`] the native agents use, fed what the node tells agents:
/// bounties less Landauer tax, over the quanta whose claims were paid); the leech nine tenths
/// of its balance; the liar a tenth; the squatter nothing.
fn wanted_bid(a: &mut SimAgent, market: &Market, quanta: u64) -> Option<Tokens> {
    if let Some(b) = a.fixed_bid {
        return (a.profile != Profile::Squatter).then_some(b);
    }
    let balance = market.balance(a.id).unwrap_or(Tokens::ZERO);
    match a.profile {
        Profile::Squatter => None,
        Profile::Leech => Some(Tokens(balance.0 / 10 * 9)),
        Profile::Liar => Some(Tokens(balance.0 / 10)),
        Profile::Scientist => {
            let s = market.stats(a.id)?;
            let income = Tokens(s.bounties.0.saturating_sub(s.spent.landauer.0));
            a.meter.observe(income, quanta, balance)
        }
    }
}

/// Runs a scenario with a seed. Deterministic: the same inputs give the same summary.
pub fn run(scenario: &Scenario, seed: u64) -> Summary {
    let (summary, _) = run_traced(scenario, seed);
    summary
}

pub(crate) fn run_traced(scenario: &Scenario, seed: u64) -> (Summary, Trace) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let config = scenario.market_config(rng.next_u64());
    let quantum = config.quantum;
    let slot_power = config.slot_power;
    let mut market = match Market::new(config) {
        Ok(m) => m,
        // Scenario::parse validated this configuration.
        Err(e) => panic!("scenario passed validation but the market refused it: {e}"),
    };
    let mut agents = build_agents(scenario, &mut rng);
    let mut commands = vec![Command::FundBountyPool {
        amount: scenario.market.bounty_pool,
    }];
    for a in &mut agents {
        a.id = market.admit(AgentSpec { max_bid: a.max_bid });
        commands.push(Command::Fund {
            agent: a.id,
            amount: a.funds,
        });
        // As the daemon spawns an agent: the owner bids for it until it bids for itself.
        commands.push(Command::OpeningBid {
            agent: a.id,
            price: scenario.market.opening_bid,
        });
    }
    let idle = scenario.machine.idle_power;
    let mut thermal = ThermalRc::new(scenario.rc_params(), scenario.initial_temperature());
    let n_ticks = scenario.duration.0 / quantum.0;
    let mut running: Vec<usize> = Vec::new();
    let mut verdicts: Vec<Verdict> = Vec::new();
    let mut next_claim = 0u64;
    let mut shadow = Books::default();
    for _ in &agents {
        shadow.open_agent();
    }
    let mut hasher = Sha256::new();
    let mut records = Vec::with_capacity(n_ticks as usize);
    let mut deaths = Vec::new();
    let mut violations = Vec::new();
    let mut energy_total = maxwell_core::MicroJoules(0);
    let mut max_temp = thermal.temperature();
    let mut transfers = 0u64;
    let mut throttled_ticks = 0u64;
    let by_id: BTreeMap<AgentId, usize> =
        agents.iter().enumerate().map(|(i, a)| (a.id, i)).collect();

    for t in 1..=n_ticks {
        let now = Nanos(t * quantum.0);
        // Physics of the quantum that just ran. At TjMax the hardware halves the clock of
        // everything running (PROCHOT), whatever the scheduler wanted.
        let speed = throttle(thermal.temperature(), scenario.machine.tj_max);
        throttled_ticks += u64::from(speed < 1.0);
        let busy: f64 = running.iter().map(|&i| agents[i].activity).sum::<f64>() * speed;
        let power = MilliWatts(idle.0 + (busy * slot_power.0 as f64).round() as u64);
        let energy = power.over(quantum);
        energy_total = energy_total.saturating_add(energy);
        let temperature = thermal.step(power, quantum);
        max_temp = max_temp.max(temperature);

        // What each agent did with it.
        let mut usage = Vec::new();
        let mut claims = Vec::new();
        // Whether each claim is honest: the simulator knows, so an audit needs no recomputation.
        let mut claimed: BTreeMap<ClaimId, bool> = BTreeMap::new();
        for (i, a) in agents.iter_mut().enumerate() {
            if matches!(market.life(a.id), Some(Life::Dead { .. })) {
                continue;
            }
            let ran = running.contains(&i);
            usage.push(Usage {
                agent: a.id,
                cpu: Nanos(if ran {
                    (quantum.0 as f64 * a.cpu_fraction) as u64
                } else {
                    0
                }),
                // As the node bills it: at least the rent floor.
                resident: a.memory.max(maxwell_core::defaults::RENT_FLOOR),
                erased: if ran { a.churn } else { maxwell_core::Bytes(0) },
            });
            if !ran {
                continue;
            }
            let units = ((a.units as f64) * speed).round() as u64;
            let honest = match a.profile {
                Profile::Scientist => {
                    a.found += units;
                    true
                }
                Profile::Liar => false,
                Profile::Leech | Profile::Squatter => continue,
            };
            // One claim per lease finished, as the real agents claim (a lease cut by the end
            // of the quantum is finished, and claimed, in the next quantum it runs).
            a.unclaimed += units;
            while a.unclaimed >= LEASE_UNITS {
                a.unclaimed -= LEASE_UNITS;
                next_claim += 1;
                claims.push(Claim {
                    id: ClaimId(next_claim),
                    agent: a.id,
                    units: LEASE_UNITS,
                });
                claimed.insert(ClaimId(next_claim), honest);
            }
        }

        // Each agent that ran bid during its quantum as its built-in agent does (a frozen one
        // cannot), on what the node told it at the end of the last tick: its balance, and its
        // income over the quanta it had won when its words were last read. The words are read
        // now, before this tick clears, as the node reads them.
        for &i in &running {
            let a = &mut agents[i];
            if !matches!(market.life(a.id), Some(Life::Alive)) {
                continue;
            }
            let quanta = a.drained;
            a.drained = market.stats(a.id).map_or(0, |s| s.quanta_won);
            // The squatter, as the WASM one: once it has run (and grown its memory), it
            // withdraws from the market, the owner's opening bid included.
            if a.profile == Profile::Squatter && a.fixed_bid.is_none() && a.bid.is_none() {
                commands.push(Command::CancelBid { agent: a.id });
                a.bid = Some(Tokens::ZERO);
                continue;
            }
            let want = wanted_bid(a, &market, quanta).map(|b| b.min(a.max_bid));
            if let Some(price) = want
                && a.bid != Some(price)
            {
                commands.push(Command::Bid { agent: a.id, price });
                a.bid = Some(price);
            }
        }

        let alive_before: Vec<bool> = agents
            .iter()
            .map(|a| matches!(market.life(a.id), Some(Life::Alive)))
            .collect();
        let outcome = market.tick(TickInput {
            now,
            temperature,
            energy,
            energy_idle: idle.over(quantum),
            // Nothing runs on the simulated machine but its agents.
            machine_cpu: Nanos(0),
            usage,
            commands: std::mem::take(&mut commands),
            claims,
            verdicts: std::mem::take(&mut verdicts),
        });

        // Checkers: an independent replay of the batch, the market's recount, the auction laws.
        for tr in &outcome.batch.transfers {
            if let Err(e) = shadow.apply(tr) {
                violations.push(format!("tick {t}: shadow ledger refused {tr:?}: {e}"));
            }
        }
        transfers += outcome.batch.transfers.len() as u64;
        if let Err(e) = shadow.check_conservation() {
            violations.push(format!("tick {t}: shadow books: {e}"));
        }
        if let Err(e) = market.check_conservation() {
            violations.push(format!("tick {t}: market books: {e}"));
        }
        for a in &agents {
            if shadow.balance(Account::Agent(a.id)) != market.balance(a.id) {
                violations.push(format!("tick {t}: {} balance differs from replay", a.name));
            }
        }
        if outcome.clearing.winners.len() > outcome.offer.supply as usize {
            violations.push(format!("tick {t}: more winners than supply"));
        }
        for w in &outcome.clearing.winners {
            let i = by_id[w];
            if !alive_before[i] {
                violations.push(format!("tick {t}: {} won while not alive", agents[i].name));
            }
            // What it paid: the uniform price, or less for an agent on trial.
            let paid = outcome
                .batch
                .transfers
                .iter()
                .filter(|x| {
                    x.kind == maxwell_core::TransferKind::SlotPayment
                        && x.from == maxwell_core::Account::Agent(*w)
                })
                .map(|x| x.amount)
                .max()
                .unwrap_or(Tokens::ZERO);
            let bid = agents[i].bid.unwrap_or(scenario.market.opening_bid);
            if bid < paid {
                violations.push(format!("tick {t}: {} paid above its bid", agents[i].name));
            }
        }
        hasher.update(serde_json::to_vec(&outcome.batch).unwrap_or_default());

        // Audits: recompute the claim, answer next tick.
        for req in &outcome.audits {
            if let Some(&honest) = claimed.get(&req.claim) {
                verdicts.push(Verdict {
                    claim: req.claim,
                    passed: honest,
                });
            }
        }
        for d in &outcome.batch.deaths {
            let i = by_id[&d.agent];
            let since = match market.life(d.agent) {
                Some(Life::Dead { .. }) => t.saturating_sub(u64::from(market.config().grace_ticks)),
                _ => t,
            };
            deaths.push(DeathEvent {
                tick: t,
                dying_since_tick: since,
                agent: agents[i].name.clone(),
                profile: agents[i].profile.name(),
                cause: d.cause.to_string(),
            });
        }
        running = outcome.clearing.winners.iter().map(|w| by_id[w]).collect();
        records.push(TickRecord {
            tick: t,
            temperature,
            power,
            supply: outcome.offer.supply,
            reserve: outcome.offer.reserve,
            price: outcome.clearing.price,
            winners: running.clone(),
        });
    }
    violations.truncate(20);

    let agent_summaries: Vec<AgentSummary> = agents
        .iter()
        .map(|a| {
            let s = market.stats(a.id).copied().unwrap_or_default();
            let (alive, died_at_tick, cause) = match market.life(a.id) {
                Some(Life::Dead { at_tick, cause }) => {
                    (false, Some(*at_tick), Some(cause.to_string()))
                }
                Some(Life::Dying { cause, .. }) => (false, None, Some(cause.to_string())),
                _ => (true, None, None),
            };
            AgentSummary {
                name: a.name.clone(),
                profile: a.profile.name(),
                alive,
                died_at_tick,
                cause,
                work: a.found,
                claimed: s.work_claimed,
                audits_failed: s.audits_failed,
                quanta_won: s.quanta_won,
                energy_j: s.energy.as_joules_f64(),
                balance: market.balance(a.id).unwrap_or_default().0,
                funded: s.funded.0,
                bounties: s.bounties.0,
                spent: SpentSummary {
                    slots: s.spent.slots.0,
                    rent: s.spent.rent.0,
                    landauer: s.spent.landauer.0,
                    fines: s.spent.fines.0,
                },
            }
        })
        .collect();
    let useful: u64 = agents.iter().map(|a| a.found).sum();
    let maxwell = arm(
        useful,
        energy_total,
        max_temp,
        thermal.temperature(),
        throttled_ticks,
    );
    let baseline = run_baseline(scenario, &agents);
    let bal = |acc| market.account_balance(acc).unwrap_or_default().0;
    let trace = Trace {
        records,
        agents,
        deaths,
    };
    let summary = Summary {
        simulated: true,
        scenario: scenario.name.clone(),
        seed,
        ticks: n_ticks,
        tick_ms: quantum.0 as f64 / 1e6,
        energy_source: format!(
            "simulated: idle {} plus {} per busy slot times the agent's activity; RC thermal model \
             R = {} K/W, tau = {} s, ambient {}",
            idle,
            slot_power,
            scenario.machine.thermal_resistance_k_per_w,
            scenario.machine.time_constant.as_secs_f64(),
            scenario.machine.ambient
        ),
        money_unit: "uJOULE (1e-6 JOULE)",
        agents: agent_summaries,
        final_temperature_c: thermal.temperature().as_celsius_f64(),
        max_temperature_c: max_temp.as_celsius_f64(),
        conservation_ok: violations.iter().all(|v| !v.contains("books")),
        ledger_digest: hex(&hasher.finalize()),
        books: BooksSummary {
            minted: market.minted().0,
            house_energy: bal(Account::HouseEnergy),
            house_rent: bal(Account::HouseRent),
            house_landauer: bal(Account::HouseLandauer),
            house_slash: bal(Account::HouseSlash),
            bounty_pool: bal(Account::BountyPool),
            transfers,
        },
        ratio_vs_baseline: if baseline.efficiency > 0.0 {
            maxwell.efficiency / baseline.efficiency
        } else {
            0.0
        },
        maxwell,
        baseline,
        violations,
        phases: phases(&trace),
    };
    (summary, trace)
}

/// The hardware's clock factor at `temp`: 1, or 0.5 at or above TjMax.
fn throttle(temp: MilliCelsius, tj_max: MilliCelsius) -> f64 {
    if temp >= tj_max { 0.5 } else { 1.0 }
}

fn arm(
    useful: u64,
    energy: maxwell_core::MicroJoules,
    max_temp: MilliCelsius,
    final_temp: MilliCelsius,
    throttled_ticks: u64,
) -> ArmSummary {
    let energy_j = energy.as_joules_f64();
    ArmSummary {
        useful_work: useful,
        energy_j,
        efficiency: if energy_j > 0.0 {
            useful as f64 / energy_j
        } else {
            0.0
        },
        max_temperature_c: max_temp.as_celsius_f64(),
        final_temperature_c: final_temp.as_celsius_f64(),
        throttled_ticks,
    }
}

/// The control arm: the same machine and agents with no market. Every agent that wants the CPU
/// gets an equal share (round-robin over the slots, as a fair scheduler would), nobody pays and
/// nobody dies; only the hardware's own throttle at TjMax limits the heat.
fn run_baseline(scenario: &Scenario, agents: &[SimAgent]) -> ArmSummary {
    let quantum = scenario.market.tick;
    let slots = scenario.market.slots as usize;
    let idle = scenario.machine.idle_power;
    let slot_power = scenario.market.slot_power;
    let runnable: Vec<&SimAgent> = agents.iter().filter(|a| a.cpu_fraction > 0.0).collect();
    let mut thermal = ThermalRc::new(scenario.rc_params(), scenario.initial_temperature());
    let mut max_temp = thermal.temperature();
    let mut useful = 0u64;
    let mut energy = maxwell_core::MicroJoules(0);
    let mut next = 0usize;
    let mut throttled_ticks = 0u64;
    for _ in 0..scenario.duration.0 / quantum.0 {
        let speed = throttle(thermal.temperature(), scenario.machine.tj_max);
        throttled_ticks += u64::from(speed < 1.0);
        let mut busy = 0.0;
        for _ in 0..slots.min(runnable.len()) {
            let a = runnable[next % runnable.len()];
            next += 1;
            busy += a.activity * speed;
            if a.profile == Profile::Scientist {
                useful += ((a.units as f64) * speed).round() as u64;
            }
        }
        let power = MilliWatts(idle.0 + (busy * slot_power.0 as f64).round() as u64);
        energy = energy.saturating_add(power.over(quantum));
        max_temp = max_temp.max(thermal.step(power, quantum));
    }
    arm(
        useful,
        energy,
        max_temp,
        thermal.temperature(),
        throttled_ticks,
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
