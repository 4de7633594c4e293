//! `maxwell soak`: a roster of built-in agents on a real daemon for minutes, as a user runs it:
//! the demo's (4 scientists, 4 leeches) or the README quickstart's (one scientist, one leech,
//! 10 JOULE each). Progress every `--every`, then survivors, balances, the bounty pool, deaths
//! with their causes and the tick loop's lateness. Exit 3 if a scientist died or stopped
//! working in the run's second half (the quickstart's lone scientist must win 90% of its
//! ticks: it waits for nobody), a leech outlived its first 10 s, or more than 1% of the run's
//! ticks began over 2 ms late.

use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use maxwell_daemon::api::{AgentView, BountyPoolView, Stats};

use crate::Exit;

#[derive(Debug, Args)]
pub(crate) struct SoakArgs {
    /// How long the daemon hosts the roster (e.g. 10m, 90s).
    #[arg(long, default_value = "10m", value_parser = crate::experiment::parse_nanos)]
    duration: maxwell_core::Nanos,
    /// Progress line every so often (stderr).
    #[arg(long, default_value = "30s", value_parser = crate::experiment::parse_nanos)]
    every: maxwell_core::Nanos,
    /// Where the daemon's data directory goes (a fresh `reports/soak-<time>` under it).
    /// Default: $XDG_DATA_HOME/maxwell, else ~/.local/share/maxwell.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<std::path::PathBuf>,
    /// Which agents: `demo` (4 scientists and 4 leeches, as `maxwell demo`) or `quickstart`
    /// (the README's: scientist `sci` and leech `leech`, 10 JOULE each).
    #[arg(long, value_enum, default_value = "demo")]
    roster: Roster,
    /// The daemon's sandbox: wasm (no privilege) or microvm (root, QEMU; docs/microvm.md).
    #[arg(long, value_enum, default_value = "wasm")]
    backend: SoakBackend,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SoakBackend {
    Wasm,
    Microvm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Roster {
    Demo,
    Quickstart,
}

impl Roster {
    fn cast(self) -> Vec<(String, &'static str, maxwell_core::Tokens)> {
        match self {
            Roster::Demo => crate::experiment::demo_cast(),
            Roster::Quickstart => vec![
                ("sci".into(), "scientist", maxwell_core::Tokens::joules(10)),
                ("leech".into(), "leech", maxwell_core::Tokens::joules(10)),
            ],
        }
    }
}

#[derive(Debug, Serialize)]
struct SoakAgent {
    name: String,
    state: String,
    cause: Option<String>,
    balance_j: f64,
    bounties_j: f64,
    quanta: u64,
    cpu_s: f64,
    /// When it was first seen dying or dead, seconds into the soak (to the poll interval).
    died_s: Option<f64>,
    /// Quanta won in the second half of the run.
    quanta_second_half: u64,
}

#[derive(Debug, Serialize)]
struct SoakReport {
    duration_s: f64,
    roster: String,
    data_dir: String,
    scientists: u32,
    scientists_alive: u32,
    leeches_alive: u32,
    /// Ticks in the second half of the run.
    ticks_second_half: u64,
    /// The bounty pool when the agents were spawned and at the end, and what a unit of work
    /// earned at the end.
    pool_start_j: f64,
    pool_end_j: f64,
    bounty_end_uj_per_unit: f64,
    agents: Vec<SoakAgent>,
    ticks: u64,
    ticks_skipped: u64,
    tick_late_p50_us: u64,
    tick_late_p99_us: u64,
    tick_late_max_us: u64,
    tick_work_p99_us: u64,
    /// Ticks of the whole run that began more than 2 ms late (the target: at most 1%).
    tick_late_over_2ms: u64,
    met: bool,
}

pub(crate) fn run(a: &SoakArgs) -> anyhow::Result<Exit> {
    let duration = Duration::from_nanos(a.duration.0);
    let every = Duration::from_nanos(a.every.0.max(1_000_000_000));
    let data = a
        .data_dir
        .clone()
        .unwrap_or_else(crate::ledger::default_data_dir);
    let (dir, _daemon, client, key) = crate::daemon_cli::fresh_daemon(
        &data,
        "soak",
        match a.backend {
            SoakBackend::Wasm => None,
            SoakBackend::Microvm => Some("backend = \"microvm\"\n"),
        },
    )?;
    let scientists: Vec<String> = a
        .roster
        .cast()
        .into_iter()
        .filter(|c| c.1 == "scientist")
        .map(|c| c.0)
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(async {
        let node = crate::daemon_cli::wait_ready(&client)
            .await
            .map_err(|e| anyhow::anyhow!("{e}; see {}", dir.join("daemon.log").display()))?;
        crate::daemon_cli::spawn_cast(&client, &key, &node, a.roster.cast()).await?;
        let pool_start: BountyPoolView = client.call("GET", "/v1/bounty-pool", None::<&()>).await?;
        let start = Instant::now();
        let mut died: std::collections::BTreeMap<String, f64> = Default::default();
        let mut next = every;
        let mut agents: Vec<AgentView>;
        // Quanta of every agent and the tick count when the second half began.
        let mut halfway: Option<(std::collections::BTreeMap<String, u64>, u64)> = None;
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            agents = client.call("GET", "/v1/agents", None::<&()>).await?;
            let t = start.elapsed();
            for ag in &agents {
                if ag.state == "dying" || ag.state == "dead" {
                    died.entry(ag.name.clone()).or_insert(t.as_secs_f64());
                }
            }
            if halfway.is_none() && t >= duration / 2 {
                let stats: Stats = client.call("GET", "/v1/stats", None::<&()>).await?;
                let quanta = agents.iter().map(|x| (x.name.clone(), x.quanta)).collect();
                halfway = Some((quanta, stats.ticks));
            }
            if t >= next || t >= duration {
                next += every;
                if !a.json {
                    let stats: Stats = client.call("GET", "/v1/stats", None::<&()>).await?;
                    let pool: BountyPoolView =
                        client.call("GET", "/v1/bounty-pool", None::<&()>).await?;
                    let alive = agents.iter().filter(|x| x.state != "dead").count();
                    let balances: Vec<String> = agents
                        .iter()
                        .filter(|x| scientists.contains(&x.name))
                        .map(|x| format!("{:.1}", x.balance.0 as f64 / 1e6))
                        .collect();
                    eprintln!(
                        "{:>5.0} s: {alive} alive; scientists' balances [{}] J; pool {:.0} J, {:.1} uJ a unit; tick lateness p99 {} us",
                        t.as_secs_f64(),
                        balances.join(", "),
                        pool.balance.0 as f64 / 1e6,
                        pool.rate_milli_per_unit as f64 / 1e3,
                        stats.late_p99_us
                    );
                }
            }
            if t >= duration {
                break;
            }
        }
        let stats: Stats = client.call("GET", "/v1/stats", None::<&()>).await?;
        let pool_end: BountyPoolView = client.call("GET", "/v1/bounty-pool", None::<&()>).await?;
        let seconds = start.elapsed().as_secs_f64();
        anyhow::Ok((agents, died, stats, seconds, halfway, pool_start, pool_end))
    })?;
    let (agents, died, stats, seconds, halfway, pool_start, pool_end) = report;
    let (half_quanta, half_ticks) = halfway.unwrap_or_default();
    let second_half = |x: &AgentView| {
        x.quanta
            .saturating_sub(half_quanta.get(&x.name).copied().unwrap_or(0))
    };
    let ticks_second_half = stats.ticks.saturating_sub(half_ticks);
    let is_sci = |n: &str| scientists.contains(&n.to_string());
    let alive = |sci: bool| {
        agents
            .iter()
            .filter(|x| is_sci(&x.name) == sci && x.state != "dead" && x.state != "dying")
            .count() as u32
    };
    let leeches_late = agents
        .iter()
        .filter(|x| !is_sci(&x.name))
        .any(|x| died.get(&x.name).is_none_or(|&t| t > 10.5));
    // Every scientist still works in the second half; a lone one waits for nobody, so it
    // must have (nearly) every tick.
    let n_sci = scientists.len() as u32;
    let working = agents.iter().filter(|x| is_sci(&x.name)).all(|x| {
        let won = second_half(x);
        won > 0 && (n_sci > 1 || won * 10 >= ticks_second_half * 9)
    });
    let report = SoakReport {
        duration_s: seconds,
        roster: format!("{:?}", a.roster).to_lowercase(),
        data_dir: dir.display().to_string(),
        scientists: n_sci,
        scientists_alive: alive(true),
        leeches_alive: alive(false),
        ticks_second_half,
        pool_start_j: pool_start.balance.0 as f64 / 1e6,
        pool_end_j: pool_end.balance.0 as f64 / 1e6,
        bounty_end_uj_per_unit: pool_end.rate_milli_per_unit as f64 / 1e3,
        agents: agents
            .iter()
            .map(|x| SoakAgent {
                name: x.name.clone(),
                state: x.state.clone(),
                cause: x.cause.clone(),
                balance_j: x.balance.0 as f64 / 1e6,
                bounties_j: x.bounties.0 as f64 / 1e6,
                quanta: x.quanta,
                cpu_s: x.cpu_s,
                died_s: died.get(&x.name).copied(),
                quanta_second_half: second_half(x),
            })
            .collect(),
        ticks: stats.ticks,
        ticks_skipped: stats.skipped,
        tick_late_p50_us: stats.late_p50_us,
        tick_late_p99_us: stats.late_p99_us,
        tick_late_max_us: stats.late_max_us,
        tick_work_p99_us: stats.work_p99_us,
        tick_late_over_2ms: stats.late_over_ms[1],
        met: alive(true) == n_sci
            && working
            && !leeches_late
            && stats.late_over_ms[1] <= stats.ticks / 100,
    };
    if a.json {
        crate::write_out(&(serde_json::to_string_pretty(&report)? + "\n"))?;
    } else {
        let mut t = format!(
            "soak: {:.0} s of the {} roster on a daemon ({})\n",
            report.duration_s, report.roster, report.data_dir
        );
        for x in &report.agents {
            t.push_str(&format!(
                "{:<12} {:<8} balance {:>10.3} J  bounties {:>10.3} J  {:>7} quanta ({:>6} in the second half)  {:>7.1} CPU s{}\n",
                x.name,
                x.state,
                x.balance_j,
                x.bounties_j,
                x.quanta,
                x.quanta_second_half,
                x.cpu_s,
                match (&x.died_s, &x.cause) {
                    (Some(s), Some(c)) => format!("  died at {s:.1} s: {c}"),
                    (Some(s), None) => format!("  died at {s:.1} s"),
                    _ => String::new(),
                }
            ));
        }
        t.push_str(&format!(
            "bounty pool {:.0} J at the start, {:.0} J at the end; a unit of work earned {:.1} uJ at the end; {} ticks in the second half\n",
            report.pool_start_j,
            report.pool_end_j,
            report.bounty_end_uj_per_unit,
            report.ticks_second_half
        ));
        t.push_str(&format!(
            "scientists alive {} of {}, leeches alive {}; ticks {} ({} skipped, {} began over 2 ms late: {:.2}%)\nlast 1,000 ticks: lateness p50 {} us p99 {} us max {} us, work p99 {} us\ntargets (every scientist alive and working in the second half, a lone one 90% of its ticks; every leech dead within 10 s; at most 1% of ticks over 2 ms late): {}\n",
            report.scientists_alive,
            report.scientists,
            report.leeches_alive,
            report.ticks,
            report.ticks_skipped,
            report.tick_late_over_2ms,
            report.tick_late_over_2ms as f64 * 100.0 / report.ticks.max(1) as f64,
            report.tick_late_p50_us,
            report.tick_late_p99_us,
            report.tick_late_max_us,
            report.tick_work_p99_us,
            if report.met { "met" } else { "NOT MET" }
        ));
        crate::write_out(&t)?;
    }
    Ok(if report.met {
        Exit::Success
    } else {
        Exit::Failed
    })
}
