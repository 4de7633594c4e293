//! `maxwell ledger verify|show|export` and `maxwell bench ledger`.

use maxwell_core::Tokens;
use maxwell_core::book::AgentId;
use maxwell_core::ledger::{Account, LedgerBatch, Transfer, TransferKind};
use serde_json::Value;

use crate::{maxwell, stderr, stdout};

fn ledger(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("maxwell-it-ledger-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut l =
        maxwell_ledger::Ledger::open(&dir.join("ledger.db"), &dir.join("node.key")).unwrap();
    for tick in 1..=5 {
        l.commit(&LedgerBatch {
            tick,
            transfers: vec![
                Transfer {
                    from: Account::Mint,
                    to: Account::Agent(AgentId(0)),
                    amount: Tokens(1_000_000),
                    kind: TransferKind::Funding,
                },
                Transfer {
                    from: Account::Agent(AgentId(0)),
                    to: Account::HouseEnergy,
                    amount: Tokens(250_000),
                    kind: TransferKind::SlotPayment,
                },
            ],
            deaths: vec![],
        })
        .unwrap();
    }
    dir
}

#[test]
fn verify_show_and_export_a_ledger_and_name_a_tampered_tick() {
    let dir = ledger("cli");
    let db = dir.join("ledger.db");
    let db = db.to_str().unwrap();
    let o = maxwell(&["ledger", "verify", "--db", db], "");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("ok: 5 ticks, 10 transfers, 5 JOULE minted"),
        "{}",
        stdout(&o)
    );

    let o = maxwell(&["ledger", "show", "--db", db, "--json"], "");
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["ticks"], 5);
    assert_eq!(v["verified"], true);

    let o = maxwell(&["ledger", "export", "--db", db], "");
    let csv = stdout(&o);
    assert_eq!(csv.lines().count(), 11);
    assert!(
        csv.starts_with("tick,seq,from,to,amount_ujoule,kind\n1,0,mint,agent:0,1000000,funding\n")
    );
    let o = maxwell(&["ledger", "export", "--db", db, "--format", "json"], "");
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 10);

    rusqlite_edit(
        db,
        "UPDATE transfers SET amount = 1 WHERE tick = 3 AND seq = 1",
    );
    let o = maxwell(&["ledger", "verify", "--db", db], "");
    assert_eq!(o.status.code(), Some(3));
    assert!(stdout(&o).contains("BAD at tick 3"), "{}", stdout(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

fn rusqlite_edit(db: &str, q: &str) {
    // The sqlite3 CLI may be absent; SQLite through the ledger crate's own dependency is not
    // exposed, so edit with a tiny Python script (Python 3 is on every machine of this kind).
    let ok = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute(sys.argv[2]); c.commit()",
            db,
            q,
        ])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

#[test]
fn verify_a_missing_ledger_says_where_to_look() {
    let o = maxwell(&["ledger", "verify", "--db", "/nonexistent/ledger.db"], "");
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("does not exist; pass the daemon's database with --db"));
}

#[test]
fn bench_ledger_prints_transfers_per_second() {
    let o = maxwell(&["bench", "ledger", "--ticks", "20", "--json"], "");
    assert!(
        matches!(o.status.code(), Some(0) | Some(3)),
        "{}",
        stderr(&o)
    );
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(v["transfers_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(v["transfers_per_tick"], 1000);
}
