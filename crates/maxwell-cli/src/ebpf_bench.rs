//! `maxwell bench ebpf`: what the eBPF probes cost, measured in one run against the same
//! workloads without them.
//!
//! Each workload runs in a child process (this binary, re-run with the hidden `--worker`)
//! placed in a cgroup2 cgroup of its own, for a fixed time, and reports how many rounds it did:
//!
//! - `getpid`: a tight loop of `getpid`, one syscall per round: the cost per event is the
//!   difference in time per round, with and without the probes; the rate it reaches is the
//!   event rate, and the kernel's count of its getpid calls against its own count is the loss;
//! - `churn`: 40 MiB mapped, one page touched, unmapped, per round (mmap, a fault, munmap):
//!   the slowdown of a syscall-heavy agent;
//! - `sieve`: the scientist's sieve, a few syscalls a second: its slowdown.
//!
//! Runs alternate (off, on, off, on...) so that drift on a shared machine falls on both sides;
//! each figure is the median of its runs. With the probes on, the worker's cgroup is watched
//! (the path an agent's calls take); the same `getpid` run in an unwatched cgroup measures what
//! the probes cost every other process on the machine.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use maxwell_ebpf::{Probes, SyscallSet, cgroup_id};

use crate::{Exit, write_out};

/// Arguments of `maxwell bench ebpf`.
#[derive(Debug, Args)]
pub(crate) struct EbpfBenchArgs {
    /// Seconds per run.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Runs per workload and side (probes off / on), alternating.
    #[arg(long, default_value_t = 5)]
    runs: u32,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Exit non-zero when a target is missed.
    #[arg(long)]
    check: bool,
    /// Internal: run one workload in the cgroup DIR and print its rounds.
    #[arg(long, hide = true, value_names = ["MODE", "DIR"], num_args = 2)]
    worker: Option<Vec<String>>,
}

/// Per-event cost target (Kepler's tracepoint program costs about 380 ns).
const TARGET_EVENT_NS: f64 = 300.0;
/// Slowdown target for the scientist.
const TARGET_SCIENTIST: f64 = 0.01;
/// Event rate at which nothing may be lost.
const TARGET_RATE: f64 = 500_000.0;

#[derive(Debug, Serialize)]
struct Workload {
    name: &'static str,
    /// Rounds per second, probes off (median).
    off_per_s: f64,
    /// Rounds per second, probes on (median).
    on_per_s: f64,
    /// 1 - on/off.
    slowdown: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    seconds_per_run: f64,
    runs: u32,
    workloads: Vec<Workload>,
    /// Extra time per syscall of a watched agent, ns.
    event_ns_agent: f64,
    /// Extra time per syscall of a process outside every agent, ns.
    event_ns_other: f64,
    /// Syscalls per second the getpid worker reached with the probes on.
    event_rate: f64,
    /// getpid calls the worker made and the kernel did not count (all runs).
    lost: u64,
    /// Events the probes' own counters report lost.
    probe_losses: u64,
    targets_met: bool,
}

fn worker(mode: &str, cgroup: &Path, seconds: f64) -> anyhow::Result<Exit> {
    std::fs::write(cgroup.join("cgroup.procs"), std::process::id().to_string())?;
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let mut rounds = 0u64;
    match mode {
        "getpid" => {
            while Instant::now() < end {
                for _ in 0..1000 {
                    std::hint::black_box(std::process::id());
                }
                rounds += 1000;
            }
        }
        "churn" => {
            while Instant::now() < end {
                let mut v = vec![0u8; 40 << 20];
                v[0] = 1;
                std::hint::black_box(&v);
                rounds += 1;
            }
        }
        "sieve" => {
            let mut sieve = maxwell_core::work::Sieve::new();
            let mut start = 1_000_000_000u64;
            while Instant::now() < end {
                std::hint::black_box(sieve.sieve(start, start + 100_000));
                start += 100_000;
                rounds += 1;
            }
        }
        other => anyhow::bail!("unknown worker {other:?}"),
    }
    write_out(&format!("{rounds}\n"))?;
    Ok(Exit::Success)
}

struct Cgroup(PathBuf);

impl Drop for Cgroup {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir(&self.0) {
            eprintln!("maxwell: could not remove {}: {e}", self.0.display());
        }
    }
}

fn run_worker(mode: &str, cg: &Path, seconds: f64) -> anyhow::Result<f64> {
    let o = Command::new(std::env::current_exe()?)
        .args([
            "bench",
            "ebpf",
            "--seconds",
            &seconds.to_string(),
            "--worker",
            mode,
        ])
        .arg(cg)
        .output()?;
    anyhow::ensure!(
        o.status.success(),
        "the {mode} worker failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let rounds: f64 = String::from_utf8_lossy(&o.stdout).trim().parse()?;
    Ok(rounds)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs the benchmark.
pub(crate) fn run(a: &EbpfBenchArgs) -> anyhow::Result<Exit> {
    if let Some(w) = &a.worker {
        return worker(&w[0], Path::new(&w[1]), a.seconds);
    }
    anyhow::ensure!(
        a.runs > 0 && a.seconds > 0.0,
        "--runs and --seconds must be positive"
    );
    let root = maxwell_ebpf::cgroup2_mount()?;
    let make = |tag: &str| -> anyhow::Result<Cgroup> {
        let d = root.join(format!("maxwell-bench-ebpf-{}-{tag}", std::process::id()));
        std::fs::create_dir(&d).map_err(|e| {
            anyhow::anyhow!("creating {}: {e} (the benchmark needs root)", d.display())
        })?;
        Ok(Cgroup(d))
    };
    let agent = make("agent")?;
    let other = make("other")?;
    let id = cgroup_id(&agent.0)?;
    let mut lost = 0u64;
    let mut probe_losses = 0u64;
    let mut workloads = Vec::new();
    let mut other_ns = (Vec::new(), Vec::new());
    let mut rate = Vec::new();
    let total = 3 * a.runs * 2 + a.runs * 2;
    let mut done = 0;
    for mode in ["getpid", "churn", "sieve"] {
        let (mut off, mut on) = (Vec::new(), Vec::new());
        for _ in 0..a.runs {
            off.push(run_worker(mode, &agent.0, a.seconds)? / a.seconds);
            let mut probes = Probes::load()?;
            probes.watch(id, &SyscallSet::EMPTY)?;
            let rounds = run_worker(mode, &agent.0, a.seconds)?;
            if mode == "getpid" {
                let counted = probes.calls(id)?.counts[39];
                lost += (rounds as u64).saturating_sub(counted);
                rate.push(rounds / a.seconds);
                // The same calls from outside every agent, with the probes still attached.
                other_ns
                    .1
                    .push(run_worker(mode, &other.0, a.seconds)? / a.seconds);
                drop(probes);
                other_ns
                    .0
                    .push(run_worker(mode, &other.0, a.seconds)? / a.seconds);
                done += 2;
            } else {
                probe_losses += probes.losses()?;
                drop(probes);
            }
            on.push(rounds / a.seconds);
            done += 2;
            eprint!("\rmaxwell bench ebpf: {done}/{total} runs");
        }
        let (off_m, on_m) = (median(&mut off), median(&mut on));
        workloads.push(Workload {
            name: match mode {
                "getpid" => "getpid loop (one syscall per round)",
                "churn" => "map 40 MiB, touch, unmap (syscall-heavy agent)",
                _ => "scientist's sieve",
            },
            off_per_s: off_m,
            on_per_s: on_m,
            slowdown: 1.0 - on_m / off_m,
        });
    }
    eprintln!();
    let ns = |off: f64, on: f64| (1e9 / on - 1e9 / off).max(0.0);
    let event_ns_agent = ns(workloads[0].off_per_s, workloads[0].on_per_s);
    let event_ns_other = ns(median(&mut other_ns.0), median(&mut other_ns.1));
    let event_rate = median(&mut rate);
    let targets_met = event_ns_agent <= TARGET_EVENT_NS
        && workloads[2].slowdown <= TARGET_SCIENTIST
        && lost == 0
        && probe_losses == 0
        && event_rate >= TARGET_RATE;
    let r = Report {
        seconds_per_run: a.seconds,
        runs: a.runs,
        workloads,
        event_ns_agent,
        event_ns_other,
        event_rate,
        lost,
        probe_losses,
        targets_met,
    };
    if a.json {
        write_out(&format!("{}\n", serde_json::to_string_pretty(&r)?))?;
    } else {
        let mut t = format!(
            "eBPF probes, {} alternating runs of {} s per side (medians):\n\n  {:<48} {:>14} {:>14} {:>9}\n",
            r.runs, r.seconds_per_run, "workload", "off rounds/s", "on rounds/s", "slowdown"
        );
        for w in &r.workloads {
            t.push_str(&format!(
                "  {:<48} {:>14.0} {:>14.0} {:>8.2}%\n",
                w.name,
                w.off_per_s,
                w.on_per_s,
                w.slowdown * 100.0
            ));
        }
        let ok = |b: bool| if b { "ok" } else { "MISSED" };
        t.push_str(&format!(
            "\n  cost per event, agent's syscall:      {:>7.0} ns (target <= {TARGET_EVENT_NS} ns) {}\n  cost per event, any other process:    {:>7.0} ns\n  scientist slowdown:                   {:>7.2} % (target <= {} %) {}\n  event rate reached:                   {:>7.0} /s, lost {} (kernel count vs the worker's), probe losses {} (target: none at >= {TARGET_RATE} /s) {}\n",
            r.event_ns_agent,
            ok(r.event_ns_agent <= TARGET_EVENT_NS),
            r.event_ns_other,
            r.workloads[2].slowdown * 100.0,
            TARGET_SCIENTIST * 100.0,
            ok(r.workloads[2].slowdown <= TARGET_SCIENTIST),
            r.event_rate,
            r.lost,
            r.probe_losses,
            ok(r.lost == 0 && r.probe_losses == 0 && r.event_rate >= TARGET_RATE),
        ));
        write_out(&t)?;
    }
    Ok(if a.check && !r.targets_met {
        Exit::Failed
    } else {
        Exit::Success
    })
}
