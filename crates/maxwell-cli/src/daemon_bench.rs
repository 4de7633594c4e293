//! `maxwell bench daemon`: the daemon's own cost with many idle agents. Starts a real daemon
//! (this binary, `maxwell daemon`) on a temporary data directory, spawns the agents through the
//! API, then measures the daemon process's CPU time and resident memory from /proc and the tick
//! loop's lateness from `/v1/stats`.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use maxwell_core::Tokens;
use maxwell_daemon::api::{NodeInfo, ProgramRef, SpawnRequest, Stats};
use maxwell_daemon::client::Client;

use crate::{Exit, write_out};

#[derive(Debug, Args)]
pub(crate) struct DaemonBenchArgs {
    /// Idle WASM agents to host.
    #[arg(long, default_value_t = 100)]
    agents: u32,
    /// How long to measure, after a 2 s warm-up.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    agents: u32,
    tick_ms: f64,
    seconds: f64,
    ticks: u64,
    daemon_cpu_pct: f64,
    tick_late_p50_us: u64,
    tick_late_p99_us: u64,
    tick_late_max_us: u64,
    tick_work_p99_us: u64,
    daemon_rss_mib: f64,
    targets: Targets,
}

#[derive(Debug, Serialize)]
struct Targets {
    daemon_cpu_pct_max: f64,
    tick_late_p99_us_max: u64,
    daemon_rss_mib_max: f64,
    met: bool,
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|x| x.1)
        .ok_or_else(|| anyhow::anyhow!("unreadable /proc/{pid}/stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; `rest` starts at field 3.
    let utime: u64 = f.get(11).and_then(|s| s.parse().ok()).unwrap_or(0);
    let stime: u64 = f.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok(utime + stime)
}

fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    Ok(kb / 1024.0)
}

pub(crate) fn run(a: &DaemonBenchArgs) -> anyhow::Result<Exit> {
    let dir = std::env::temp_dir().join(format!("maxwell-bench-daemon-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let daemon = crate::daemon_cli::ChildDaemon::start(&dir, Stdio::inherit())?;
    let pid = daemon.pid();
    let result = measure(a, &dir, pid);
    drop(daemon);
    let _ = std::fs::remove_dir_all(&dir);
    let report = result?;
    if a.json {
        write_out(&(serde_json::to_string_pretty(&report)? + "\n"))?;
    } else {
        write_out(&format!(
            "{} idle wasm agents, {} ms ticks, {:.1} s measured ({} ticks)\n\
             daemon CPU        {:>8.2} % of one core   (target <= 2)\n\
             tick lateness p50 {:>8} us\n\
             tick lateness p99 {:>8} us              (target <= 2000)\n\
             tick lateness max {:>8} us\n\
             tick work p99     {:>8} us\n\
             daemon RSS        {:>8.1} MiB            (target <= 256)\n\
             targets: {}\n",
            report.agents,
            report.tick_ms,
            report.seconds,
            report.ticks,
            report.daemon_cpu_pct,
            report.tick_late_p50_us,
            report.tick_late_p99_us,
            report.tick_late_max_us,
            report.tick_work_p99_us,
            report.daemon_rss_mib,
            if report.targets.met { "met" } else { "NOT MET" }
        ))?;
    }
    Ok(if report.targets.met {
        Exit::Success
    } else {
        Exit::Failed
    })
}

fn measure(a: &DaemonBenchArgs, dir: &Path, pid: u32) -> anyhow::Result<Report> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = Client::new(&dir.join("maxwell.sock"));
    let key = maxwell_ledger::load_or_create_key(&dir.join("owner.key"))?;
    let owner = maxwell_daemon::sign::hex(key.verifying_key().as_bytes());
    rt.block_on(async {
        let node: NodeInfo = crate::daemon_cli::wait_ready(&client).await?;
        let show = !a.json && std::io::IsTerminal::is_terminal(&std::io::stderr());
        for i in 0..a.agents {
            let name = format!("idle-{i}");
            let req = SpawnRequest {
                name: name.clone(),
                program: ProgramRef {
                    builtin: Some("idle".into()),
                    ..ProgramRef::default()
                },
                owner: owner.clone(),
                max_bid: None,
                // Never above the reserve: they are hosted, never run.
                opening_bid: Some(Tokens::ZERO),
                memory_max: None,
                deny_syscalls: Vec::new(),
                fund: Some(maxwell_daemon::sign::sign_fund(
                    &key,
                    &node.public_key,
                    &name,
                    Tokens::joules(1_000),
                    1,
                )),
            };
            let _: maxwell_daemon::api::AgentView =
                client.call("POST", "/v1/agents", Some(&req)).await?;
            if show {
                eprint!("\rspawned {}/{}", i + 1, a.agents);
            }
        }
        if show {
            eprintln!();
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as f64;
        let c0 = cpu_ticks(pid)?;
        let s0: Stats = client.call("GET", "/v1/stats", None::<&()>).await?;
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(a.seconds)).await;
        let c1 = cpu_ticks(pid)?;
        let wall = t0.elapsed().as_secs_f64();
        let s1: Stats = client.call("GET", "/v1/stats", None::<&()>).await?;
        let rss = rss_mib(pid)?;
        let cpu_pct = (c1.saturating_sub(c0)) as f64 / hz / wall * 100.0;
        let met = cpu_pct <= 2.0 && s1.late_p99_us <= 2_000 && rss <= 256.0;
        Ok(Report {
            agents: a.agents,
            tick_ms: node.tick_ns as f64 / 1e6,
            seconds: wall,
            ticks: s1.ticks - s0.ticks,
            daemon_cpu_pct: cpu_pct,
            tick_late_p50_us: s1.late_p50_us,
            tick_late_p99_us: s1.late_p99_us,
            tick_late_max_us: s1.late_max_us,
            tick_work_p99_us: s1.work_p99_us,
            daemon_rss_mib: rss,
            targets: Targets {
                daemon_cpu_pct_max: 2.0,
                tick_late_p99_us_max: 2_000,
                daemon_rss_mib_max: 256.0,
                met,
            },
        })
    })
}
