//! `maxwell bench daemon`: the daemon's own cost with many agents. For each size given, starts
//! a real daemon (this binary, `maxwell daemon`) on a fresh temporary data directory, measures
//! its resident memory with no agents and with one (the first spawn pages in the compiler and
//! compiles the module, once for all), spawns the agents through the API with many requests in
//! flight (`--running` of them built-in scientists that bid and run, the rest idle agents that
//! never run), then measures the daemon process's CPU time and resident memory from /proc and
//! the tick loop's lateness and work from `/v1/stats`. One table row per size; the targets are
//! checked at 10,000 agents (or at the largest size measured).

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use maxwell_core::Tokens;
use maxwell_daemon::api::{AgentView, NodeInfo, ProgramRef, SpawnRequest, Stats};
use maxwell_daemon::client::Client;

use crate::{Exit, write_out};

#[derive(Debug, Args)]
pub(crate) struct DaemonBenchArgs {
    /// Agents to host, one fresh daemon per size: a list (e.g. 100,1000,10000).
    #[arg(long, value_delimiter = ',', default_value = "100")]
    agents: Vec<u32>,
    /// How many of them are built-in scientists, funded and bidding normally (opening bid at
    /// the default), so that they run; the rest are idle agents that never run.
    #[arg(long, default_value_t = 0)]
    running: u32,
    /// Spawn requests in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: u32,
    /// How long to measure, after a 2 s warm-up.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Print JSON (every row and the targets).
    #[arg(long)]
    json: bool,
}

/// Every agent's opening funds.
const FUNDS_J: u64 = 1_000;
/// The size the targets are set for.
const TARGET_AGENTS: u32 = 10_000;
const CPU_PCT_MAX: f64 = 10.0;
const WORK_P99_US_MAX: u64 = 2_000;
const LATE_P99_US_MAX: u64 = 2_000;
/// Seconds to spawn [`TARGET_AGENTS`].
const SPAWN_S_MAX: f64 = 60.0;
/// The daemon's own memory per frozen agent (beyond its linear memory, which an idle agent
/// never allocates).
const BYTES_PER_AGENT_MAX: f64 = 2_048.0;

#[derive(Debug, Serialize)]
struct Row {
    agents: u32,
    running: u32,
    tick_ms: f64,
    /// Wall time of the spawns, all answered (admitted and credited).
    spawn_s: f64,
    spawns_per_s: f64,
    /// Ticks that began more than 2 ms late while the agents were spawned, and how many ticks
    /// ran then.
    spawn_ticks: u64,
    spawn_ticks_late_over_2ms: u64,
    seconds: f64,
    ticks: u64,
    /// The daemon's own threads (not those that run WASM agents).
    daemon_cpu_pct: f64,
    cpu_pct_per_agent: f64,
    /// The threads that run WASM agents (the running ones' quanta).
    agents_cpu_pct: f64,
    tick_late_p50_us: u64,
    tick_late_p99_us: u64,
    tick_late_max_us: u64,
    tick_work_p99_us: u64,
    /// Ticks that began more than 2 ms late while measuring.
    ticks_late_over_2ms: u64,
    daemon_rss_mib: f64,
    /// Right after start, no agents.
    daemon_rss_empty_mib: f64,
    /// With its first agent.
    daemon_rss_first_mib: f64,
    /// (RSS with all the agents - RSS with the first) / (agents - 1): what one more frozen
    /// agent costs.
    rss_per_agent_bytes: f64,
    /// (RSS with all the agents - RSS with half of them) / (the other half): what one more
    /// frozen agent costs once the fixed costs that grow with the first agents (SQLite's page
    /// cache, bounded at 2 MiB; the tokio and journal buffers) have stopped growing.
    rss_marginal_bytes: f64,
}

#[derive(Debug, Serialize)]
struct Check {
    what: String,
    value: f64,
    max: f64,
    met: bool,
}

#[derive(Debug, Serialize)]
struct Targets {
    /// The size checked (10,000, or the largest measured).
    agents: u32,
    checks: Vec<Check>,
    met: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    rows: Vec<Row>,
    targets: Option<Targets>,
}

/// Time a thread has spent on a CPU, in nanoseconds: the first field of its `schedstat`, the
/// scheduler's own exact sum. (utime and stime in `stat` are sampled at the timer tick, so a
/// thread that wakes every 10 ms for a few tens of microseconds is mostly missed: they read 0%
/// for a daemon that is not idle.)
fn schedstat_ns(path: &Path) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(path)?;
    s.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("unreadable {}", path.display()))
}

/// Whether a thread of the daemon runs WASM agents (their CPU is theirs, paid for in the
/// market, not the daemon's cost): the wasm backend's workers (`maxwell-wasm`) or, in older
/// versions, one thread per agent (`wasm-<name>`).
fn runs_agents(comm: &str) -> bool {
    comm == "maxwell-wasm" || comm.starts_with("wasm-")
}

/// Threads by id: whether each runs agents, and its CPU time in ns.
type Threads = std::collections::BTreeMap<u64, (bool, u64)>;

/// Every thread of the daemon process.
fn threads(pid: u32) -> anyhow::Result<Threads> {
    let mut out = std::collections::BTreeMap::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let dir = t?.path();
        let Some(tid) = dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse().ok())
        else {
            continue;
        };
        let (Ok(comm), Ok(n)) = (
            std::fs::read_to_string(dir.join("comm")),
            schedstat_ns(&dir.join("schedstat")),
        ) else {
            // The thread ended between the listing and the read.
            continue;
        };
        out.insert(tid, (runs_agents(comm.trim_end()), n));
    }
    Ok(out)
}

/// CPU used between two samples of [`threads`], in ns: the daemon's own threads' and its
/// agents' threads'. Each thread counts what it used in between (one started meanwhile, all
/// it used); a thread that ended meanwhile is left out (summing totals instead made a pool
/// thread that exited look like negative CPU).
fn cpu_between(before: &Threads, after: &Threads) -> (u64, u64) {
    let (mut own, mut agents) = (0u64, 0u64);
    for (tid, &(runs, ns)) in after {
        let used = ns.saturating_sub(before.get(tid).map_or(0, |b| b.1));
        if runs {
            agents += used;
        } else {
            own += used;
        }
    }
    (own, agents)
}

fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/{pid}/status"))?;
    Ok(kb / 1024.0)
}

pub(crate) fn run(a: &DaemonBenchArgs) -> anyhow::Result<Exit> {
    if a.agents.is_empty() || a.agents.contains(&0) {
        anyhow::bail!("--agents needs sizes above 0 (e.g. --agents 100,1000,10000)");
    }
    let mut rows = Vec::new();
    for &n in &a.agents {
        let dir =
            std::env::temp_dir().join(format!("maxwell-bench-daemon-{}-{n}", std::process::id()));
        // A leftover of an earlier run with this pid, if any.
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        let daemon = crate::daemon_cli::ChildDaemon::start(&dir, Stdio::inherit())?;
        let pid = daemon.pid();
        let result = measure(a, n, &dir, pid);
        drop(daemon);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            eprintln!("cannot remove {}: {e}", dir.display());
        }
        let row = result.map_err(|e| anyhow::anyhow!("{n} agents: {e}"))?;
        if !a.json {
            eprintln!(
                "{n} agents: spawned in {:.1} s, CPU {:.2} %, lateness p99 {} us",
                row.spawn_s, row.daemon_cpu_pct, row.tick_late_p99_us
            );
        }
        rows.push(row);
    }
    let targets = targets(&rows);
    let met = targets.as_ref().is_some_and(|t| t.met);
    let report = Report { rows, targets };
    if a.json {
        write_out(&(serde_json::to_string_pretty(&report)? + "\n"))?;
    } else {
        write_out(&table(&report))?;
    }
    Ok(if met { Exit::Success } else { Exit::Failed })
}

/// The checks, at 10,000 agents or the largest size measured (whose spawn time is scaled to
/// 10,000).
fn targets(rows: &[Row]) -> Option<Targets> {
    let r = rows
        .iter()
        .find(|r| r.agents == TARGET_AGENTS)
        .or_else(|| rows.iter().max_by_key(|r| r.agents))?;
    let spawn_max = SPAWN_S_MAX * f64::from(r.agents) / f64::from(TARGET_AGENTS);
    let check = |what: &str, value: f64, max: f64| Check {
        what: what.into(),
        value,
        max,
        met: value <= max,
    };
    let checks = vec![
        check("daemon CPU, % of a core", r.daemon_cpu_pct, CPU_PCT_MAX),
        check(
            "tick work p99, us",
            r.tick_work_p99_us as f64,
            WORK_P99_US_MAX as f64,
        ),
        check(
            "tick lateness p99, us",
            r.tick_late_p99_us as f64,
            LATE_P99_US_MAX as f64,
        ),
        check(&format!("spawn of {}, s", r.agents), r.spawn_s, spawn_max),
        check(
            "daemon memory per frozen agent, bytes",
            r.rss_marginal_bytes,
            BYTES_PER_AGENT_MAX,
        ),
        check(
            "the same, counted from the first agent",
            r.rss_per_agent_bytes,
            BYTES_PER_AGENT_MAX,
        ),
    ];
    let met = checks.iter().all(|c| c.met);
    Some(Targets {
        agents: r.agents,
        checks,
        met,
    })
}

fn table(report: &Report) -> String {
    let mut s = String::new();
    if let Some(r) = report.rows.first() {
        s += &format!(
            "wasm agents, {} ms ticks, {:.0} s measured after a 2 s warm-up; CPU of the daemon's \
             own threads (not those that run agents), memory of the daemon process\n",
            r.tick_ms, r.seconds
        );
    }
    s += &format!(
        "{:>7} {:>7} {:>8} {:>9} {:>11} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>9} {:>10} {:>12}\n",
        "agents",
        "running",
        "spawn s",
        "spawns/s",
        "spawn late",
        "CPU %",
        "agents %",
        "late p50",
        "late p99",
        "late max",
        "work p99",
        "RSS MiB",
        "B/agent",
        "B/agent+",
        "CPU %/agent"
    );
    for r in &report.rows {
        s += &format!(
            "{:>7} {:>7} {:>8.1} {:>9.0} {:>11} {:>7.2} {:>9.1} {:>9} {:>9} {:>9} {:>9} {:>8.1} {:>9.0} {:>10.0} {:>12.6}\n",
            r.agents,
            r.running,
            r.spawn_s,
            r.spawns_per_s,
            format!("{}/{}", r.spawn_ticks_late_over_2ms, r.spawn_ticks),
            r.daemon_cpu_pct,
            r.agents_cpu_pct,
            r.tick_late_p50_us,
            r.tick_late_p99_us,
            r.tick_late_max_us,
            r.tick_work_p99_us,
            r.daemon_rss_mib,
            r.rss_per_agent_bytes,
            r.rss_marginal_bytes,
            r.cpu_pct_per_agent
        );
    }
    s += "(latencies in us; spawn late: ticks begun more than 2 ms late while spawning / ticks \
          then; agents %: CPU of the threads that run agents; B/agent: RSS with all the agents minus \
          RSS with the first, per agent after the first; B/agent+: the same over the second half of \
          the agents, what one more frozen agent costs)\n";
    if let Some(t) = &report.targets {
        s += &format!(
            "targets at {} agents{}:\n",
            t.agents,
            if t.agents == TARGET_AGENTS {
                String::new()
            } else {
                format!(" (they are set for {TARGET_AGENTS}; the spawn time is scaled)")
            }
        );
        for c in &t.checks {
            s += &format!(
                "  {:<40} {:>10.1} (<= {:.0}) {}\n",
                c.what,
                c.value,
                c.max,
                if c.met { "met" } else { "NOT MET" }
            );
        }
        s += &format!("targets: {}\n", if t.met { "met" } else { "NOT MET" });
    }
    s
}

/// The spawn request of agent `i`: the first `running` are scientists with the default opening
/// bid, the rest idle agents whose opening bid never clears the reserve.
fn request(key: &ed25519_dalek::SigningKey, node: &str, i: u32, running: u32) -> SpawnRequest {
    let (name, builtin, opening) = if i < running {
        (format!("sci-{i}"), "scientist", None)
    } else {
        (format!("idle-{i}"), "idle", Some(Tokens::ZERO))
    };
    let fund = maxwell_daemon::sign::sign_fund(key, node, &name, Tokens::joules(FUNDS_J), 1);
    SpawnRequest {
        name,
        program: ProgramRef {
            builtin: Some(builtin.into()),
            ..ProgramRef::default()
        },
        owner: maxwell_daemon::sign::hex(key.verifying_key().as_bytes()),
        max_bid: None,
        opening_bid: opening,
        memory_max: None,
        deny_syscalls: Vec::new(),
        fund: Some(fund),
    }
}

/// Spawns `n` agents with `a.concurrency` requests in flight, printing a counter on stderr.
async fn spawn_all(
    a: &DaemonBenchArgs,
    from: u32,
    n: u32,
    client: &Client,
    key: &ed25519_dalek::SigningKey,
    node: &NodeInfo,
) -> anyhow::Result<()> {
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let running = a.running.min(n);
    let mut tasks = tokio::task::JoinSet::new();
    let mut next = from;
    let mut done = from;
    while done < n {
        while next < n && tasks.len() < a.concurrency.max(1) as usize {
            let (client, key, node_key) = (client.clone(), key.clone(), node.public_key.clone());
            let i = next;
            tasks.spawn(async move {
                let req = request(&key, &node_key, i, running);
                let r: Result<AgentView, _> = client.call("POST", "/v1/agents", Some(&req)).await;
                r.map_err(|e| anyhow::anyhow!("spawning {}: {e}", req.name))
            });
            next += 1;
        }
        match tasks.join_next().await {
            Some(r) => {
                r??;
            }
            None => break,
        }
        done += 1;
        if tty && (done.is_multiple_of(50) || done == n) {
            eprint!("\rspawned {done}/{n}");
        } else if !tty && (done.is_multiple_of(1_000) || done == n) {
            eprintln!("spawned {done}/{n}");
        }
    }
    if tty {
        eprintln!();
    }
    Ok(())
}

fn measure(a: &DaemonBenchArgs, n: u32, dir: &Path, pid: u32) -> anyhow::Result<Row> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = Client::new(&dir.join("maxwell.sock"));
    let key = maxwell_ledger::load_or_create_key(&dir.join("owner.key"))?;
    rt.block_on(async {
        let node: NodeInfo = crate::daemon_cli::wait_ready(&client).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss_empty = rss_mib(pid)?;
        let s0: Stats = client.call("GET", "/v1/stats", None::<&()>).await?;
        let t0 = Instant::now();
        // The first spawn pays once for what every later one shares (the module compiled,
        // the code that compiles and runs it paged in, the ledger's first pages): memory per
        // agent is measured from after it.
        spawn_all(a, 0, 1, &client, &key, &node).await?;
        let first = t0.elapsed();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss_first = rss_mib(pid)?;
        let t0 = Instant::now();
        let half = (n / 2).max(1);
        spawn_all(a, 1, half, &client, &key, &node).await?;
        let rss_half = rss_mib(pid)?;
        spawn_all(a, half, n, &client, &key, &node).await?;
        let spawn_s = (t0.elapsed() + first).as_secs_f64();
        let s1: Stats = client.call("GET", "/v1/stats", None::<&()>).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let c0 = threads(pid)?;
        let s2: Stats = client.call("GET", "/v1/stats", None::<&()>).await?;
        let t1 = Instant::now();
        tokio::time::sleep(Duration::from_secs(a.seconds)).await;
        let c1 = threads(pid)?;
        let wall = t1.elapsed().as_secs_f64();
        let s3: Stats = client.call("GET", "/v1/stats", None::<&()>).await?;
        let rss = rss_mib(pid)?;
        let (own_ns, agents_ns) = cpu_between(&c0, &c1);
        let pct = |ns: u64| ns as f64 / 1e9 / wall * 100.0;
        let cpu_pct = pct(own_ns);
        Ok(Row {
            agents: n,
            running: a.running.min(n),
            tick_ms: node.tick_ns as f64 / 1e6,
            spawn_s,
            spawns_per_s: f64::from(n) / spawn_s,
            spawn_ticks: s1.ticks.saturating_sub(s0.ticks),
            spawn_ticks_late_over_2ms: s1.late_over_ms[1].saturating_sub(s0.late_over_ms[1]),
            seconds: wall,
            ticks: s3.ticks.saturating_sub(s2.ticks),
            daemon_cpu_pct: cpu_pct,
            cpu_pct_per_agent: cpu_pct / f64::from(n),
            agents_cpu_pct: pct(agents_ns),
            tick_late_p50_us: s3.late_p50_us,
            tick_late_p99_us: s3.late_p99_us,
            tick_late_max_us: s3.late_max_us,
            tick_work_p99_us: s3.work_p99_us,
            ticks_late_over_2ms: s3.late_over_ms[1].saturating_sub(s2.late_over_ms[1]),
            daemon_rss_mib: rss,
            daemon_rss_empty_mib: rss_empty,
            daemon_rss_first_mib: rss_first,
            rss_per_agent_bytes: (rss - rss_first) * 1024.0 * 1024.0
                / f64::from(n.saturating_sub(1).max(1)),
            rss_marginal_bytes: (rss - rss_half) * 1024.0 * 1024.0
                / f64::from(n.saturating_sub(half).max(1)),
        })
    })
}
