//! The roster on disk: `agents.json`, a snapshot (a JSON array of [`Record`]s, index = market
//! id), and `agents.journal`, what changed since, one JSON line each ([`Line`]: a new agent, or
//! a wallet's new funding nonce).
//!
//! The tick thread never waits for the disk: it hands each tick's lines to a syncer thread
//! ([`Journal`]), which appends them and fdatasyncs the file, one sync for the batch, and
//! reports back; what the lines record (an agent's admission, a funding) takes effect at the
//! first tick after the report, so a roster entry and a funding nonce are durable before the
//! market sees them. A batch that cannot be written or synced is cut off the file again and
//! its ops are refused. The journal is folded into the snapshot at start ([`open`]) and at a
//! clean stop ([`compact`]); a torn last line (a crash while it was written: nothing it held
//! was acknowledged) is ignored and cut off at load, and said so in the log.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use maxwell_core::Tokens;

use crate::api::ProgramRef;

/// One agent of the roster, as saved in `agents.json` (index = market id). Its name and owner
/// are shared (`Arc<str>`) with the name index and the published list, and owners between the
/// agents of one owner, so that a frozen agent costs the daemon as few bytes as can be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Name.
    #[serde(with = "arc_str")]
    pub name: Arc<str>,
    /// Program, shared between the agents that run the same one.
    #[serde(with = "arc_program")]
    pub program: Arc<ProgramRef>,
    /// Owner's public key.
    #[serde(with = "arc_str")]
    pub owner: Arc<str>,
    /// Bid cap.
    pub max_bid: Tokens,
    /// Opening bid.
    pub opening_bid: Tokens,
    /// Memory cap.
    pub memory_max: maxwell_core::Bytes,
    /// Last funding nonce.
    pub nonce: u64,
    /// Syscalls that kill it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_syscalls: Vec<String>,
}

/// A shared string, saved as a plain JSON string.
mod arc_str {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Arc<str>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<str>, D::Error> {
        String::deserialize(d).map(Arc::from)
    }
}

/// A shared program, saved as the plain program.
mod arc_program {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::api::ProgramRef;

    pub fn serialize<S: Serializer>(v: &Arc<ProgramRef>, s: S) -> Result<S::Ok, S::Error> {
        v.as_ref().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<ProgramRef>, D::Error> {
        ProgramRef::deserialize(d).map(Arc::new)
    }
}

/// One line of `agents.journal`, as read back.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Line {
    /// A new agent, with its market id (the roster's length when it was admitted).
    Agent {
        /// Market id.
        id: u32,
        /// Its record.
        record: Record,
    },
    /// A wallet's new last funding nonce.
    Nonce {
        /// Market id.
        id: u32,
        /// The nonce.
        nonce: u64,
    },
}

/// One line of `agents.journal`, as written (borrowing the record): the same JSON as [`Line`].
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Entry<'a> {
    /// See [`Line::Agent`].
    Agent {
        /// Market id.
        id: u32,
        /// Its record.
        record: &'a Record,
    },
    /// See [`Line::Nonce`].
    Nonce {
        /// Market id.
        id: u32,
        /// The nonce.
        nonce: u64,
    },
}

/// The snapshot.
pub fn snapshot_path(data: &Path) -> PathBuf {
    data.join("agents.json")
}

/// The journal.
pub fn journal_path(data: &Path) -> PathBuf {
    data.join("agents.journal")
}

/// Writes a small JSON file atomically (temporary file, fsync, rename, fsync of the directory).
pub(crate) fn save_json<T: Serialize + ?Sized>(
    data: &Path,
    p: &Path,
    value: &T,
) -> std::io::Result<()> {
    let tmp = p.with_extension("json.tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(serde_json::to_string_pretty(value)?.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, p)?;
    File::open(data)?.sync_all()
}

fn read_snapshot(data: &Path) -> anyhow::Result<Vec<Record>> {
    let p = snapshot_path(data);
    match std::fs::read_to_string(&p) {
        Ok(t) => serde_json::from_str(&t).map_err(|e| {
            anyhow::anyhow!(
                "{}: {e}; it is written by the daemon only: restore it from a backup or move \
                 the data directory aside",
                p.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(anyhow::anyhow!("{}: {e}", p.display())),
    }
}

/// What replaying a journal found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Replayed {
    /// Lines applied (including those the snapshot already held).
    lines: usize,
    /// Bytes of whole lines: where a torn tail starts.
    good_len: u64,
    /// Bytes of a torn last line, ignored (0 if none).
    torn: u64,
}

fn is_blank(b: &[u8]) -> bool {
    b.iter().all(|c| c.is_ascii_whitespace() || *c == 0)
}

/// Applies the journal `text` to the snapshot's `records`. Replaying is idempotent (a crash
/// between a compaction's new snapshot and its emptied journal replays lines the snapshot
/// holds already): an agent line for an id the snapshot has must name the same agent, and a
/// nonce only ever grows.
fn replay(records: &mut Vec<Record>, text: &[u8], path: &Path) -> anyhow::Result<Replayed> {
    let mut pos = 0usize;
    let mut n = 0usize;
    let mut lines = 0usize;
    while pos < text.len() {
        n += 1;
        let end = text[pos..]
            .iter()
            .position(|&c| c == b'\n')
            .map_or(text.len(), |i| pos + i);
        let next = (end + 1).min(text.len());
        let line = &text[pos..end];
        if is_blank(line) && !line.contains(&0) {
            pos = next;
            continue;
        }
        let parsed: Line = match serde_json::from_slice(line) {
            Ok(l) => l,
            Err(_) if is_blank(&text[next..]) => {
                return Ok(Replayed {
                    lines,
                    good_len: pos as u64,
                    torn: (text.len() - pos) as u64,
                });
            }
            Err(e) => anyhow::bail!(
                "{} line {n}: {e}, and whole lines follow it: the journal is damaged (not by a \
                 crash, which can only tear the last line); restore the data directory from a \
                 backup",
                path.display()
            ),
        };
        match parsed {
            Line::Agent { id, record } => {
                let i = id as usize;
                if i == records.len() {
                    records.push(record);
                } else if records.get(i).is_some_and(|r| r.name == record.name) {
                    // The snapshot holds it already.
                } else {
                    anyhow::bail!(
                        "{} line {n}: agent {:?} has id {id}, but the roster has {} agents{}: \
                         the journal does not belong to this snapshot; restore the data \
                         directory from a backup",
                        path.display(),
                        record.name,
                        records.len(),
                        records
                            .get(i)
                            .map_or(String::new(), |r| format!(" and {id} is {:?}", r.name))
                    );
                }
            }
            Line::Nonce { id, nonce } => match records.get_mut(id as usize) {
                Some(r) => r.nonce = r.nonce.max(nonce),
                None => anyhow::bail!(
                    "{} line {n}: a nonce for agent {id}, but the roster has {} agents: the \
                     journal does not belong to this snapshot; restore the data directory from \
                     a backup",
                    path.display(),
                    records.len()
                ),
            },
        }
        lines += 1;
        pos = next;
    }
    Ok(Replayed {
        lines,
        good_len: text.len() as u64,
        torn: 0,
    })
}

/// Reads the roster: the snapshot with the journal replayed onto it (a torn last line ignored).
/// Changes nothing on disk.
pub fn load(data: &Path) -> anyhow::Result<Vec<Record>> {
    let mut records = read_snapshot(data)?;
    let jp = journal_path(data);
    let text = read_journal(&jp)?;
    replay(&mut records, &text, &jp)?;
    Ok(records)
}

fn read_journal(jp: &Path) -> anyhow::Result<Vec<u8>> {
    match std::fs::read(jp) {
        Ok(t) => Ok(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(anyhow::anyhow!("{}: {e}", jp.display())),
    }
}

/// Opens the roster for a daemon: reads the snapshot and the journal (a torn last line is
/// logged, ignored and cut off), folds the journal into the snapshot, and starts the syncer on
/// the emptied journal.
pub fn open(data: &Path) -> anyhow::Result<(Vec<Record>, Journal)> {
    let mut records = read_snapshot(data)?;
    let jp = journal_path(data);
    let text = read_journal(&jp)?;
    let r = replay(&mut records, &text, &jp)?;
    if r.torn > 0 {
        tracing::warn!(
            file = %jp.display(),
            bytes = r.torn,
            at = r.good_len,
            "the last line of the roster's journal is torn (the daemon stopped while writing \
             it; nothing it held was acknowledged): ignored and cut off"
        );
        let f = OpenOptions::new().write(true).open(&jp).map_err(|e| {
            anyhow::anyhow!("cannot open {} to cut its torn line: {e}", jp.display())
        })?;
        f.set_len(r.good_len)
            .and_then(|()| f.sync_all())
            .map_err(|e| anyhow::anyhow!("cannot cut the torn line of {}: {e}", jp.display()))?;
    }
    if r.lines > 0 || r.torn > 0 {
        compact(data, records.iter())?;
        tracing::info!(
            lines = r.lines,
            agents = records.len(),
            "folded the roster's journal into {}",
            snapshot_path(data).display()
        );
    }
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&jp)
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", jp.display()))?;
    let journal = Journal::start(file, jp.clone())
        .map_err(|e| anyhow::anyhow!("cannot start the syncer of {}: {e}", jp.display()))?;
    Ok((records, journal))
}

/// A sequence of records, serialized as a JSON array without being collected first.
struct Records<I>(I);

impl<'a, I: Iterator<Item = &'a Record> + Clone> Serialize for Records<I> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.clone())
    }
}

/// Writes `records` as the snapshot (atomically), then empties the journal. A crash in between
/// leaves a journal whose lines the snapshot holds already, which replays to the same roster.
pub fn compact<'a>(
    data: &Path,
    records: impl Iterator<Item = &'a Record> + Clone,
) -> anyhow::Result<()> {
    let sp = snapshot_path(data);
    save_json(data, &sp, &Records(records))
        .map_err(|e| anyhow::anyhow!("cannot save {}: {e}", sp.display()))?;
    let jp = journal_path(data);
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&jp)
        .and_then(|f| {
            f.set_len(0)?;
            f.sync_all()
        })
        .map_err(|e| anyhow::anyhow!("cannot empty {}: {e}", jp.display()))
}

struct Batch {
    seq: u64,
    bytes: Vec<u8>,
}

/// The syncer's word on a batch of lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Synced {
    /// The batch ([`Journal::submit`]'s number).
    pub seq: u64,
    /// Durable, or why not (naming the file); a failed batch is not in the file.
    pub result: Result<(), String>,
}

/// The journal's syncer thread: appends batches of lines and fdatasyncs them, off the tick
/// thread.
pub struct Journal {
    path: PathBuf,
    tx: Option<mpsc::Sender<Batch>>,
    done: mpsc::Receiver<Synced>,
    thread: Option<std::thread::JoinHandle<()>>,
    next: u64,
}

impl Journal {
    /// Starts the syncer on `file` (opened for appending), at `path`.
    pub fn start(file: File, path: PathBuf) -> std::io::Result<Journal> {
        let (tx, rx) = mpsc::channel();
        let (done_tx, done) = mpsc::channel();
        let p = path.clone();
        let thread = std::thread::Builder::new()
            .name("maxwell-roster".into())
            .spawn(move || syncer(file, &p, &rx, &done_tx))?;
        Ok(Journal {
            path,
            tx: Some(tx),
            done,
            thread: Some(thread),
            next: 0,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Hands `entries` to the syncer as one batch (one line each, one sync); returns the
    /// batch's number, which its [`Synced`] report names.
    pub fn submit(&mut self, entries: &[Entry<'_>]) -> Result<u64, String> {
        let mut bytes = Vec::with_capacity(entries.len() * 256);
        for e in entries {
            serde_json::to_writer(&mut bytes, e)
                .map_err(|e| format!("cannot write {}: {e}", self.path.display()))?;
            bytes.push(b'\n');
        }
        let seq = self.next;
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| format!("cannot write {}: it is closed", self.path.display()))?;
        tx.send(Batch { seq, bytes }).map_err(|_| {
            format!(
                "cannot write {}: its syncer thread is gone",
                self.path.display()
            )
        })?;
        self.next += 1;
        Ok(seq)
    }

    /// A report, if one is ready (never waits).
    pub fn poll(&self) -> Option<Synced> {
        match self.done.try_recv() {
            Ok(s) => Some(s),
            Err(mpsc::TryRecvError::Empty) => None,
            Err(mpsc::TryRecvError::Disconnected) => self.gone(),
        }
    }

    /// A report, waiting for it at most `timeout`.
    pub fn wait(&self, timeout: Duration) -> Option<Synced> {
        match self.done.recv_timeout(timeout) {
            Ok(s) => Some(s),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => self.gone(),
        }
    }

    /// The syncer died (it only returns when told to, so it panicked): every batch still
    /// unanswered fails.
    fn gone(&self) -> Option<Synced> {
        Some(Synced {
            seq: self.next.saturating_sub(1),
            result: Err(format!(
                "cannot write {}: its syncer thread is gone",
                self.path.display()
            )),
        })
    }

    /// Stops the syncer once it has written what it was given; reports still unread are lost.
    pub fn close(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!(file = %self.path.display(), "the roster's syncer thread panicked");
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.stop();
    }
}

fn syncer(
    mut file: File,
    path: &Path,
    batches: &mpsc::Receiver<Batch>,
    done: &mpsc::Sender<Synced>,
) {
    // Where the last whole batch ends: a failed batch is cut back to it.
    let mut good = match file.metadata() {
        Ok(m) => Ok(m.len()),
        Err(e) => Err(format!("cannot read the length of {}: {e}", path.display())),
    };
    while let Ok(b) = batches.recv() {
        let result = match &good {
            Err(e) => Err(e.clone()),
            Ok(len) => {
                let len = *len;
                match file.write_all(&b.bytes).and_then(|()| file.sync_data()) {
                    Ok(()) => {
                        good = Ok(len + b.bytes.len() as u64);
                        Ok(())
                    }
                    Err(e) => {
                        let msg = format!("cannot write {}: {e}", path.display());
                        // What may have reached the file of this batch is cut off again, so
                        // that the journal holds only whole, acknowledged batches.
                        if let Err(e2) = file.set_len(len).and_then(|()| file.sync_data()) {
                            good = Err(format!(
                                "{msg}, nor cut it back to its last whole line ({e2}); it takes \
                                 no more writes until the daemon restarts"
                            ));
                        }
                        tracing::error!(error = %msg, "the roster's journal failed; the ops it held are refused");
                        Err(msg)
                    }
                }
            }
        };
        if done.send(Synced { seq: b.seq, result }).is_err() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn rec(name: &str, nonce: u64) -> Record {
        Record {
            name: name.into(),
            program: Arc::new(ProgramRef {
                builtin: Some("idle".into()),
                ..ProgramRef::default()
            }),
            owner: "ab".repeat(32).into(),
            max_bid: Tokens(5),
            opening_bid: Tokens(1),
            memory_max: maxwell_core::Bytes(1 << 20),
            nonce,
            deny_syscalls: Vec::new(),
        }
    }

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("maxwell-roster-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn lines(entries: &[Entry<'_>]) -> String {
        entries
            .iter()
            .map(|e| serde_json::to_string(e).unwrap() + "\n")
            .collect()
    }

    #[test]
    fn the_journal_replays_onto_the_snapshot_and_is_folded_into_it() {
        let d = dir("replay");
        let a = rec("a", 1);
        let b = rec("b", 0);
        save_json(&d, &snapshot_path(&d), std::slice::from_ref(&a)).unwrap();
        // The agent line of `a` is one the snapshot holds already (a crash between a
        // compaction's two steps): replayed, it changes nothing.
        let text = lines(&[
            Entry::Agent { id: 0, record: &a },
            Entry::Agent { id: 1, record: &b },
            Entry::Nonce { id: 1, nonce: 4 },
            Entry::Nonce { id: 0, nonce: 7 },
            Entry::Nonce { id: 0, nonce: 3 },
        ]);
        std::fs::write(journal_path(&d), &text).unwrap();
        let want = vec![rec("a", 7), rec("b", 4)];
        assert_eq!(load(&d).unwrap(), want);
        let (got, mut j) = open(&d).unwrap();
        assert_eq!(got, want);
        assert_eq!(std::fs::read(journal_path(&d)).unwrap().len(), 0);
        assert_eq!(read_snapshot(&d).unwrap(), want);
        // New lines go to the emptied journal, durably, and are reported.
        let c = rec("c", 1);
        let seq = j.submit(&[Entry::Agent { id: 2, record: &c }]).unwrap();
        let s = j.wait(Duration::from_secs(10)).unwrap();
        assert_eq!(
            s,
            Synced {
                seq,
                result: Ok(())
            }
        );
        j.close();
        let mut want = want;
        want.push(c);
        assert_eq!(load(&d).unwrap(), want);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_torn_last_line_is_ignored_and_cut_off_and_damage_before_the_end_is_refused() {
        let d = dir("torn");
        let a = rec("a", 0);
        let whole = lines(&[
            Entry::Agent { id: 0, record: &a },
            Entry::Nonce { id: 0, nonce: 2 },
        ]);
        let torn = format!("{whole}{{\"nonce\":{{\"id\":0,\"no");
        std::fs::write(journal_path(&d), &torn).unwrap();
        assert_eq!(load(&d).unwrap(), vec![rec("a", 2)]);
        // Zeros where a crash left the file longer than what reached it: torn too.
        std::fs::write(journal_path(&d), format!("{whole}\0\0\0\0")).unwrap();
        assert_eq!(load(&d).unwrap(), vec![rec("a", 2)]);
        std::fs::write(journal_path(&d), &torn).unwrap();
        let (got, j) = open(&d).unwrap();
        j.close();
        assert_eq!(got, vec![rec("a", 2)]);
        assert_eq!(std::fs::read(journal_path(&d)).unwrap().len(), 0);
        assert_eq!(read_snapshot(&d).unwrap(), vec![rec("a", 2)]);
        // A bad line with whole lines after it is not a crash's doing.
        let _ = std::fs::remove_file(snapshot_path(&d));
        std::fs::write(
            journal_path(&d),
            format!("{{\"nonce\":{{\"id\":0,\"no\n{whole}"),
        )
        .unwrap();
        let e = load(&d).unwrap_err().to_string();
        assert!(
            e.contains("agents.journal line 1") && e.contains("damaged"),
            "{e}"
        );
        // A line for an agent the roster does not have.
        std::fs::write(journal_path(&d), lines(&[Entry::Nonce { id: 3, nonce: 2 }])).unwrap();
        let e = load(&d).unwrap_err().to_string();
        assert!(e.contains("does not belong"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_batch_that_cannot_be_written_is_refused_naming_the_file() {
        let Ok(full) = OpenOptions::new().append(true).open("/dev/full") else {
            return;
        };
        let mut j = Journal::start(full, PathBuf::from("/dev/full")).unwrap();
        let a = rec("a", 0);
        for _ in 0..2 {
            let seq = j.submit(&[Entry::Agent { id: 0, record: &a }]).unwrap();
            let s = j.wait(Duration::from_secs(10)).unwrap();
            assert_eq!(s.seq, seq);
            let e = s.result.unwrap_err();
            assert!(e.contains("/dev/full"), "{e}");
        }
        j.close();
    }
}
