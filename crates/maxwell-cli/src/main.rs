//! `maxwell`: the one binary. Schedules untrusted agents by price and physics.
//!
//! Subcommands: `demo` (the headline experiment, short, on embedded defaults), `experiment`
//! (the same with every knob), `simulate` (the deterministic simulator), `auction clear` (clear one auction from
//! JSON, to check a clearing by hand), `bench auction` (the order book against the naive design).

#![forbid(unsafe_code)]

mod auction;
mod bench;
mod crash;
mod daemon_bench;
mod daemon_cli;
mod ebpf_bench;
mod experiment;
mod ledger;
mod microvm_cli;
mod sandbox_bench;
mod sensors;
mod simulate;
mod soak;
mod top;

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Counts heap bytes so that `maxwell bench auction` can report memory per standing bid.
#[global_allocator]
static ALLOCATOR: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

/// Bytes currently allocated on the heap.
pub(crate) fn heap_bytes() -> usize {
    ALLOCATOR.allocated()
}

/// Exit codes, documented in `maxwell --help`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Exit {
    /// Everything worked.
    Success = 0,
    /// An error: bad input, a file that cannot be read.
    Error = 1,
    /// Bad command-line usage (clap's own code).
    #[allow(dead_code)]
    Usage = 2,
    /// The run finished but an invariant or a target failed.
    Failed = 3,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e as u8)
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "maxwell",
    version,
    about = "Schedule untrusted agents by price and physics instead of by fairness.",
    long_about = "Maxwell sells the CPU slots a machine's thermal budget allows in a uniform-price \
auction every tick. Agents pay for slots, rent for memory and a Landauer tax for erasure, earn \
bounties for verified work, and die when they cannot pay.",
    after_help = "Start with `maxwell demo`. Exit codes: 0 success, 1 error, 2 usage, 3 the run \
finished but an invariant or a target failed."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Scientist vs Leech in about a minute and a half: 4 scientists and 4 leeches (WASM),
    /// under the plain Linux scheduler, under Maxwell, and the scientists alone.
    Demo(experiment::DemoArgs),
    /// Run the daemon: the tick loop and the HTTP/JSON API on a Unix socket.
    Daemon(daemon_cli::DaemonArgs),
    /// Spawn, list and kill agents on a running daemon.
    #[command(subcommand)]
    Agents(daemon_cli::AgentsCommand),
    /// Fund (signed by the owner's key) and show wallets on a running daemon.
    #[command(subcommand)]
    Wallet(daemon_cli::WalletCommand),
    /// The bounty pool of a running daemon: show it, or top it up (signed by you, its sponsor).
    #[command(subcommand)]
    Bounty(daemon_cli::BountyCommand),
    /// The daemon's market: price, supply, reserve, top of the book, temperature, power.
    Market(daemon_cli::MarketArgs),
    /// The cluster this daemon is in: its nodes, their liveness, heat, prices and agents.
    #[command(subcommand)]
    Cluster(daemon_cli::ClusterCommand),
    /// The live dashboard: market, heat, wallets, agents and events of a running daemon.
    Top(top::TopArgs),
    /// Follow the daemon's events (clearings, deaths, audits, slashes) as JSON lines.
    Events(daemon_cli::EventsArgs),
    /// Scientist vs Leech with real agents (WASM or native): plain Linux scheduler, Maxwell, oracle.
    Experiment(experiment::ExperimentArgs),
    /// Run a scenario in the deterministic simulator and tell its story.
    Simulate(SimulateArgs),
    /// Show which energy and temperature sources this machine has, which is used, and why.
    Sensors(sensors::SensorsArgs),
    /// MicroVM agents: whether they can run here (`check`), guest images (`image`).
    #[command(subcommand)]
    Microvm(microvm_cli::MicrovmCommand),
    /// Work with single auctions.
    #[command(subcommand)]
    Auction(AuctionCommand),
    /// Inspect and verify the durable ledger.
    #[command(subcommand)]
    Ledger(ledger::LedgerCommand),
    /// Measure performance against baselines in one run.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// The demo's roster (4 scientists, 4 leeches; or `--roster quickstart`, the README's one
    /// scientist and one leech) on a real daemon for minutes (default 10m): survivors,
    /// balances, the bounty pool, deaths and their causes, tick lateness.
    Soak(soak::SoakArgs),
    /// SIGKILL the daemon at random moments under load (default 100 times) and check after each
    /// kill that the ledger verifies, no acknowledged funding is lost, nothing is minted twice
    /// and the restart resumes.
    CrashTest(crash::CrashArgs),
}

#[derive(Debug, Args)]
struct SimulateArgs {
    /// Seed of every random choice; the same seed and scenario give identical output.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Scenario file (TOML). Default: the built-in Scientist-vs-Leech scenario.
    #[arg(long, value_name = "FILE")]
    scenario: Option<PathBuf>,
    /// Print the summary as JSON instead of the story.
    #[arg(long)]
    json: bool,
    /// Print the built-in scenario (a starting point for your own) and exit.
    #[arg(long, conflicts_with_all = ["scenario", "json"])]
    print_scenario: bool,
    /// First measure the built-in WASM scientist's work per quantum on this machine (two of
    /// them under the daemon's node for 5 s) and simulate with that instead of the scenario's
    /// `work.units_per_quantum`.
    #[arg(long)]
    calibrate: bool,
}

#[derive(Debug, Subcommand)]
enum AuctionCommand {
    /// Clear one auction read from standard input as JSON.
    ///
    /// Input: {"supply": k, "reserve": r, "bids": [{"agent": "a", "price": p, "placed_at": t}]}.
    /// Prices are integers in micro-JOULE or strings with a unit ("0.5 JOULE"); agents are names
    /// or numbers. Output: {"winners": [...], "price": p}: the top min(k, #bids >= r) bids win
    /// (ties: older placed_at, then agent) and all pay max(r, highest losing bid).
    Clear(ClearArgs),
}

#[derive(Debug, Args)]
struct ClearArgs {
    /// Also clear with the brute-force reference and report whether both agree.
    #[arg(long)]
    check: bool,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// The order book against the naive heap-per-tick design, at 1k to 1M standing bids.
    Auction(bench::AuctionBenchArgs),
    /// The cost of reading the sensors at 100 Hz, as a share of one core.
    Sensors(sensors::SensorsBenchArgs),
    /// Pause and resume latency of a busy agent, over hundreds of cycles.
    Pause(sandbox_bench::PauseBenchArgs),
    /// The scientist module unmetered, with epoch interruption and with fuel, in one run.
    WasmOverhead(sandbox_bench::OverheadBenchArgs),
    /// What a unit of work costs the built-in scientist at 10^9 to 10^12 (bounties pay the same).
    Work(sandbox_bench::WorkBenchArgs),
    /// Durable ledger throughput: transfers per second committed in tick transactions.
    Ledger(ledger::LedgerBenchArgs),
    /// The daemon's CPU, tick lateness, spawn rate and memory per agent, one fresh daemon per
    /// size (`--agents 100,1000,10000`; `--running R` of them scientists that run).
    Daemon(daemon_bench::DaemonBenchArgs),
    /// MicroVM spawn: boot time of guests (and kill time), p50/p99.
    Spawn(microvm_cli::SpawnBenchArgs),
    /// The eBPF probes' cost: per event, and the slowdown of a syscall-heavy agent and of the
    /// scientist, against the same workloads without them (needs root).
    Ebpf(ebpf_bench::EbpfBenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code.into(),
        Err(e) => {
            // A closed pipe (`maxwell simulate | head`) is not a failure.
            if e.downcast_ref::<io::Error>()
                .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
            {
                return Exit::Success.into();
            }
            let _ = writeln!(io::stderr(), "maxwell: error: {e:#}");
            Exit::Error.into()
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<Exit> {
    match cli.command {
        Command::Demo(a) => experiment::demo(&a),
        Command::Simulate(a) => {
            if a.print_scenario {
                write_out(maxwell_sim::DEFAULT_SCENARIO)?;
                return Ok(Exit::Success);
            }
            simulate::simulate(
                a.seed,
                a.scenario.as_deref(),
                a.json,
                a.calibrate.then_some(std::time::Duration::from_secs(5)),
            )
        }
        Command::Auction(AuctionCommand::Clear(a)) => auction::clear(a.check),
        Command::Bench(BenchCommand::Auction(a)) => bench::auction(&a),
        Command::Sensors(a) => sensors::sensors(&a),
        Command::Bench(BenchCommand::Sensors(a)) => sensors::bench(&a),
        Command::Bench(BenchCommand::Pause(a)) => sandbox_bench::pause(&a),
        Command::Bench(BenchCommand::WasmOverhead(a)) => sandbox_bench::wasm_overhead(&a),
        Command::Bench(BenchCommand::Work(a)) => sandbox_bench::work(&a),
        Command::Bench(BenchCommand::Ledger(a)) => ledger::bench(&a),
        Command::Bench(BenchCommand::Daemon(a)) => daemon_bench::run(&a),
        Command::Bench(BenchCommand::Spawn(a)) => microvm_cli::spawn_bench(&a),
        Command::Bench(BenchCommand::Ebpf(a)) => ebpf_bench::run(&a),
        Command::Microvm(c) => microvm_cli::run(&c),
        Command::Soak(a) => soak::run(&a),
        Command::CrashTest(a) => crash::run(&a),
        Command::Ledger(c) => ledger::run(&c),
        Command::Experiment(a) => experiment::run(&a),
        Command::Daemon(a) => daemon_cli::daemon(&a),
        Command::Agents(c) => daemon_cli::agents(&c),
        Command::Wallet(c) => daemon_cli::wallet(&c),
        Command::Bounty(c) => daemon_cli::bounty(&c),
        Command::Market(a) => daemon_cli::market(&a),
        Command::Cluster(daemon_cli::ClusterCommand::Status(a)) => daemon_cli::cluster_status(&a),
        Command::Events(a) => daemon_cli::events(&a),
        Command::Top(a) => top::top(&a),
    }
}

/// Writes to standard output, passing broken pipes up as `io::Error`s.
pub(crate) fn write_out(s: &str) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(s.as_bytes())?;
    out.flush()?;
    Ok(())
}
