//! The scientist: honest, useful work. It walks the ranges `[k*W, (k+1)*W)` with the segmented
//! sieve, claims each with its count and digest (an audit recomputes them), and bids a modest
//! share of its balance.
//!
//! Tuning (`--name N` or `MAXWELL_<NAME>`): `width` (W, default 1048576), `start` (first k,
//! default 0), `ranges` (how many, default unlimited), `share` (percent of the balance bid,
//! default 5).

mod common;

use common::{Flow, Host, tuning};
use maxwell_core::work::{MAX_CLAIM_SPAN, sieve};

fn main() {
    let width = tuning("width", 1 << 20).clamp(1, MAX_CLAIM_SPAN);
    let first = tuning("start", 0);
    let ranges = tuning("ranges", u64::MAX);
    let share = tuning("share", 5).min(100);
    let mut host = Host::connect("scientist");
    let _ = host.call(|c| {
        c.log(&format!(
            "scientist: sieving ranges of {width} from k={first}"
        ))
    });
    let mut k = first;
    while k - first < ranges {
        let Some(start) = k.checked_mul(width) else {
            break;
        };
        let claim = sieve(start, start.saturating_add(width));
        if let Flow::Closed = host.call(|c| c.claim(claim)) {
            return;
        }
        if !host.bid_share(share) {
            return;
        }
        k += 1;
    }
    let _ = host.call(|c| c.log("scientist: done"));
}
