//! `maxwell soak`: the demo's roster (4 scientists, 4 leeches) on a real daemon for minutes,
//! as a user runs it; progress every `--every`, then survivors, balances, deaths with their
//! causes and the tick loop's lateness. Exit 3 if a scientist died, a leech outlived its first
//! 10 s, or more than 1% of the run's ticks began over 2 ms late.

use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use maxwell_daemon::api::{AgentView, Stats};

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
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
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
}

#[derive(Debug, Serialize)]
struct SoakReport {
    duration_s: f64,
    data_dir: String,
    scientists_alive: u32,
    leeches_alive: u32,
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
    let (dir, _daemon, client, key) = crate::daemon_cli::fresh_daemon(&data, "soak")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(async {
        let node = crate::daemon_cli::wait_ready(&client)
            .await
            .map_err(|e| anyhow::anyhow!("{e}; see {}", dir.join("daemon.log").display()))?;
        crate::daemon_cli::spawn_demo_cast(&client, &key, &node).await?;
        let start = Instant::now();
        let mut died: std::collections::BTreeMap<String, f64> = Default::default();
        let mut next = every;
        let mut agents: Vec<AgentView>;
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            agents = client.call("GET", "/v1/agents", None::<&()>).await?;
            let t = start.elapsed();
            for ag in &agents {
                if ag.state == "dying" || ag.state == "dead" {
                    died.entry(ag.name.clone()).or_insert(t.as_secs_f64());
                }
            }
            if t >= next || t >= duration {
                next += every;
                if !a.json {
                    let stats: Stats = client.call("GET", "/v1/stats", None::<&()>).await?;
                    let alive = agents.iter().filter(|x| x.state != "dead").count();
                    let balances: Vec<String> = agents
                        .iter()
                        .filter(|x| x.name.starts_with("scientist"))
                        .map(|x| format!("{:.1}", x.balance.0 as f64 / 1e6))
                        .collect();
                    eprintln!(
                        "{:>5.0} s: {alive} alive; scientists' balances [{}] J; tick lateness p99 {} us",
                        t.as_secs_f64(),
                        balances.join(", "),
                        stats.late_p99_us
                    );
                }
            }
            if t >= duration {
                break;
            }
        }
        let stats: Stats = client.call("GET", "/v1/stats", None::<&()>).await?;
        let seconds = start.elapsed().as_secs_f64();
        anyhow::Ok((agents, died, stats, seconds))
    })?;
    let (agents, died, stats, seconds) = report;
    let is_sci = |n: &str| n.starts_with("scientist");
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
    let report = SoakReport {
        duration_s: seconds,
        data_dir: dir.display().to_string(),
        scientists_alive: alive(true),
        leeches_alive: alive(false),
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
            })
            .collect(),
        ticks: stats.ticks,
        ticks_skipped: stats.skipped,
        tick_late_p50_us: stats.late_p50_us,
        tick_late_p99_us: stats.late_p99_us,
        tick_late_max_us: stats.late_max_us,
        tick_work_p99_us: stats.work_p99_us,
        tick_late_over_2ms: stats.late_over_ms[1],
        met: alive(true) == 4 && !leeches_late && stats.late_over_ms[1] <= stats.ticks / 100,
    };
    if a.json {
        crate::write_out(&(serde_json::to_string_pretty(&report)? + "\n"))?;
    } else {
        let mut t = format!(
            "soak: {:.0} s of the demo's roster on a daemon ({})\n",
            report.duration_s, report.data_dir
        );
        for x in &report.agents {
            t.push_str(&format!(
                "{:<12} {:<8} balance {:>9.3} J  bounties {:>9.3} J  {:>6} quanta  {:>7.1} CPU s{}\n",
                x.name,
                x.state,
                x.balance_j,
                x.bounties_j,
                x.quanta,
                x.cpu_s,
                match (&x.died_s, &x.cause) {
                    (Some(s), Some(c)) => format!("  died at {s:.1} s: {c}"),
                    (Some(s), None) => format!("  died at {s:.1} s"),
                    _ => String::new(),
                }
            ));
        }
        t.push_str(&format!(
            "scientists alive {} of 4, leeches alive {}; ticks {} ({} skipped, {} began over 2 ms late: {:.2}%)\nlast 1,000 ticks: lateness p50 {} us p99 {} us max {} us, work p99 {} us\ntargets (every scientist alive, every leech dead within 10 s, at most 1% of ticks over 2 ms late): {}\n",
            report.scientists_alive,
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
