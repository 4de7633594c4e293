//! # maxwell-ledger: a ledger that never loses a token
//!
//! Each tick's [`LedgerBatch`] (from `maxwell_core::Market::tick`) is committed to SQLite in one
//! transaction, in WAL mode with `synchronous = FULL`: a crash at any moment leaves every tick
//! either wholly committed or wholly absent. Entries are hash-chained: the hash of tick `n` is
//! `SHA-256(hash of tick n-1 || tick number || canonical JSON of the batch)`, and each tick's
//! hash is signed with the node's Ed25519 key (created on first use, mode 0600), so the signed
//! head commits to the whole history. [`verify`] recomputes the chain, checks every signature,
//! replays every transfer into fresh books to check conservation and that no balance goes
//! negative, compares the replay with the stored balances, and names the first bad entry.
//!
//! The database is a plain SQLite file: `sqlite3 ledger.db 'select * from balances'` works.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::Serialize;
use sha2::{Digest, Sha256};

use maxwell_core::Tokens;
use maxwell_core::book::AgentId;
use maxwell_core::ledger::{Account, Books, Cause, LedgerBatch, Transfer, TransferKind};

/// The schema version this code writes.
pub const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ticks (
    tick INTEGER PRIMARY KEY,
    prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL,
    signature BLOB NOT NULL,
    batch TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS transfers (
    id INTEGER PRIMARY KEY,
    tick INTEGER NOT NULL REFERENCES ticks(tick),
    seq INTEGER NOT NULL,
    from_account TEXT NOT NULL,
    to_account TEXT NOT NULL,
    amount INTEGER NOT NULL CHECK (amount >= 0),
    kind TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS transfers_by_tick ON transfers(tick);
CREATE TABLE IF NOT EXISTS balances (account TEXT PRIMARY KEY, balance INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS work (
    tick INTEGER NOT NULL REFERENCES ticks(tick),
    agent INTEGER NOT NULL,
    start INTEGER NOT NULL,
    end INTEGER NOT NULL
);
";

/// Ledger failures, each saying what to do.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// SQLite said no.
    #[error("ledger database {path}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// The key file is unusable.
    #[error("node key {path}: {message}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
    /// A batch cannot be recorded (it would break the books).
    #[error("tick {tick}: {message}")]
    Rejected {
        /// The tick.
        tick: u64,
        /// Why.
        message: String,
    },
    /// The database was written by another version or another node.
    #[error("{0}")]
    Incompatible(String),
}

/// The first problem [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BadEntry {
    /// The tick where it is.
    pub tick: u64,
    /// What is wrong.
    pub problem: String,
}

/// What [`verify`] found.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// Ticks checked.
    pub ticks: u64,
    /// Transfers replayed.
    pub transfers: u64,
    /// Total minted.
    pub minted: Tokens,
    /// The node's public key (hex).
    pub public_key: String,
    /// The head of the chain (hex), if any tick was committed.
    pub head: Option<String>,
    /// `None` when everything checks.
    pub first_bad: Option<BadEntry>,
}

impl VerifyReport {
    /// True when chain, signatures and conservation all check.
    pub fn ok(&self) -> bool {
        self.first_bad.is_none()
    }
}

/// Text form of an account, as stored: `mint`, `house:energy`, ..., `agent:7`.
pub fn account_name(a: Account) -> String {
    a.to_string()
}

/// Parses [`account_name`]'s output.
pub fn parse_account(s: &str) -> Option<Account> {
    Some(match s {
        "mint" => Account::Mint,
        "house:energy" => Account::HouseEnergy,
        "house:rent" => Account::HouseRent,
        "house:landauer" => Account::HouseLandauer,
        "house:slash" => Account::HouseSlash,
        "bounty-pool" => Account::BountyPool,
        other => Account::Agent(AgentId(other.strip_prefix("agent:")?.parse().ok()?)),
    })
}

fn kind_name(k: TransferKind) -> &'static str {
    match k {
        TransferKind::Funding => "funding",
        TransferKind::PoolFunding => "pool-funding",
        TransferKind::SlotPayment => "slot-payment",
        TransferKind::Rent => "rent",
        TransferKind::LandauerTax => "landauer-tax",
        TransferKind::Bounty => "bounty",
        TransferKind::Fine => "fine",
        TransferKind::Recycling => "recycling",
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The chain step: `SHA-256(prev || tick (big-endian) || batch JSON)`.
pub fn chain_hash(prev: &[u8; 32], tick: u64, batch_json: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(tick.to_be_bytes());
    h.update(batch_json.as_bytes());
    h.finalize().into()
}

/// Loads the node key from `path`, creating it (mode 0600) on first use.
pub fn load_or_create_key(path: &Path) -> Result<SigningKey, LedgerError> {
    let err = |message: String| LedgerError::Key {
        path: path.to_owned(),
        message,
    };
    match std::fs::read(path) {
        Ok(bytes) => {
            let seed: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                err(format!(
                    "holds {} bytes, not a 32-byte Ed25519 seed; restore it from a backup (a new \
                     key cannot sign this node's existing ledger)",
                    bytes.len()
                ))
            })?;
            Ok(SigningKey::from_bytes(&seed))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut seed = [0u8; 32];
            let mut rng = std::fs::File::open("/dev/urandom")
                .map_err(|e| err(format!("cannot read /dev/urandom for a new key: {e}")))?;
            std::io::Read::read_exact(&mut rng, &mut seed)
                .map_err(|e| err(format!("cannot read /dev/urandom for a new key: {e}")))?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| err(format!("cannot create its directory: {e}")))?;
            }
            // Written whole under a private name, then linked into place: a concurrent
            // reader never sees a half-written key, and of two processes creating it at once
            // one wins and the other reads the winner's.
            static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let tmp = path.with_extension(format!("tmp.{}.{n}", std::process::id()));
            let written = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .and_then(|mut f| f.write_all(&seed).and_then(|()| f.sync_all()));
            if let Err(e) = written {
                // Best effort: a leftover temporary file holds no key in use.
                let _ = std::fs::remove_file(&tmp);
                return Err(err(format!("cannot create it: {e}")));
            }
            let linked = std::fs::hard_link(&tmp, path);
            let _ = std::fs::remove_file(&tmp);
            match linked {
                Ok(()) => {
                    // The link itself made durable, before anything is signed with the key.
                    if let Some(dir) = path.parent() {
                        let dir = if dir.as_os_str().is_empty() {
                            Path::new(".")
                        } else {
                            dir
                        };
                        std::fs::File::open(dir)
                            .and_then(|d| d.sync_all())
                            .map_err(|e| err(format!("cannot sync its directory: {e}")))?;
                    }
                    Ok(SigningKey::from_bytes(&seed))
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_or_create_key(path),
                Err(e) => Err(err(format!("cannot create it: {e}"))),
            }
        }
        Err(e) => Err(err(format!("cannot read it: {e}"))),
    }
}

/// An open ledger.
pub struct Ledger {
    path: PathBuf,
    conn: Connection,
    key: SigningKey,
    head: [u8; 32],
    last_tick: Option<u64>,
    books: Books,
    deaths: BTreeMap<AgentId, (u64, Cause)>,
    history: BTreeMap<AgentId, History>,
}

/// An agent's money history as the ledger records it, summed over every committed tick (what
/// a restarted market needs so that a wallet's funded, bounties and spending survive).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct History {
    /// Funding received.
    pub funded: Tokens,
    /// Bounties received.
    pub bounties: Tokens,
    /// Slot payments made.
    pub slots: Tokens,
    /// Slot payments made, counted: the quanta it won (every winner pays).
    pub quanta_won: u64,
    /// Rent paid.
    pub rent: Tokens,
    /// Landauer tax paid.
    pub landauer: Tokens,
    /// Fines paid.
    pub fines: Tokens,
}

impl History {
    fn add(&mut self, t: &Transfer, agent: AgentId) {
        let add = |x: &mut Tokens| *x = Tokens(x.0.saturating_add(t.amount.0));
        if t.to == Account::Agent(agent) {
            match t.kind {
                TransferKind::Funding => add(&mut self.funded),
                TransferKind::Bounty => add(&mut self.bounties),
                _ => {}
            }
        } else {
            match t.kind {
                TransferKind::SlotPayment => {
                    add(&mut self.slots);
                    self.quanta_won += 1;
                }
                TransferKind::Rent => add(&mut self.rent),
                TransferKind::LandauerTax => add(&mut self.landauer),
                TransferKind::Fine => add(&mut self.fines),
                _ => {}
            }
        }
    }
}

fn sql(path: &Path) -> impl Fn(rusqlite::Error) -> LedgerError + '_ {
    move |source| LedgerError::Sqlite {
        path: path.to_owned(),
        source,
    }
}

fn open_conn(path: &Path) -> Result<Connection, LedgerError> {
    let conn = Connection::open(path).map_err(sql(path))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(sql(path))?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(sql(path))?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(sql(path))?;
    Ok(conn)
}

impl Ledger {
    /// Opens (or creates) the ledger at `db`, signing with the key at `key` (created if absent).
    /// Replays the stored transfers into books, so a restart resumes exactly.
    pub fn open(db: &Path, key: &Path) -> Result<Ledger, LedgerError> {
        let key = load_or_create_key(key)?;
        let conn = open_conn(db)?;
        conn.execute_batch(SCHEMA).map_err(sql(db))?;
        let public = hex(key.verifying_key().as_bytes());
        let stored: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE key = 'public_key'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(sql(db))?;
        match stored {
            None => {
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('public_key', ?1), ('schema', ?2)",
                    params![public, SCHEMA_VERSION.to_string()],
                )
                .map_err(sql(db))?;
            }
            Some(p) if p == public => {}
            Some(p) => {
                return Err(LedgerError::Incompatible(format!(
                    "{} was signed by node key {p}, but the key file holds {public}; use that \
                     node's key file (or another data directory)",
                    db.display()
                )));
            }
        }
        let report = verify_conn(&conn, db)?;
        if let Some(bad) = &report.first_bad {
            return Err(LedgerError::Incompatible(format!(
                "{} fails verification at tick {}: {}; run `maxwell ledger verify` for details",
                db.display(),
                bad.tick,
                bad.problem
            )));
        }
        let (books, head, last_tick, deaths, history) = replay(&conn, db)?;
        Ok(Ledger {
            path: db.to_owned(),
            conn,
            key,
            head,
            last_tick,
            books,
            deaths,
            history,
        })
    }

    /// The last committed tick.
    pub fn last_tick(&self) -> Option<u64> {
        self.last_tick
    }

    /// Balances as committed.
    pub fn books(&self) -> &Books {
        &self.books
    }

    /// Every agent the ledger records as dead: tick and cause.
    pub fn deaths(&self) -> &BTreeMap<AgentId, (u64, Cause)> {
        &self.deaths
    }

    /// Each agent's money history as committed when the ledger was opened.
    pub fn history(&self) -> &BTreeMap<AgentId, History> {
        &self.history
    }

    /// Every range of work recorded with [`Ledger::commit_with_work`], as `(agent, start,
    /// end)`, by start.
    pub fn work_ranges(&self) -> Result<Vec<(AgentId, u64, u64)>, LedgerError> {
        let e = sql(&self.path);
        let mut stmt = self
            .conn
            .prepare("SELECT agent, start, end FROM work ORDER BY start")
            .map_err(&e)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    AgentId(r.get::<_, i64>(0)? as u32),
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, i64>(2)? as u64,
                ))
            })
            .map_err(&e)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(e)
    }

    /// The node's public key.
    pub fn public_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// Commits one tick's batch in one transaction. Ticks must increase. The batch is checked
    /// against the committed books first (no negative balance, conservation), so a bad batch is
    /// refused and nothing is written.
    pub fn commit(&mut self, batch: &LedgerBatch) -> Result<[u8; 32], LedgerError> {
        self.commit_with_work(batch, &[])
    }

    /// [`Ledger::commit`], also recording in the same transaction the ranges of work the tick
    /// accepted, `(agent, start, end)`, so that a restarted node refuses them as duplicates.
    pub fn commit_with_work(
        &mut self,
        batch: &LedgerBatch,
        work: &[(AgentId, u64, u64)],
    ) -> Result<[u8; 32], LedgerError> {
        if self.last_tick.is_some_and(|t| batch.tick <= t) {
            return Err(LedgerError::Rejected {
                tick: batch.tick,
                message: format!(
                    "ticks must increase; the last committed tick is {}",
                    self.last_tick.unwrap_or_default()
                ),
            });
        }
        let mut books = self.books.clone();
        for t in &batch.transfers {
            apply(&mut books, t).map_err(|message| LedgerError::Rejected {
                tick: batch.tick,
                message,
            })?;
        }
        books
            .check_conservation()
            .map_err(|e| LedgerError::Rejected {
                tick: batch.tick,
                message: e.to_string(),
            })?;
        let json = serde_json::to_string(batch).map_err(|e| LedgerError::Rejected {
            tick: batch.tick,
            message: format!("cannot encode: {e}"),
        })?;
        let hash = chain_hash(&self.head, batch.tick, &json);
        let signature = self.key.sign(&hash);
        let tick = i64::try_from(batch.tick).map_err(|_| LedgerError::Rejected {
            tick: batch.tick,
            message: "tick number above 2^63".into(),
        })?;
        let e = sql(&self.path);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&e)?;
        tx.execute(
            "INSERT INTO ticks (tick, prev_hash, hash, signature, batch) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![tick, &self.head[..], &hash[..], &signature.to_bytes()[..], json],
        )
        .map_err(&e)?;
        {
            let mut ins = tx
                .prepare_cached(
                    "INSERT INTO transfers (tick, seq, from_account, to_account, amount, kind) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(&e)?;
            let mut touched = std::collections::BTreeSet::new();
            for (seq, t) in batch.transfers.iter().enumerate() {
                ins.execute(params![
                    tick,
                    seq as i64,
                    account_name(t.from),
                    account_name(t.to),
                    amount_i64(batch.tick, t.amount)?,
                    kind_name(t.kind),
                ])
                .map_err(&e)?;
                touched.insert(t.from);
                touched.insert(t.to);
            }
            let mut up = tx
                .prepare_cached(
                    "INSERT INTO balances (account, balance) VALUES (?1, ?2) \
                     ON CONFLICT(account) DO UPDATE SET balance = excluded.balance",
                )
                .map_err(&e)?;
            for a in touched {
                up.execute(params![account_name(a), signed_balance(&books, a)])
                    .map_err(&e)?;
            }
            let mut w = tx
                .prepare_cached(
                    "INSERT INTO work (tick, agent, start, end) VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(&e)?;
            for (agent, start, end) in work {
                w.execute(params![tick, agent.0, *start as i64, *end as i64])
                    .map_err(&e)?;
            }
        }
        tx.commit().map_err(&e)?;
        self.books = books;
        self.head = hash;
        self.last_tick = Some(batch.tick);
        for d in &batch.deaths {
            self.deaths.insert(d.agent, (batch.tick, d.cause.clone()));
        }
        Ok(hash)
    }
}

fn amount_i64(tick: u64, a: Tokens) -> Result<i64, LedgerError> {
    i64::try_from(a.0).map_err(|_| LedgerError::Rejected {
        tick,
        message: format!("amount {a} does not fit the ledger's 63-bit column"),
    })
}

fn signed_balance(books: &Books, a: Account) -> i64 {
    match books.balance(a) {
        Some(t) => i64::try_from(t.0).unwrap_or(i64::MAX),
        None if a == Account::Mint => i64::try_from(books.minted().0).map_or(i64::MIN, |m| -m),
        None => 0,
    }
}

/// Applies a transfer to books, opening agent wallets as they first appear.
fn apply(books: &mut Books, t: &Transfer) -> Result<(), String> {
    for a in [t.from, t.to] {
        if let Account::Agent(id) = a {
            if id.0 as usize >= 1 << 24 {
                return Err(format!("agent id {} is implausibly large", id.0));
            }
            while books.n_agents() <= id.0 as usize {
                books.open_agent();
            }
        }
    }
    books.apply(t).map_err(|e| e.to_string())
}

type Replayed = (
    Books,
    [u8; 32],
    Option<u64>,
    BTreeMap<AgentId, (u64, Cause)>,
    BTreeMap<AgentId, History>,
);

fn replay(conn: &Connection, db: &Path) -> Result<Replayed, LedgerError> {
    let mut books = Books::default();
    let mut deaths = BTreeMap::new();
    let mut history: BTreeMap<AgentId, History> = BTreeMap::new();
    let mut stmt = conn
        .prepare("SELECT batch, hash, tick FROM ticks ORDER BY tick")
        .map_err(sql(db))?;
    let mut rows = stmt.query([]).map_err(sql(db))?;
    let mut head = [0u8; 32];
    let mut last = None;
    while let Some(r) = rows.next().map_err(sql(db))? {
        let json: String = r.get(0).map_err(sql(db))?;
        let hash: Vec<u8> = r.get(1).map_err(sql(db))?;
        let tick: i64 = r.get(2).map_err(sql(db))?;
        let batch: LedgerBatch = serde_json::from_str(&json)
            .map_err(|e| LedgerError::Incompatible(format!("tick {tick}: {e}")))?;
        for t in &batch.transfers {
            apply(&mut books, t)
                .map_err(|m| LedgerError::Incompatible(format!("tick {tick}: {m}")))?;
            for a in [t.from, t.to] {
                if let Account::Agent(id) = a {
                    history.entry(id).or_default().add(t, id);
                }
            }
        }
        for d in batch.deaths {
            deaths.insert(d.agent, (tick as u64, d.cause));
        }
        head = hash.as_slice().try_into().unwrap_or([0; 32]);
        last = Some(tick as u64);
    }
    Ok((books, head, last, deaths, history))
}

/// Verifies the ledger at `db`: chain, signatures, conservation, stored balances. Opens the
/// database read-only and never changes it.
pub fn verify(db: &Path) -> Result<VerifyReport, LedgerError> {
    if !db.exists() {
        return Err(LedgerError::Incompatible(format!(
            "{} does not exist; pass the daemon's database with --db",
            db.display()
        )));
    }
    let conn = Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(sql(db))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(sql(db))?;
    // One read transaction: a running daemon keeps committing, and every table must be read
    // from the same snapshot (WAL gives readers one while the writer goes on).
    conn.execute_batch("BEGIN DEFERRED").map_err(sql(db))?;
    let report = verify_conn(&conn, db);
    let _ = conn.execute_batch("COMMIT");
    report
}

fn verify_conn(conn: &Connection, db: &Path) -> Result<VerifyReport, LedgerError> {
    let public: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'public_key'", [], |r| {
            r.get(0)
        })
        .optional()
        .map_err(sql(db))?;
    let public = public.ok_or_else(|| {
        LedgerError::Incompatible(format!(
            "{} has no node public key: not a Maxwell ledger",
            db.display()
        ))
    })?;
    let key_bytes: Option<[u8; 32]> = (0..32)
        .map(|i| u8::from_str_radix(public.get(2 * i..2 * i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()
        .and_then(|v| v.try_into().ok());
    let vk = key_bytes
        .and_then(|b| VerifyingKey::from_bytes(&b).ok())
        .ok_or_else(|| {
            LedgerError::Incompatible(format!("public key {public:?} is not an Ed25519 key"))
        })?;
    let mut report = VerifyReport {
        ticks: 0,
        transfers: 0,
        minted: Tokens(0),
        public_key: public,
        head: None,
        first_bad: None,
    };
    let mut books = Books::default();
    let mut prev = [0u8; 32];
    let mut stmt = conn
        .prepare("SELECT tick, prev_hash, hash, signature, batch FROM ticks ORDER BY tick")
        .map_err(sql(db))?;
    let mut rows = stmt.query([]).map_err(sql(db))?;
    let mut count_stmt = conn
        .prepare("SELECT from_account, to_account, amount, kind FROM transfers WHERE tick = ?1 ORDER BY seq")
        .map_err(sql(db))?;
    while let Some(r) = rows.next().map_err(sql(db))? {
        let tick: i64 = r.get(0).map_err(sql(db))?;
        let t = tick as u64;
        let bad = |problem: String| Some(BadEntry { tick: t, problem });
        let prev_hash: Vec<u8> = r.get(1).map_err(sql(db))?;
        let hash: Vec<u8> = r.get(2).map_err(sql(db))?;
        let sig: Vec<u8> = r.get(3).map_err(sql(db))?;
        let json: String = r.get(4).map_err(sql(db))?;
        if prev_hash != prev {
            report.first_bad = bad("its previous-hash does not match the tick before it".into());
            break;
        }
        let expect = chain_hash(&prev, t, &json);
        if hash != expect {
            report.first_bad = bad("its hash does not match its content (edited?)".into());
            break;
        }
        let sig_ok = <[u8; 64]>::try_from(sig.as_slice())
            .ok()
            .map(|b| Signature::from_bytes(&b))
            .is_some_and(|s| vk.verify(&expect, &s).is_ok());
        if !sig_ok {
            report.first_bad = bad("its signature does not verify with the node key".into());
            break;
        }
        let batch: LedgerBatch = match serde_json::from_str(&json) {
            Ok(b) => b,
            Err(e) => {
                report.first_bad = bad(format!("its batch does not parse: {e}"));
                break;
            }
        };
        // The transfer rows must be exactly the signed batch's transfers.
        let rows_match = {
            let mut stored = Vec::new();
            let mut q = count_stmt.query(params![tick]).map_err(sql(db))?;
            while let Some(x) = q.next().map_err(sql(db))? {
                let (f, to, amount, kind): (String, String, i64, String) = (
                    x.get(0).map_err(sql(db))?,
                    x.get(1).map_err(sql(db))?,
                    x.get(2).map_err(sql(db))?,
                    x.get(3).map_err(sql(db))?,
                );
                stored.push((f, to, amount, kind));
            }
            stored.len() == batch.transfers.len()
                && stored.iter().zip(&batch.transfers).all(|(s, t)| {
                    s.0 == account_name(t.from)
                        && s.1 == account_name(t.to)
                        && u64::try_from(s.2).ok() == Some(t.amount.0)
                        && s.3 == kind_name(t.kind)
                })
        };
        if !rows_match {
            report.first_bad = bad("its transfer rows differ from the signed batch".into());
            break;
        }
        if let Some(e) = batch
            .transfers
            .iter()
            .find_map(|tr| apply(&mut books, tr).err())
        {
            report.first_bad = bad(format!("a transfer cannot be applied: {e}"));
            break;
        }
        if let Err(e) = books.check_conservation() {
            report.first_bad = bad(e.to_string());
            break;
        }
        report.ticks += 1;
        report.transfers += batch.transfers.len() as u64;
        report.head = Some(hex(&expect));
        prev = expect;
    }
    report.minted = books.minted();
    if report.first_bad.is_none() {
        // The materialised balances must equal the replay.
        let mut stmt = conn
            .prepare("SELECT account, balance FROM balances ORDER BY account")
            .map_err(sql(db))?;
        let mut rows = stmt.query([]).map_err(sql(db))?;
        while let Some(r) = rows.next().map_err(sql(db))? {
            let name: String = r.get(0).map_err(sql(db))?;
            let stored: i64 = r.get(1).map_err(sql(db))?;
            let expected = parse_account(&name).map(|a| signed_balance(&books, a));
            if expected != Some(stored) {
                report.first_bad = Some(BadEntry {
                    tick: report.ticks,
                    problem: format!(
                        "stored balance of {name} is {stored}, the replay gives {expected:?}"
                    ),
                });
                break;
            }
        }
    }
    Ok(report)
}

/// One transfer, for `maxwell ledger export`.
#[derive(Debug, Clone, Serialize)]
pub struct ExportRow {
    /// The tick.
    pub tick: u64,
    /// Its position in the tick.
    pub seq: u64,
    /// Debited account.
    pub from: String,
    /// Credited account.
    pub to: String,
    /// Micro-JOULE.
    pub amount: u64,
    /// What for.
    pub kind: String,
}

/// Every transfer in order, read-only.
pub fn export(db: &Path) -> Result<Vec<ExportRow>, LedgerError> {
    let conn = Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(sql(db))?;
    let mut stmt = conn
        .prepare(
            "SELECT tick, seq, from_account, to_account, amount, kind FROM transfers \
             ORDER BY tick, seq",
        )
        .map_err(sql(db))?;
    let rows = stmt
        .query_map([], |r| {
            Ok(ExportRow {
                tick: r.get::<_, i64>(0)? as u64,
                seq: r.get::<_, i64>(1)? as u64,
                from: r.get(2)?,
                to: r.get(3)?,
                amount: r.get::<_, i64>(4)? as u64,
                kind: r.get(5)?,
            })
        })
        .map_err(sql(db))?;
    rows.collect::<Result<Vec<_>, _>>().map_err(sql(db))
}

/// Balances of every account that ever moved, read-only.
pub fn balances(db: &Path) -> Result<Vec<(String, i64)>, LedgerError> {
    let conn = Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(sql(db))?;
    let mut stmt = conn
        .prepare("SELECT account, balance FROM balances ORDER BY account")
        .map_err(sql(db))?;
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(sql(db))?;
    rows.collect::<Result<Vec<_>, _>>().map_err(sql(db))
}

#[cfg(test)]
mod tests;
