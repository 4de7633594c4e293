use std::os::unix::fs::PermissionsExt;

use maxwell_core::book::AgentId;
use maxwell_core::ledger::{Account, LedgerBatch, Transfer, TransferKind};

use super::*;

pub(crate) struct Dir(pub PathBuf);

impl Dir {
    pub fn new(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("maxwell-ledger-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
    fn db(&self) -> PathBuf {
        self.0.join("ledger.db")
    }
    fn key(&self) -> PathBuf {
        self.0.join("node.key")
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn t(from: Account, to: Account, amount: u64, kind: TransferKind) -> Transfer {
    Transfer {
        from,
        to,
        amount: Tokens(amount),
        kind,
    }
}

fn batch(tick: u64) -> LedgerBatch {
    let a = Account::Agent(AgentId((tick % 3) as u32));
    LedgerBatch {
        tick,
        transfers: vec![
            t(Account::Mint, a, 1_000, TransferKind::Funding),
            t(a, Account::HouseEnergy, 300, TransferKind::SlotPayment),
            t(a, Account::HouseRent, 7, TransferKind::Rent),
        ],
        deaths: vec![],
    }
}

fn exec(db: &Path, q: &str) {
    Connection::open(db)
        .unwrap()
        .execute_batch(q)
        .unwrap_or_else(|e| panic!("{q}: {e}"));
}

#[test]
fn commits_resume_and_verify() {
    let d = Dir::new("resume");
    {
        let mut l = Ledger::open(&d.db(), &d.key()).unwrap();
        for tick in 1..=10 {
            l.commit(&batch(tick)).unwrap();
        }
        assert_eq!(l.books().minted(), Tokens(10_000));
    }
    let mode = std::fs::metadata(d.key()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let mut l = Ledger::open(&d.db(), &d.key()).unwrap();
    assert_eq!(l.last_tick(), Some(10));
    assert_eq!(l.books().balance(Account::HouseEnergy), Some(Tokens(3_000)));
    l.commit(&batch(11)).unwrap();
    let r = verify(&d.db()).unwrap();
    assert!(r.ok(), "{r:?}");
    assert_eq!((r.ticks, r.transfers, r.minted), (11, 33, Tokens(11_000)));
    // Ticks must increase.
    assert!(matches!(
        l.commit(&batch(11)),
        Err(LedgerError::Rejected { tick: 11, .. })
    ));
    let b = balances(&d.db()).unwrap();
    assert!(b.contains(&("mint".into(), -11_000)));
    assert_eq!(export(&d.db()).unwrap().len(), 33);
}

#[test]
fn a_batch_that_would_overdraw_is_refused_and_nothing_is_written() {
    let d = Dir::new("overdraw");
    let mut l = Ledger::open(&d.db(), &d.key()).unwrap();
    l.commit(&batch(1)).unwrap();
    let bad = LedgerBatch {
        tick: 2,
        transfers: vec![
            t(
                Account::Mint,
                Account::BountyPool,
                5,
                TransferKind::PoolFunding,
            ),
            t(
                Account::Agent(AgentId(2)),
                Account::HouseEnergy,
                1,
                TransferKind::SlotPayment,
            ),
        ],
        deaths: vec![],
    };
    let e = l.commit(&bad).unwrap_err().to_string();
    assert!(e.contains("cannot pay"), "{e}");
    assert_eq!(l.last_tick(), Some(1));
    assert_eq!(export(&d.db()).unwrap().len(), 3);
    l.commit(&batch(2)).unwrap();
    assert!(verify(&d.db()).unwrap().ok());
}

#[test]
fn tampering_is_found_and_the_first_bad_tick_named() {
    for (tag, edit, tick, needle) in [
        (
            "amount",
            "UPDATE transfers SET amount = 301 WHERE tick = 4 AND seq = 1",
            4,
            "rows differ",
        ),
        (
            "batch",
            "UPDATE ticks SET batch = replace(batch, '300', '299') WHERE tick = 6",
            6,
            "hash does not match",
        ),
        (
            "delete",
            "PRAGMA foreign_keys = OFF; DELETE FROM ticks WHERE tick = 3",
            4,
            "previous-hash",
        ),
        (
            "balance",
            "UPDATE balances SET balance = balance + 1 WHERE account = 'house:rent'",
            8,
            "stored balance of house:rent",
        ),
    ] {
        let d = Dir::new(tag);
        {
            let mut l = Ledger::open(&d.db(), &d.key()).unwrap();
            for tick in 1..=8 {
                l.commit(&batch(tick)).unwrap();
            }
        }
        exec(&d.db(), edit);
        let r = verify(&d.db()).unwrap();
        let bad = r
            .first_bad
            .clone()
            .unwrap_or_else(|| panic!("{tag}: {r:?}"));
        assert_eq!(bad.tick, tick, "{tag}: {bad:?}");
        assert!(bad.problem.contains(needle), "{tag}: {bad:?}");
        // A tampered ledger is not silently reopened.
        assert!(Ledger::open(&d.db(), &d.key()).is_err(), "{tag}");
    }
}

#[test]
fn another_nodes_key_is_refused() {
    let d = Dir::new("key");
    Ledger::open(&d.db(), &d.key())
        .unwrap()
        .commit(&batch(1))
        .unwrap();
    std::fs::remove_file(d.key()).unwrap();
    let e = Ledger::open(&d.db(), &d.key()).err().unwrap().to_string();
    assert!(e.contains("signed by node key"), "{e}");
    std::fs::write(d.key(), b"short").unwrap();
    let e = Ledger::open(&d.db(), &d.key()).err().unwrap().to_string();
    assert!(e.contains("not a 32-byte Ed25519 seed"), "{e}");
}

/// Processes started together (a script spawning agents in parallel) all create the key at
/// once: every one gets the same whole key, none an error or a half-written file.
#[test]
fn a_key_created_by_many_at_once_is_one_key() {
    for _ in 0..20 {
        let d = Dir::new("keyrace");
        let path = d.key();
        let keys: Vec<[u8; 32]> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|_| s.spawn(|| load_or_create_key(&path).map(|k| k.to_bytes())))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
        });
        assert!(keys.iter().all(|k| *k == keys[0]));
        assert_eq!(std::fs::read(&path).unwrap(), keys[0]);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(&d.0).unwrap().count(), 1);
    }
}

#[test]
fn accounts_round_trip_through_their_names() {
    for a in [
        Account::Mint,
        Account::HouseEnergy,
        Account::HouseRent,
        Account::HouseLandauer,
        Account::HouseSlash,
        Account::BountyPool,
        Account::Agent(AgentId(0)),
        Account::Agent(AgentId(4_000_000)),
    ] {
        assert_eq!(parse_account(&account_name(a)), Some(a));
    }
    assert_eq!(parse_account("agent:x"), None);
    assert_eq!(parse_account("house:cake"), None);
}

#[test]
fn deaths_and_work_ranges_survive_a_reopen() {
    let d = Dir::new("deaths-work");
    {
        let mut l = Ledger::open(&d.db(), &d.key()).unwrap();
        let mut b = batch(1);
        b.transfers.push(t(
            Account::Mint,
            Account::Agent(AgentId(0)),
            5,
            TransferKind::Funding,
        ));
        l.commit_with_work(&b, &[(AgentId(0), 10, 20), (AgentId(0), 30, 40)])
            .unwrap();
        let mut b = batch(2);
        b.deaths.push(maxwell_core::ledger::Death {
            agent: AgentId(0),
            cause: Cause::Owner,
        });
        l.commit(&b).unwrap();
        assert_eq!(l.deaths().get(&AgentId(0)), Some(&(2, Cause::Owner)));
    }
    let l = Ledger::open(&d.db(), &d.key()).unwrap();
    assert_eq!(l.deaths().get(&AgentId(0)), Some(&(2, Cause::Owner)));
    assert_eq!(
        l.work_ranges().unwrap(),
        vec![(AgentId(0), 10, 20), (AgentId(0), 30, 40)]
    );
    assert!(verify(&d.db()).unwrap().ok());
}
