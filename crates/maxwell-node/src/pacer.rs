//! The tick clock every driver of a node uses (the daemon and the experiment's arms): ticks
//! are due every quantum from the start; a tick that starts late is reported as late; after a
//! stall the missed ticks are skipped, not run back to back (each would bill a quantum of rent
//! and clear an auction for a quantum nobody ran). This is the only place that reads the clock
//! for the tick loop; the node itself is given `now`.

use std::time::{Duration, Instant};

use maxwell_core::Nanos;

/// One due tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// Time since the pacer started (the node's `now`).
    pub now: Nanos,
    /// How late the tick started, against its deadline.
    pub late: Duration,
    /// Ticks skipped before this one because the previous tick overran.
    pub skipped: u64,
}

/// Paces ticks every `quantum` from its creation.
#[derive(Debug, Clone)]
pub struct Pacer {
    start: Instant,
    quantum: Duration,
    /// The number of the next tick (the first due tick is 1, one quantum after the start).
    next: u64,
}

impl Pacer {
    /// Starts the clock now.
    pub fn new(quantum: Duration) -> Pacer {
        Pacer {
            start: Instant::now(),
            quantum: quantum.max(Duration::from_micros(1)),
            next: 1,
        }
    }

    /// Time since the start.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// The node's `now`, without waiting.
    pub fn now(&self) -> Nanos {
        Nanos(u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    /// Sleeps until the next tick is due and returns it. If that tick's deadline is more than a
    /// quantum past (the last tick overran), the ticks missed are skipped: the next deadline is
    /// the latest one already past.
    pub fn wait(&mut self) -> Due {
        let q = self.quantum.as_nanos().max(1);
        let elapsed = self.start.elapsed().as_nanos();
        let behind = u64::try_from(elapsed / q).unwrap_or(u64::MAX);
        let mut skipped = 0;
        if behind > self.next {
            skipped = behind - self.next;
            self.next = behind;
        }
        let deadline = self.deadline(self.next);
        if let Some(wait) = deadline.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let began = Instant::now();
        self.next += 1;
        Due {
            now: Nanos(u64::try_from((began - self.start).as_nanos()).unwrap_or(u64::MAX)),
            late: began.saturating_duration_since(deadline),
            skipped,
        }
    }

    fn deadline(&self, n: u64) -> Instant {
        let nanos = u64::try_from(self.quantum.as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_mul(n);
        self.start + Duration::from_nanos(nanos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stall_skips_the_missed_ticks_instead_of_running_them() {
        let mut p = Pacer::new(Duration::from_millis(2));
        let first = p.wait();
        assert_eq!(first.skipped, 0);
        std::thread::sleep(Duration::from_millis(20));
        let after = p.wait();
        assert!(after.skipped >= 5, "{after:?}");
        assert!(after.now.0 >= 20_000_000);
        let next = p.wait();
        assert!(next.now.0 > after.now.0);
    }
}
