//! The liar: claims ranges it never computed, with made-up counts and digests, and bids like
//! an honest scientist.
//!
//! Tuning (`--name N` or `MAXWELL_<NAME>`): `width` (default 65536), `start` (first k, default
//! 0), `ranges` (default unlimited), `share` (percent of the balance bid, default 5), `nap`
//! (milliseconds between claims, default 5).

mod common;

use std::thread;
use std::time::Duration;

use common::{Flow, Host, tuning};
use maxwell_core::work::{MAX_CLAIM_SPAN, PrimeClaim};

fn main() {
    let width = tuning("width", 1 << 16).clamp(2, MAX_CLAIM_SPAN);
    let first = tuning("start", 0);
    let ranges = tuning("ranges", u64::MAX);
    let share = tuning("share", 5).min(100);
    let nap = Duration::from_millis(tuning("nap", 5));
    let mut host = Host::connect("liar");
    let mut rng = 0x9E37_79B9_7F4A_7C15_u64 ^ u64::from(std::process::id());
    let mut k = first;
    while k - first < ranges {
        let Some(start) = k.checked_mul(width) else {
            break;
        };
        // xorshift: a plausible count (about W / ln W primes) and a random digest.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let claim = PrimeClaim {
            start,
            end: start + width,
            count: width / 11 + rng % (width / 50 + 1),
            digest: rng,
        };
        if let Flow::Closed = host.call(|c| c.claim(claim)) {
            return;
        }
        if !host.bid_share(share) {
            return;
        }
        k += 1;
        thread::sleep(nap);
    }
}
