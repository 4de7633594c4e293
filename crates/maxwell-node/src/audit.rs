//! Audits off the tick thread: a claim drawn for audit is recomputed by a worker thread, and
//! its verdict reaches the market at the first tick after it is ready. Recomputing a lease
//! takes about a millisecond (and more as the numbers grow), several can be drawn in one tick,
//! and on the tick thread they were most of the tick's work and its lateness. The market holds
//! an audited claim's bounty until the verdict arrives, so a late verdict changes nothing but
//! when the bounty is paid. Verdicts come back in the order the audits were asked for (one
//! worker, one queue); the queue's length is reported so that a backlog is seen.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};
use std::thread::JoinHandle;

use maxwell_core::work::{PrimeClaim, Sieve};
use maxwell_core::{ClaimId, Verdict};

/// The audit worker and its queues.
pub struct Auditor {
    to_worker: Option<Sender<(ClaimId, PrimeClaim)>>,
    from_worker: Receiver<Verdict>,
    worker: Option<JoinHandle<()>>,
    queued: usize,
    /// Set when the node goes away: the worker drops its backlog instead of working it off
    /// (a stop must not wait for queued recomputations).
    stop: Arc<AtomicBool>,
}

/// Why the auditor stopped.
#[derive(Debug, thiserror::Error)]
#[error("the audit worker thread is gone ({0}); audits can no longer be answered")]
pub struct AuditorGone(&'static str);

impl Auditor {
    /// Starts the worker thread (`maxwell-audit`).
    pub fn start() -> std::io::Result<Auditor> {
        let (to_worker, requests) = channel::<(ClaimId, PrimeClaim)>();
        let (verdicts, from_worker) = channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let worker = std::thread::Builder::new()
            .name("maxwell-audit".into())
            .spawn(move || {
                // Audits are background work: they yield to the tick thread as agents do.
                if let Err(e) =
                    maxwell_sandbox::yield_to_the_tick_thread(maxwell_sandbox::AGENT_NICE)
                {
                    eprintln!("maxwell: could not lower the audit thread's priority: {e}");
                }
                let mut sieve = Sieve::new();
                for (claim, c) in requests {
                    if stopping.load(Ordering::Acquire) {
                        return;
                    }
                    let passed = sieve.verify(&c);
                    if verdicts.send(Verdict { claim, passed }).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Auditor {
            to_worker: Some(to_worker),
            from_worker,
            worker: Some(worker),
            queued: 0,
            stop,
        })
    }

    /// Queues a claim for recomputation.
    pub fn submit(&mut self, claim: ClaimId, c: PrimeClaim) -> Result<(), AuditorGone> {
        let tx = self
            .to_worker
            .as_ref()
            .ok_or(AuditorGone("it was stopped"))?;
        tx.send((claim, c))
            .map_err(|_| AuditorGone("it stopped on its own"))?;
        self.queued += 1;
        Ok(())
    }

    /// The verdicts ready now, in the order their audits were asked for; never waits.
    pub fn ready(&mut self) -> Result<Vec<Verdict>, AuditorGone> {
        let mut out = Vec::new();
        loop {
            match self.from_worker.try_recv() {
                Ok(v) => out.push(v),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) if self.queued == out.len() => break,
                Err(TryRecvError::Disconnected) => {
                    return Err(AuditorGone("it stopped with audits unanswered"));
                }
            }
        }
        self.queued -= out.len();
        Ok(out)
    }

    /// Audits asked for and not answered yet.
    pub fn backlog(&self) -> usize {
        self.queued
    }
}

impl Drop for Auditor {
    fn drop(&mut self) {
        // The worker ends after the audit in hand; the unanswered ones die with the node (their
        // bounties stay held, as after any crash before a verdict).
        self.stop.store(true, Ordering::Release);
        self.to_worker = None;
        if let Some(w) = self.worker.take()
            && w.join().is_err()
        {
            eprintln!("maxwell: the audit worker thread panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use maxwell_core::work::sieve;

    use super::*;

    #[test]
    fn verdicts_come_back_in_order_and_a_lie_fails() {
        let mut a = Auditor::start().unwrap();
        let honest = sieve(1_000_000_000, 1_000_262_144);
        let lie = PrimeClaim {
            count: honest.count + 1,
            ..honest
        };
        for i in 0..6 {
            a.submit(ClaimId(i), if i == 3 { lie } else { honest })
                .unwrap();
        }
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while got.len() < 6 && Instant::now() < deadline {
            got.extend(a.ready().unwrap());
            std::thread::sleep(Duration::from_millis(1));
        }
        let ids: Vec<u64> = got.iter().map(|v| v.claim.0).collect();
        assert_eq!(ids, vec![0, 1, 2, 3, 4, 5]);
        let passed: Vec<bool> = got.iter().map(|v| v.passed).collect();
        assert_eq!(passed, vec![true, true, true, false, true, true]);
        assert_eq!(a.backlog(), 0);
    }
}
