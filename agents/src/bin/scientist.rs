//! The scientist: honest, useful work. It asks the host for the next range leased to it, sieves
//! it with the segmented sieve, claims it with its count and digest (an audit recomputes them),
//! and bids its value: net income per quantum run over its last 128 to 256
//! (`maxwell_agent::ValueMeter`).
//!
//! Tuning (`--name N` or `MAXWELL_<NAME>`): `ranges` (how many, default unlimited).

mod common;

use std::time::Duration;

use common::{Flow, Host, tuning};
use maxwell_agent::ValueMeter;
use maxwell_core::work::Sieve;

fn main() {
    let ranges = tuning("ranges", u64::MAX);
    let mut host = Host::connect("scientist");
    let _ = host.call(|c| c.log("scientist: sieving leased ranges"));
    let mut done = 0u64;
    let mut meter = ValueMeter::default();
    let mut sieve = Sieve::new();
    while done < ranges {
        let (start, end) = match host.call(|c| c.work()) {
            Flow::Done(Some(r)) => r,
            // None queued yet (the host tops up every quantum), or a transient error.
            Flow::Done(None) | Flow::Skipped => {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            Flow::Closed => return,
        };
        let claim = sieve.sieve(start, end);
        if let Flow::Closed = host.call(|c| c.claim(claim)) {
            return;
        }
        done += 1;
        let bid = match host.call(|c| Ok((c.income()?, c.balance()?))) {
            Flow::Done(((income, quanta), balance)) => meter.observe(income, quanta, balance),
            Flow::Skipped => None,
            Flow::Closed => return,
        };
        if let Some(price) = bid
            && let Flow::Closed = host.call(|c| c.bid(price))
        {
            return;
        }
    }
    let _ = host.call(|c| c.log("scientist: done"));
}
