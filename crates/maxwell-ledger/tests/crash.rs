//! Kill -9 at random moments loses no committed tick and never leaves half of one.
//!
//! The writer is this test binary itself, run as the ignored test `writer` with
//! `MAXWELL_LEDGER_WRITER=<dir>`: it resumes the ledger and commits big ticks as fast as it can,
//! printing each tick number after its commit returns. The parent kills it with SIGKILL at a
//! random moment, then checks that the ledger verifies (chain, signatures, conservation) and
//! holds at least every tick the writer reported committed. Many rounds.

#![allow(clippy::unwrap_used)] // test helpers: a failure should panic

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use maxwell_core::Tokens;
use maxwell_core::book::AgentId;
use maxwell_core::ledger::{Account, LedgerBatch, Transfer, TransferKind};
use maxwell_ledger::{Ledger, verify};

const ENV: &str = "MAXWELL_LEDGER_WRITER";

fn batch(tick: u64) -> LedgerBatch {
    // 400 transfers per tick: a commit takes long enough to be killed in the middle of.
    let mut transfers = Vec::new();
    for i in 0..200u32 {
        let a = Account::Agent(AgentId(i % 16));
        transfers.push(Transfer {
            from: Account::Mint,
            to: a,
            amount: Tokens(1_000 + tick % 7),
            kind: TransferKind::Funding,
        });
        transfers.push(Transfer {
            from: a,
            to: Account::HouseEnergy,
            amount: Tokens(999),
            kind: TransferKind::SlotPayment,
        });
    }
    LedgerBatch {
        tick,
        transfers,
        deaths: vec![],
    }
}

#[test]
#[ignore = "run by kill_minus_nine_never_loses_a_committed_tick"]
fn writer() {
    let Some(dir) = std::env::var_os(ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let mut l = Ledger::open(&dir.join("ledger.db"), &dir.join("node.key")).unwrap();
    let mut out = std::io::stdout().lock();
    let mut tick = l.last_tick().map_or(1, |t| t + 1);
    loop {
        l.commit(&batch(tick)).unwrap();
        writeln!(out, "committed {tick}").unwrap();
        out.flush().unwrap();
        tick += 1;
    }
}

#[test]
fn kill_minus_nine_never_loses_a_committed_tick() {
    let dir = std::env::temp_dir().join(format!("maxwell-ledger-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut committed_total = 0u64;
    let rounds = 25;
    for round in 0..rounds {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "writer",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ENV, &dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        // Read reports on a thread; the kill comes at a random moment 20..220 ms in.
        let reader = std::thread::spawn(move || {
            let mut last = None;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(n) = line.strip_prefix("committed ") {
                    last = n.trim().parse::<u64>().ok();
                }
            }
            last
        });
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let wait = Duration::from_millis(20 + rng % 200);
        let start = Instant::now();
        while start.elapsed() < wait {
            std::thread::sleep(Duration::from_millis(5));
        }
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        child.wait().unwrap();
        let reported = reader.join().unwrap();
        let r = verify(&dir.join("ledger.db")).unwrap();
        assert!(r.ok(), "round {round}: {:?}", r.first_bad);
        if let Some(n) = reported {
            assert!(
                r.ticks >= n,
                "round {round}: the writer reported tick {n} committed, the ledger holds {}",
                r.ticks
            );
            committed_total = n;
        }
        // Whole ticks only: 400 transfers each.
        assert_eq!(r.transfers, r.ticks * 400, "round {round}");
    }
    assert!(committed_total > 0, "the writer never committed anything");
    let _ = std::fs::remove_dir_all(&dir);
}
