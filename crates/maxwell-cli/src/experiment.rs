//! `maxwell experiment`: Scientist vs Leech with real WASM agents, in three arms.
//!
//! - **baseline**: every agent on its own OS thread, never paused: the plain Linux scheduler.
//! - **maxwell**: the same agents under [`Node`]: physics, PID, auction, audits, apoptosis.
//! - **oracle**: only the scientists, under the plain scheduler.
//!
//! Every arm measures energy with the same source (`Physics`: real where the hardware offers
//! it, modelled otherwise, and labelled) and counts useful work the same way: every accepted
//! claim is recomputed after the arm, and only verified ranges count. Work is reported as
//! numbers sieved (prime density varies with magnitude; range width does not) and as primes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use maxwell_core::work::{PrimeClaim, verify};
use maxwell_core::{Bytes, MarketConfig, Nanos, Tokens};
use maxwell_node::Node;
use maxwell_physics::{ModelParams, Physics};
use maxwell_sandbox::wasm::WasmSandbox;
use maxwell_sandbox::{Agent, AgentSpec, Limits, Message, Program, Sandbox};

use crate::{Exit, write_out};

#[derive(Debug, Args)]
pub(crate) struct ExperimentArgs {
    /// Length of each arm.
    #[arg(long, default_value = "20s", value_parser = parse_nanos)]
    duration: Nanos,
    /// Scientists (WASM, agents/wasm/scientist.wat), each sieving its own stretch of numbers.
    #[arg(long, default_value_t = 4)]
    scientists: u32,
    /// Leeches (WASM, agents/wasm/leech.wat).
    #[arg(long, default_value_t = 4)]
    leeches: u32,
    /// Write summary.json and report.md into this directory.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

/// `maxwell demo`: the experiment on embedded defaults, its report in the data directory.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Length of each of the three arms.
    #[arg(long, default_value = "15s", value_parser = parse_nanos)]
    duration: Nanos,
    /// Where the report and the maxwell arm's ledger go (under `reports/`). Default:
    /// $XDG_DATA_HOME/maxwell, else ~/.local/share/maxwell.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs the demo: 4 scientists and 4 leeches, every arm `--duration` long.
pub(crate) fn demo(a: &DemoArgs) -> anyhow::Result<Exit> {
    let data = a
        .data_dir
        .clone()
        .unwrap_or_else(crate::ledger::default_data_dir);
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let out = data.join("reports").join(format!("demo-{stamp}"));
    if !a.json {
        eprintln!(
            "maxwell demo: Scientist vs Leech with real WASM agents on this machine, three arms of \
             {} s each, then every claimed prime count is recomputed.",
            a.duration.0 / 1_000_000_000
        );
    }
    run(&ExperimentArgs {
        duration: a.duration,
        scientists: 4,
        leeches: 4,
        out: Some(out),
        json: a.json,
    })
}

fn parse_nanos(s: &str) -> Result<Nanos, String> {
    let n: Nanos = s.parse().map_err(|e| format!("{e} (write e.g. 20s)"))?;
    if n.0 < 1_000_000_000 {
        return Err("each arm must last at least 1s".into());
    }
    Ok(n)
}

const QUANTUM: Duration = Duration::from_millis(10);
const FUNDS: Tokens = Tokens(10_000_000);

#[derive(Debug, Clone, Serialize)]
struct Arm {
    name: &'static str,
    seconds: f64,
    energy_j: f64,
    numbers_sieved: u64,
    primes: u64,
    claims_verified: u64,
    claims_refuted: u64,
    /// Verified numbers sieved per joule.
    efficiency: f64,
    mean_power_w: f64,
    max_temperature_c: f64,
    /// Seconds into the arm at which each leech died (maxwell arm).
    leech_deaths_s: Vec<f64>,
}

#[derive(Debug, Serialize)]
struct Summary {
    energy_source: String,
    energy_modelled: bool,
    scientists: u32,
    leeches: u32,
    duration_s: f64,
    efficiency: BTreeMap<&'static str, f64>,
    ratio_vs_baseline: f64,
    ratio_vs_oracle: f64,
    leech_deaths_s: Vec<f64>,
    leeches_alive_at_end: u32,
    arms: Vec<Arm>,
    targets: Targets,
}

#[derive(Debug, Serialize)]
struct Targets {
    ratio_vs_baseline_min: f64,
    ratio_vs_oracle_min: f64,
    met: bool,
}

fn spec(name: String, wat: String) -> AgentSpec {
    AgentSpec {
        name,
        program: Program::Wasm {
            module: wat.into_bytes(),
        },
        limits: Limits {
            memory_max: Bytes(64 << 20),
            pids_max: 1,
        },
    }
}

/// The agents, leeches first and then alternating: the market breaks ties by age, so this order
/// gives the leeches every advantage a spawn order can.
fn roster(scientists: u32, leeches: u32) -> Vec<(bool, AgentSpec)> {
    let mut v = Vec::new();
    for i in 0..scientists.max(leeches) {
        if i < leeches {
            v.push((
                false,
                spec(format!("leech-{i}"), maxwell_agents::LEECH_WAT.into()),
            ));
        }
        if i < scientists {
            // Stretches 10^10 apart: no scientist reaches the next one's start in an arm.
            let start = 1_000_000_000 + u64::from(i) * 10_000_000_000;
            v.push((
                true,
                spec(
                    format!("scientist-{i}"),
                    maxwell_agents::scientist_from(start),
                ),
            ));
        }
    }
    v
}

/// Accepts claims that overlap nothing accepted before (per arm), like the node does.
#[derive(Default)]
struct Claims {
    ranges: BTreeMap<u64, u64>,
    accepted: Vec<PrimeClaim>,
}

impl Claims {
    fn offer(&mut self, c: PrimeClaim) {
        let overlaps = c.end <= c.start
            || self
                .ranges
                .range(..c.end)
                .next_back()
                .is_some_and(|(_, &end)| end > c.start);
        if !overlaps {
            self.ranges.insert(c.start, c.end);
            self.accepted.push(c);
        }
    }
}

struct Tally {
    energy: u64,
    max_temp: i32,
    claims: Claims,
}

fn finish(name: &'static str, seconds: f64, t: Tally, deaths: Vec<f64>) -> Arm {
    // Recompute every accepted claim, on every core (this is as much work as the arm did).
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = t.claims.accepted.len().div_ceil(cores).max(1);
    let parts: Vec<(u64, u64, u64, u64)> = std::thread::scope(|s| {
        let handles: Vec<_> = t
            .claims
            .accepted
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    let mut r = (0, 0, 0, 0);
                    for c in part {
                        if verify(c) {
                            r.0 += c.end - c.start;
                            r.1 += c.count;
                            r.2 += 1;
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
            .map(|h| h.join().unwrap_or((0, 0, 0, u64::MAX)))
            .collect()
    });
    let (mut numbers, mut primes, mut ok, mut bad) = (0, 0, 0, 0u64);
    for p in parts {
        numbers += p.0;
        primes += p.1;
        ok += p.2;
        bad = bad.saturating_add(p.3);
    }
    let energy_j = t.energy as f64 / 1e6;
    Arm {
        name,
        seconds,
        energy_j,
        numbers_sieved: numbers,
        primes,
        claims_verified: ok,
        claims_refuted: bad,
        efficiency: if energy_j > 0.0 {
            numbers as f64 / energy_j
        } else {
            0.0
        },
        mean_power_w: if seconds > 0.0 {
            energy_j / seconds
        } else {
            0.0
        },
        max_temperature_c: f64::from(t.max_temp) / 1000.0,
        leech_deaths_s: deaths,
    }
}

fn progress(json: bool, arm: &str, start: Instant, total: Duration, last: &mut u64) {
    let s = start.elapsed().as_secs();
    if !json && s != *last {
        *last = s;
        eprint!("\r{arm:<8} {s:>3} / {} s", total.as_secs());
    }
}

/// The plain Linux scheduler: every agent on its own thread, never paused.
fn plain(
    name: &'static str,
    agents: &[(bool, AgentSpec)],
    duration: Duration,
    json: bool,
) -> anyhow::Result<Arm> {
    let sandbox = WasmSandbox::new()?;
    let mut physics = Physics::open(Path::new("/"), ModelParams::default());
    let mut running: Vec<Box<dyn Agent>> = Vec::new();
    for (_, s) in agents {
        let a = sandbox.spawn(s)?;
        a.inform(FUNDS, Tokens(0));
        running.push(a);
    }
    let mut tally = Tally {
        energy: 0,
        max_temp: i32::MIN,
        claims: Claims::default(),
    };
    physics.sample(Nanos(QUANTUM.as_nanos() as u64));
    let start = Instant::now();
    for a in &mut running {
        a.resume()?;
    }
    let mut last_sample = start;
    let mut shown = u64::MAX;
    while start.elapsed() < duration {
        std::thread::sleep(QUANTUM);
        let now = Instant::now();
        let r = physics.sample(Nanos((now - last_sample).as_nanos() as u64));
        last_sample = now;
        tally.energy += r.energy.0;
        tally.max_temp = tally.max_temp.max(r.temperature.0);
        for a in &mut running {
            for m in a.drain() {
                if let Message::Claim(c) = m {
                    tally.claims.offer(c);
                }
            }
        }
        progress(json, name, start, duration, &mut shown);
    }
    let seconds = start.elapsed().as_secs_f64();
    for a in &mut running {
        a.kill("experiment arm over");
        for m in a.drain() {
            if let Message::Claim(c) = m {
                tally.claims.offer(c);
            }
        }
    }
    Ok(finish(name, seconds, tally, Vec::new()))
}

/// The market: the same agents under the node.
fn maxwell(
    agents: &[(bool, AgentSpec)],
    duration: Duration,
    data: &Path,
    json: bool,
) -> anyhow::Result<(Arm, u32)> {
    let ledger = maxwell_ledger::Ledger::open(&data.join("ledger.db"), &data.join("node.key"))?;
    let physics = Physics::open(Path::new("/"), ModelParams::default());
    let config = maxwell_node::tuned_for(MarketConfig::default(), &physics);
    let mut node = Node::new(config, physics, Box::new(WasmSandbox::new()?), Some(ledger))?;
    let mut leeches = Vec::new();
    for (useful, s) in agents {
        let id = node.spawn(s, FUNDS, Tokens(5_000_000), Tokens(200_000))?;
        if !useful {
            leeches.push(id);
        }
    }
    node.fund_bounty_pool(Tokens::joules(1_000_000));
    let mut tally = Tally {
        energy: 0,
        max_temp: i32::MIN,
        claims: Claims::default(),
    };
    let mut deaths = Vec::new();
    let start = Instant::now();
    node.tick(Nanos(0))?;
    let mut tick = 0u32;
    let mut shown = u64::MAX;
    while start.elapsed() < duration {
        tick += 1;
        if let Some(wait) = (start + QUANTUM * tick).checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let r = node.tick(Nanos(start.elapsed().as_nanos() as u64))?;
        tally.energy += r.energy.0;
        tally.max_temp = tally.max_temp.max(r.temperature.0);
        for (_, c) in r.claims {
            tally.claims.offer(c);
        }
        for d in &r.deaths {
            if leeches.contains(&d.agent) {
                deaths.push(start.elapsed().as_secs_f64());
            }
        }
        progress(json, "maxwell", start, duration, &mut shown);
    }
    let seconds = start.elapsed().as_secs_f64();
    node.freeze_all();
    let alive = leeches.len() as u32 - deaths.len() as u32;
    Ok((finish("maxwell", seconds, tally, deaths), alive))
}

pub(crate) fn run(a: &ExperimentArgs) -> anyhow::Result<Exit> {
    let duration = Duration::from_nanos(a.duration.0);
    let agents = roster(a.scientists, a.leeches);
    let useful: Vec<(bool, AgentSpec)> = agents.iter().filter(|(u, _)| *u).cloned().collect();
    let probe = Physics::open(Path::new("/"), ModelParams::default());
    let source = probe.energy_source().clone();
    drop(probe);
    if !a.json {
        eprintln!(
            "energy: {}{}; {} scientists and {} leeches, {} s per arm, three arms",
            source.source,
            if source.modelled { " (modelled)" } else { "" },
            a.scientists,
            a.leeches,
            duration.as_secs()
        );
    }
    let data = match &a.out {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("maxwell-experiment-{}", std::process::id())),
    };
    std::fs::create_dir_all(&data)?;
    let _ = std::fs::remove_file(data.join("ledger.db"));
    let baseline = plain("baseline", &agents, duration, a.json)?;
    let (mx, leeches_alive) = maxwell(&agents, duration, &data, a.json)?;
    let oracle = plain("oracle", &useful, duration, a.json)?;
    if !a.json {
        eprintln!();
    }
    let ratio = |x: f64, y: f64| if y > 0.0 { x / y } else { 0.0 };
    let ratio_vs_baseline = ratio(mx.efficiency, baseline.efficiency);
    let ratio_vs_oracle = ratio(mx.efficiency, oracle.efficiency);
    let met = ratio_vs_baseline >= 1.8 && ratio_vs_oracle >= 0.9 && leeches_alive == 0;
    let summary = Summary {
        energy_source: source.detail.clone(),
        energy_modelled: source.modelled,
        scientists: a.scientists,
        leeches: a.leeches,
        duration_s: duration.as_secs_f64(),
        efficiency: [
            ("baseline", baseline.efficiency),
            ("maxwell", mx.efficiency),
            ("oracle", oracle.efficiency),
        ]
        .into_iter()
        .collect(),
        ratio_vs_baseline,
        ratio_vs_oracle,
        leech_deaths_s: mx.leech_deaths_s.clone(),
        leeches_alive_at_end: leeches_alive,
        arms: vec![baseline, mx, oracle],
        targets: Targets {
            ratio_vs_baseline_min: 1.8,
            ratio_vs_oracle_min: 0.9,
            met,
        },
    };
    let mut text = String::new();
    for arm in &summary.arms {
        text.push_str(&format!(
            "{:<9} {:>8.1} J {:>6.1} W (max {:>5.1} C)  {:>14} numbers sieved ({} claims verified, {} refuted)  {:>10.0} numbers/J\n",
            arm.name,
            arm.energy_j,
            arm.mean_power_w,
            arm.max_temperature_c,
            arm.numbers_sieved,
            arm.claims_verified,
            arm.claims_refuted,
            arm.efficiency
        ));
    }
    text.push_str(&format!(
        "\nuseful work per joule: maxwell / baseline = {:.2}x (target 1.8), maxwell / oracle = {:.2} (target 0.9)\n\
         leeches died at {} s; {} alive at the end\nenergy: {}{}\ntargets: {}\n",
        summary.ratio_vs_baseline,
        summary.ratio_vs_oracle,
        summary
            .leech_deaths_s
            .iter()
            .map(|s| format!("{s:.2}"))
            .collect::<Vec<_>>()
            .join(", "),
        summary.leeches_alive_at_end,
        summary.energy_source,
        if summary.energy_modelled { " (modelled)" } else { "" },
        if met { "met" } else { "NOT MET" }
    ));
    let json = serde_json::to_string_pretty(&summary)? + "\n";
    if let Some(out) = &a.out {
        std::fs::write(out.join("summary.json"), &json)?;
        std::fs::write(
            out.join("report.md"),
            format!(
                "# Scientist vs Leech\n\n```\n{text}```\n\nThe ledger of the maxwell arm is `ledger.db` here (`maxwell ledger verify --db {}`).\n",
                out.join("ledger.db").display()
            ),
        )?;
    } else {
        let _ = std::fs::remove_dir_all(&data);
    }
    if a.json {
        write_out(&json)?;
    } else {
        write_out(&text)?;
        if let Some(out) = &a.out {
            write_out(&format!("report: {}\n", out.join("report.md").display()))?;
        }
    }
    Ok(if met { Exit::Success } else { Exit::Failed })
}
