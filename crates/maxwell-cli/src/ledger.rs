//! `maxwell ledger verify|show|export` and `maxwell bench ledger`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;

use maxwell_core::Tokens;
use maxwell_core::book::AgentId;
use maxwell_core::ledger::{Account, LedgerBatch, Transfer, TransferKind};
use maxwell_ledger::Ledger;

use crate::{Exit, write_out};

/// The data directory: `$XDG_DATA_HOME/maxwell`, else `~/.local/share/maxwell`.
pub(crate) fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("maxwell");
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(h) => PathBuf::from(h).join(".local/share/maxwell"),
        None => PathBuf::from("maxwell-data"),
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum LedgerCommand {
    /// Check the hash chain, every signature and conservation; name the first bad entry.
    Verify(DbArgs),
    /// Balances of every account, and the chain head.
    Show(DbArgs),
    /// Every transfer, in order.
    Export(ExportArgs),
}

#[derive(Debug, Args)]
pub(crate) struct DbArgs {
    /// The ledger database (default: ledger.db in the data directory).
    #[arg(long, value_name = "PATH")]
    db: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Format {
    /// Comma-separated, with a header line.
    Csv,
    /// A JSON array.
    Json,
}

#[derive(Debug, Args)]
pub(crate) struct ExportArgs {
    /// The ledger database (default: ledger.db in the data directory).
    #[arg(long, value_name = "PATH")]
    db: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "csv")]
    format: Format,
}

fn db_path(db: &Option<PathBuf>) -> PathBuf {
    db.clone()
        .unwrap_or_else(|| default_data_dir().join("ledger.db"))
}

pub(crate) fn run(cmd: &LedgerCommand) -> anyhow::Result<Exit> {
    match cmd {
        LedgerCommand::Verify(a) => {
            let db = db_path(&a.db);
            let r = maxwell_ledger::verify(&db)?;
            if a.json {
                write_out(&(serde_json::to_string_pretty(&r)? + "\n"))?;
            } else {
                match &r.first_bad {
                    None => write_out(&format!(
                        "{}: ok: {} ticks, {} transfers, {} minted; chain, signatures and \
                         conservation check\nhead {}\nnode key {}\n",
                        db.display(),
                        r.ticks,
                        r.transfers,
                        r.minted,
                        r.head.as_deref().unwrap_or("(empty)"),
                        r.public_key
                    ))?,
                    Some(bad) => write_out(&format!(
                        "{}: BAD at tick {}: {}\n({} ticks before it verify)\n",
                        db.display(),
                        bad.tick,
                        bad.problem,
                        r.ticks
                    ))?,
                }
            }
            Ok(if r.ok() { Exit::Success } else { Exit::Failed })
        }
        LedgerCommand::Show(a) => {
            let db = db_path(&a.db);
            let r = maxwell_ledger::verify(&db)?;
            let balances = maxwell_ledger::balances(&db)?;
            if a.json {
                #[derive(Serialize)]
                struct Show<'a> {
                    ticks: u64,
                    head: Option<&'a str>,
                    verified: bool,
                    balances: Vec<(&'a str, i64)>,
                }
                let s = Show {
                    ticks: r.ticks,
                    head: r.head.as_deref(),
                    verified: r.ok(),
                    balances: balances.iter().map(|(a, b)| (a.as_str(), *b)).collect(),
                };
                write_out(&(serde_json::to_string_pretty(&s)? + "\n"))?;
            } else {
                let mut text = format!(
                    "{}: {} ticks, head {}, {}\n",
                    db.display(),
                    r.ticks,
                    r.head.as_deref().unwrap_or("(empty)"),
                    if r.ok() {
                        "verified"
                    } else {
                        "FAILS VERIFICATION"
                    }
                );
                for (account, balance) in &balances {
                    let shown = if *balance < 0 {
                        format!("-{}", Tokens(balance.unsigned_abs()))
                    } else {
                        Tokens(*balance as u64).to_string()
                    };
                    text.push_str(&format!("  {account:<16} {shown:>20}\n"));
                }
                write_out(&text)?;
            }
            Ok(Exit::Success)
        }
        LedgerCommand::Export(a) => {
            let rows = maxwell_ledger::export(&db_path(&a.db))?;
            match a.format {
                Format::Json => write_out(&(serde_json::to_string(&rows)? + "\n"))?,
                Format::Csv => {
                    let mut text = String::from("tick,seq,from,to,amount_ujoule,kind\n");
                    for r in &rows {
                        text.push_str(&format!(
                            "{},{},{},{},{},{}\n",
                            r.tick, r.seq, r.from, r.to, r.amount, r.kind
                        ));
                    }
                    write_out(&text)?;
                }
            }
            Ok(Exit::Success)
        }
    }
}

#[derive(Debug, Args)]
pub(crate) struct LedgerBenchArgs {
    /// Ticks to commit.
    #[arg(long, default_value_t = 200)]
    ticks: u64,
    /// Transfers per tick (one transaction each).
    #[arg(long, default_value_t = 1_000)]
    per_tick: u32,
    /// Where to put the scratch database (removed afterwards). Default: the system temp dir.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct LedgerBenchReport {
    ticks: u64,
    transfers_per_tick: u32,
    transfers_per_s: f64,
    commits_per_s: f64,
    commit_p50_us: f64,
    commit_p99_us: f64,
    verify_s: f64,
    target_transfers_per_s: f64,
    met: bool,
}

fn bench_batch(tick: u64, per_tick: u32) -> LedgerBatch {
    let mut transfers = Vec::with_capacity(per_tick as usize);
    for i in 0..per_tick / 2 {
        let a = Account::Agent(AgentId(i % 100));
        transfers.push(Transfer {
            from: Account::Mint,
            to: a,
            amount: Tokens(1_000),
            kind: TransferKind::Funding,
        });
        transfers.push(Transfer {
            from: a,
            to: Account::HouseEnergy,
            amount: Tokens(990),
            kind: TransferKind::SlotPayment,
        });
    }
    LedgerBatch {
        tick,
        transfers,
        deaths: vec![],
    }
}

pub(crate) fn bench(a: &LedgerBenchArgs) -> anyhow::Result<Exit> {
    let base = a.dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("maxwell-bench-ledger-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = bench_in(a, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn bench_in(a: &LedgerBenchArgs, dir: &Path) -> anyhow::Result<Exit> {
    let db = dir.join("ledger.db");
    let mut ledger = Ledger::open(&db, &dir.join("node.key"))?;
    let batches: Vec<LedgerBatch> = (1..=a.ticks).map(|t| bench_batch(t, a.per_tick)).collect();
    let per_tick = batches.first().map_or(0, |b| b.transfers.len());
    let mut commits = Vec::with_capacity(batches.len());
    let start = Instant::now();
    for (i, b) in batches.iter().enumerate() {
        let t = Instant::now();
        ledger.commit(b)?;
        commits.push(t.elapsed().as_secs_f64() * 1e6);
        if !a.json && (i + 1) % 50 == 0 {
            eprint!("\r{} / {} ticks", i + 1, a.ticks);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    if !a.json {
        eprintln!();
    }
    let t = Instant::now();
    let r = maxwell_ledger::verify(&db)?;
    let verify_s = t.elapsed().as_secs_f64();
    if !r.ok() {
        anyhow::bail!(
            "the benchmark's ledger fails verification: {:?}",
            r.first_bad
        );
    }
    commits.sort_by(f64::total_cmp);
    let pct = |p: f64| commits[((commits.len() - 1) as f64 * p).round() as usize];
    let transfers_per_s = (a.ticks as f64 * per_tick as f64) / secs;
    let report = LedgerBenchReport {
        ticks: a.ticks,
        transfers_per_tick: per_tick as u32,
        transfers_per_s,
        commits_per_s: a.ticks as f64 / secs,
        commit_p50_us: pct(0.5),
        commit_p99_us: pct(0.99),
        verify_s,
        target_transfers_per_s: 250_000.0,
        met: transfers_per_s >= 250_000.0,
    };
    if a.json {
        write_out(&(serde_json::to_string_pretty(&report)? + "\n"))?;
    } else {
        write_out(&format!(
            "{} ticks of {} transfers, each tick one durable transaction (WAL, synchronous=FULL), \
             hash-chained and signed\n{:.0} transfers/s, {:.0} commits/s, commit p50 {:.0} us, \
             p99 {:.0} us; verify of the whole ledger {:.2} s\ntarget >= 250000 transfers/s: {}\n",
            report.ticks,
            report.transfers_per_tick,
            report.transfers_per_s,
            report.commits_per_s,
            report.commit_p50_us,
            report.commit_p99_us,
            report.verify_s,
            if report.met { "met" } else { "NOT MET" }
        ))?;
    }
    Ok(if report.met {
        Exit::Success
    } else {
        Exit::Failed
    })
}
