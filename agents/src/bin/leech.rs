//! The leech: burns CPU on hashing and churns memory (allocate, fill, hash, free), claims
//! nothing, and bids most of its balance.
//!
//! Tuning (`--name N` or `MAXWELL_<NAME>`): `churn` (MiB allocated and freed per round,
//! default 8), `share` (percent of the balance bid, default 95), `rounds` (default unlimited).

mod common;

use std::hint::black_box;

use common::{Flow, Host, tuning};

fn mix(mut h: u64) -> u64 {
    h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    h ^ (h >> 31)
}

fn main() {
    let churn = (tuning("churn", 8) << 20) as usize;
    let share = tuning("share", 95).min(100);
    let rounds = tuning("rounds", u64::MAX);
    let mut host = Host::connect("leech");
    let mut h = 0x1234_5678_u64;
    for round in 0..rounds {
        // Allocate and fill (every page touched), hash it, free it.
        let mut block = vec![0u64; churn / 8];
        for (i, w) in block.iter_mut().enumerate() {
            h = mix(h ^ i as u64);
            *w = h;
        }
        h = block.iter().fold(h, |acc, w| mix(acc ^ w));
        drop(black_box(block));
        if !host.bid_share(share) {
            return;
        }
        if round % 64 == 0
            && let Flow::Closed = host.call(|c| c.log(&format!("leech: hash {h:016x}")))
        {
            return;
        }
    }
    black_box(h);
}
