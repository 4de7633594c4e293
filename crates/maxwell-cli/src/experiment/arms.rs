//! The three arms: `plain` (the baseline: the kernel schedules every agent, never paused) and
//! `node` (the maxwell arm: the same agents under [`Node`], paced by the daemon's own
//! [`Pacer`], with the daemon's defaults; and the oracle: the useful agents alone under the
//! same node, so never more of them running than the thermal budget's slots, with wallets that
//! never bind). Each samples its metrics at 1 Hz and, at the end, recomputes every accepted
//! claim: only verified ranges count as work.

use std::path::Path;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use maxwell_core::work::{Dispenser, PrimeClaim};
use maxwell_core::{AgentId, Life, MarketConfig, Nanos, Tokens};
use maxwell_node::pacer::Pacer;
use maxwell_node::{LEASE_AHEAD, Node, defaults};
use maxwell_physics::{ModelParams, Physics};
use maxwell_sandbox::{Agent, Message, Sandbox};

use super::manifest::Member;
use super::metrics::{Row, Second, State};

/// The scheduling period of every arm.
const QUANTUM: Duration = Duration::from_millis(10);
/// What each oracle agent is funded with: enough that money never decides who runs.
const ORACLE_FUNDS: Tokens = Tokens(1_000_000_000_000);

/// One arm of one run, as `summary.json` reports it.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Arm {
    /// `baseline`, `maxwell` or `oracle`.
    pub name: &'static str,
    /// Run number, from 1.
    pub run: u32,
    /// How long it ran.
    pub seconds: f64,
    /// Energy over the arm.
    pub energy_j: f64,
    /// Numbers covered by verified claims.
    pub numbers_sieved: u64,
    /// Units of work in verified claims (`work::units`: numbers weighted by what they cost to
    /// sieve where they lie, the measure bounties pay for).
    pub work_units: u64,
    /// Primes counted by verified claims.
    pub primes: u64,
    /// Claims that recomputed to the same count and digest.
    pub claims_verified: u64,
    /// Claims that did not.
    pub claims_refuted: u64,
    /// Verified units of work per joule: the headline's measure.
    pub efficiency: f64,
    /// Mean power.
    pub mean_power_w: f64,
    /// Highest temperature seen.
    pub max_temperature_c: f64,
    /// Seconds into the arm at which each agent with `useful = false` died (maxwell arm).
    pub leech_deaths_s: Vec<f64>,
    /// Every death in the arm: who, when (seconds into the arm), whether it was useful, and
    /// the cause the ledger records.
    pub deaths: Vec<DeathSummary>,
    /// Agents with `useful = true` alive at the end (every one of them, for the plain arms).
    pub useful_alive_at_end: u32,
    /// Each agent's end of the arm (node arms): its share of the slot-time, its wallet.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<AgentEnd>,
    /// The longest quantum (plain arms: one sleep and sample) or tick (maxwell arm: one
    /// `Node::tick`, ledger commit included). Far above the 10 ms quantum means the arm stalled
    /// (a slow disk under the ledger's fsync, a busy machine) and its agents ran on
    /// unsupervised meanwhile.
    pub longest_tick_ms: f64,
}

/// One death, as `summary.json` reports it.
#[derive(Debug, Clone, Serialize)]
pub(super) struct DeathSummary {
    /// The agent.
    pub agent: String,
    /// Whether it was useful.
    pub useful: bool,
    /// Seconds into the arm.
    pub at_s: f64,
    /// The cause, from the ledger.
    pub cause: String,
}

/// One agent at the end of a node arm.
#[derive(Debug, Clone, Serialize)]
pub(super) struct AgentEnd {
    /// The agent.
    pub agent: String,
    /// Whether it is useful.
    pub useful: bool,
    /// Quanta it won.
    pub quanta_won: u64,
    /// Its share of the slot-time sold in the arm.
    pub slot_share: f64,
    /// Wallet at the end, JOULE.
    pub balance_j: f64,
    /// Bounties received, JOULE.
    pub bounties_j: f64,
    /// Paid for slots, JOULE.
    pub slots_j: f64,
    /// CPU time it used, seconds.
    pub cpu_s: f64,
    /// Units of work it claimed (verified or not yet audited).
    pub work_claimed: u64,
    /// Work claimed per CPU second: what a quantum of its CPU was worth.
    pub work_per_cpu_s: f64,
    /// Alive at the end.
    pub alive: bool,
}

/// What every arm of a run shares.
pub(super) struct Ctx<'a> {
    /// Run number, from 1.
    pub run: u32,
    /// Runs in all.
    pub runs: u32,
    /// Length of the arm.
    pub duration: Duration,
    /// No progress bar (the output is JSON).
    pub quiet: bool,
    /// Where metrics rows go.
    pub rows: &'a mut Vec<Row>,
}

/// Claims accepted in an arm (the node's, or for the plain arms, those matching a range that
/// the arm's own dispenser leased to the claimant).
#[derive(Default)]
struct Claims {
    accepted: Vec<PrimeClaim>,
}

impl Claims {
    /// Records an accepted claim; returns the numbers it covers.
    fn accept(&mut self, c: PrimeClaim) -> u64 {
        self.accepted.push(c);
        c.end.saturating_sub(c.start)
    }
}

/// What an arm adds up while it runs.
struct Tally {
    longest: Duration,
    energy: u64,
    max_temp: i32,
    claims: Claims,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            longest: Duration::ZERO,
            energy: 0,
            max_temp: i32::MIN,
            claims: Claims::default(),
        }
    }
}

/// The progress bar of one arm on stderr (hidden when stderr is not a terminal, or `quiet`).
fn bar(ctx: &Ctx<'_>, arm: &str) -> ProgressBar {
    if ctx.quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(
        Some(ctx.duration.as_millis() as u64),
        ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = ProgressStyle::with_template("{prefix:<20} [{bar:30}] {msg}") {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_prefix(format!("{arm} run {}/{}", ctx.run, ctx.runs));
    pb
}

/// Moves the bar to `elapsed`.
fn show(pb: &ProgressBar, elapsed: Duration, total: Duration) {
    pb.set_position((elapsed.min(total)).as_millis() as u64);
    pb.set_message(format!("{:>3} / {} s", elapsed.as_secs(), total.as_secs()));
}

/// Recomputes every accepted claim (on every core: as much work as the arm did) and sums up.
fn finish(
    name: &'static str,
    run: u32,
    seconds: f64,
    t: Tally,
    deaths: Vec<DeathSummary>,
    useful_alive_at_end: u32,
    pb: &ProgressBar,
) -> Arm {
    pb.set_message(format!("verifying {} claims", t.claims.accepted.len()));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = t.claims.accepted.len().div_ceil(cores).max(1);
    let parts: Vec<(u64, u64, u64, u64, u64)> = std::thread::scope(|s| {
        let handles: Vec<_> = t
            .claims
            .accepted
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    let mut r = (0, 0, 0, 0, 0);
                    let mut sieve = maxwell_core::work::Sieve::new();
                    for c in part {
                        if sieve.verify(c) {
                            r.0 += c.end - c.start;
                            r.1 += c.count;
                            r.2 += 1;
                            r.4 += maxwell_core::work::units(c.start, c.end);
                        } else {
                            r.3 += 1;
                        }
                    }
                    r
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or((0, 0, 0, u64::MAX, 0)))
            .collect()
    });
    let (mut numbers, mut primes, mut ok, mut bad, mut units) = (0, 0, 0, 0u64, 0);
    for p in parts {
        numbers += p.0;
        primes += p.1;
        ok += p.2;
        bad = bad.saturating_add(p.3);
        units += p.4;
    }
    let energy_j = t.energy as f64 / 1e6;
    let arm = Arm {
        name,
        run,
        seconds,
        energy_j,
        numbers_sieved: numbers,
        work_units: units,
        primes,
        claims_verified: ok,
        claims_refuted: bad,
        efficiency: if energy_j > 0.0 {
            units as f64 / energy_j
        } else {
            0.0
        },
        mean_power_w: if seconds > 0.0 {
            energy_j / seconds
        } else {
            0.0
        },
        max_temperature_c: f64::from(t.max_temp) / 1000.0,
        leech_deaths_s: deaths
            .iter()
            .filter(|d| !d.useful)
            .map(|d| d.at_s)
            .collect(),
        deaths,
        useful_alive_at_end,
        agents: Vec::new(),
        longest_tick_ms: t.longest.as_secs_f64() * 1000.0,
    };
    pb.finish_with_message(format!(
        "{seconds:.0} s, {} claims verified, {:.0} units of work/J",
        arm.claims_verified, arm.efficiency
    ));
    arm
}

/// The plain Linux scheduler: every agent spawned by `sandbox` and resumed, never paused (a
/// wasm agent runs on its own thread, a process agent in its own thawed cgroup).
pub(super) fn plain(
    name: &'static str,
    sandbox: &dyn Sandbox,
    agents: &[&Member],
    ctx: &mut Ctx<'_>,
) -> anyhow::Result<Arm> {
    let mut physics = Physics::open(Path::new("/"), ModelParams::default());
    let mut running: Vec<Box<dyn Agent>> = Vec::new();
    let mut work = Dispenser::default();
    for m in agents {
        let a = sandbox.spawn(&m.spec)?;
        a.inform(m.funds, Tokens(0));
        running.push(a);
    }
    // Work is leased as the node leases it: the queue topped up every quantum.
    let top_up = |work: &mut Dispenser, running: &[Box<dyn Agent>]| {
        for (i, a) in running.iter().enumerate() {
            let want = LEASE_AHEAD.saturating_sub(a.mailbox().work_queued());
            a.mailbox()
                .give_work((0..want).map(|_| work.lease(i as u32)));
        }
    };
    top_up(&mut work, &running);
    let mut tally = Tally::new();
    let mut second = Second::new();
    let pb = bar(ctx, name);
    physics.sample(Nanos(QUANTUM.as_nanos() as u64));
    let start = Instant::now();
    for a in &mut running {
        a.resume()?;
    }
    let mut last_sample = start;
    let mut temperature = 0;
    loop {
        let done = start.elapsed() >= ctx.duration;
        let mut numbers = 0;
        if !done {
            std::thread::sleep(QUANTUM);
            let now = Instant::now();
            tally.longest = tally.longest.max(now - last_sample);
            let r = physics.sample(Nanos((now - last_sample).as_nanos() as u64));
            last_sample = now;
            tally.energy += r.energy.0;
            tally.max_temp = tally.max_temp.max(r.temperature.0);
            temperature = r.temperature.0;
            for (i, a) in running.iter_mut().enumerate() {
                for m in a.drain() {
                    if let Message::Claim(c) = m
                        && work.redeem(i as u32, c.start, c.end).is_ok()
                    {
                        numbers += tally.claims.accept(c);
                    }
                }
            }
            top_up(&mut work, &running);
            second.add(r.energy.0, numbers);
        }
        let elapsed = start.elapsed();
        if let Some(c) = second.close(elapsed, done) {
            ctx.rows.push(Row {
                arm: name,
                run: ctx.run,
                t_s: c.t_s,
                temperature_c: f64::from(temperature) / 1000.0,
                power_w: c.power_w,
                price: None,
                supply: None,
                work_rate_claimed: c.work_rate_claimed,
                agents: None,
            });
        }
        show(&pb, elapsed, ctx.duration);
        if done {
            break;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    for (i, a) in running.iter_mut().enumerate() {
        a.kill("experiment arm over");
        for m in a.drain() {
            if let Message::Claim(c) = m
                && work.redeem(i as u32, c.start, c.end).is_ok()
            {
                tally.claims.accept(c);
            }
        }
    }
    drop(running);
    let alive = agents.iter().filter(|m| m.useful).count() as u32;
    Ok(finish(
        name,
        ctx.run,
        seconds,
        tally,
        Vec::new(),
        alive,
        &pb,
    ))
}

/// What the node arms return beside their [`Arm`].
pub(super) struct MaxwellEnd {
    /// The arm.
    pub arm: Arm,
    /// Agents with `useful = false` still alive at the end.
    pub leeches_alive: u32,
}

/// Which node arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NodeArm {
    /// Every agent, funded as the roster says: the market decides.
    Maxwell,
    /// The useful agents alone, funded so that money never binds: the same loop, the same
    /// thermal controller and the same slots, so it bounds what the market can achieve.
    Oracle,
}

/// The node, driven as the daemon drives it (its [`Pacer`], its defaults), with a ledger at
/// `ledger`: the maxwell arm, or the oracle.
pub(super) fn node(
    kind: NodeArm,
    sandbox: Box<dyn Sandbox>,
    agents: &[Member],
    ledger: &Path,
    key: &Path,
    ctx: &mut Ctx<'_>,
) -> anyhow::Result<MaxwellEnd> {
    let name = match kind {
        NodeArm::Maxwell => "maxwell",
        NodeArm::Oracle => "oracle",
    };
    let ledger = maxwell_ledger::Ledger::open(ledger, key)?;
    let physics = Physics::open(Path::new("/"), ModelParams::default());
    let config = maxwell_node::tuned_for(MarketConfig::default(), &physics);
    let mut node = Node::new(config, physics, sandbox, Some(ledger))?;
    let mut ids: Vec<(AgentId, &Member)> = Vec::new();
    for m in agents {
        if kind == NodeArm::Oracle && !m.useful {
            continue;
        }
        let funds = match kind {
            NodeArm::Maxwell => m.funds,
            NodeArm::Oracle => ORACLE_FUNDS,
        };
        let id = node.spawn(&m.spec, funds, defaults::MAX_BID, defaults::OPENING_BID)?;
        ids.push((id, m));
    }
    node.fund_bounty_pool(defaults::BOUNTY_POOL);
    let mut tally = Tally::new();
    let mut second = Second::new();
    let mut deaths = Vec::new();
    let pb = bar(ctx, name);
    let mut pacer = Pacer::new(QUANTUM);
    let mut report = node.tick(pacer.now())?;
    loop {
        let done = pacer.elapsed() >= ctx.duration;
        if !done {
            let due = pacer.wait();
            let before = Instant::now();
            report = node.tick(due.now)?;
            tally.longest = tally.longest.max(before.elapsed() + due.late);
            tally.energy += report.energy.0;
            tally.max_temp = tally.max_temp.max(report.temperature.0);
            let mut numbers = 0;
            for (_, c) in &report.claims {
                numbers += tally.claims.accept(*c);
            }
            for d in &report.deaths {
                let useful = ids.iter().any(|(id, m)| *id == d.agent && m.useful);
                deaths.push(DeathSummary {
                    agent: d.name.clone(),
                    useful,
                    at_s: pacer.elapsed().as_secs_f64(),
                    cause: d.cause.clone(),
                });
            }
            second.add(report.energy.0, numbers);
        }
        let elapsed = pacer.elapsed();
        if let Some(c) = second.close(elapsed, done) {
            let market = node.market();
            let states = ids
                .iter()
                .map(|&(id, _)| {
                    let state = match market.life(id) {
                        Some(Life::Alive) if report.winners.contains(&id) => State::Running,
                        Some(Life::Alive) => State::Frozen,
                        Some(Life::Dying { .. }) => State::Dying,
                        Some(Life::Dead { .. }) | None => State::Dead,
                    };
                    (market.balance(id).unwrap_or(Tokens(0)), state)
                })
                .collect();
            ctx.rows.push(Row {
                arm: name,
                run: ctx.run,
                t_s: c.t_s,
                temperature_c: f64::from(report.temperature.0) / 1000.0,
                power_w: c.power_w,
                price: Some(report.price),
                supply: Some(report.supply),
                work_rate_claimed: c.work_rate_claimed,
                agents: (kind == NodeArm::Maxwell).then_some(states),
            });
        }
        show(&pb, elapsed, ctx.duration);
        if done {
            break;
        }
    }
    let seconds = pacer.elapsed().as_secs_f64();
    let market = node.market();
    let alive = |useful: bool| {
        ids.iter()
            .filter(|(id, m)| m.useful == useful && matches!(market.life(*id), Some(Life::Alive)))
            .count() as u32
    };
    let (useful_alive, leeches_alive) = (alive(true), alive(false));
    let sold: u64 = ids
        .iter()
        .filter_map(|(id, _)| market.stats(*id))
        .map(|s| s.quanta_won)
        .sum();
    let j = |t: Tokens| t.0 as f64 / 1e6;
    let ends: Vec<AgentEnd> = ids
        .iter()
        .filter_map(|(id, m)| {
            let s = market.stats(*id)?;
            Some(AgentEnd {
                agent: m.spec.name.clone(),
                useful: m.useful,
                quanta_won: s.quanta_won,
                slot_share: s.quanta_won as f64 / sold.max(1) as f64,
                balance_j: j(market.balance(*id).unwrap_or(Tokens::ZERO)),
                bounties_j: j(s.bounties),
                slots_j: j(s.spent.slots),
                cpu_s: s.cpu.0 as f64 / 1e9,
                work_claimed: s.work_claimed,
                work_per_cpu_s: s.work_claimed as f64 / (s.cpu.0 as f64 / 1e9).max(1e-9),
                alive: matches!(market.life(*id), Some(Life::Alive)),
            })
        })
        .collect();
    for (agent, e) in node.freeze_all() {
        eprintln!("warning: {name} arm: could not freeze {agent} at the end: {e}");
    }
    drop(node);
    let mut arm = finish(name, ctx.run, seconds, tally, deaths, useful_alive, &pb);
    arm.agents = ends;
    Ok(MaxwellEnd { arm, leeches_alive })
}
