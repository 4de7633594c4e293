//! `maxwell bench auction`: the order book against the naive design, in one run.
//!
//! The naive design is the seed sketch's: keep bids in a binary heap and pop winners each tick.
//! Popping destroys the heap, so every tick pushes every standing bid again. The order book keeps
//! bids ranked across ticks and reads only the top `k + 1`.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hint::black_box;
use std::time::Instant;

use clap::Args;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde::Serialize;

use maxwell_core::Tokens;
use maxwell_core::book::{AgentId, Bid, OrderBook};

use crate::{Exit, heap_bytes, write_out};

/// Arguments of `maxwell bench auction`.
#[derive(Debug, Args)]
pub(crate) struct AuctionBenchArgs {
    /// Print the figures as JSON.
    #[arg(long)]
    json: bool,
    /// Slots cleared per tick.
    #[arg(long, default_value_t = 64)]
    slots: u32,
    /// Numbers of standing bids to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1_000usize, 10_000, 100_000, 1_000_000])]
    sizes: Vec<usize>,
}

#[derive(Debug, Serialize)]
struct SizeResult {
    bids: usize,
    /// Median time to clear one tick with the order book.
    clear_us: f64,
    /// Median time to clear one tick the naive way.
    naive_clear_us: f64,
    /// `naive_clear_us / clear_us`.
    speedup: f64,
    /// Median time to change one bid.
    update_us: f64,
    /// Heap bytes per standing bid, book included.
    bytes_per_bid: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    slots: u32,
    sizes: Vec<SizeResult>,
    /// Targets at 1M bids (when measured).
    targets: Targets,
}

#[derive(Debug, Serialize)]
struct Targets {
    clear_us_max: f64,
    speedup_min: f64,
    update_us_max: f64,
    bytes_per_bid_max: f64,
    /// None when 1M bids were not measured.
    met: Option<bool>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Times `rounds` rounds of `per_round` calls and returns the median microseconds per call.
fn time_per_call(rounds: usize, per_round: usize, mut f: impl FnMut()) -> f64 {
    let samples = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..per_round {
                f();
            }
            t.elapsed().as_secs_f64() * 1e6 / per_round as f64
        })
        .collect();
    median(samples)
}

fn measure(n: usize, slots: u32, rng: &mut ChaCha8Rng) -> SizeResult {
    let price = |rng: &mut ChaCha8Rng| Tokens(1 + rng.next_u64() % 1_000_000_000);
    let bids: Vec<Bid> = (0..n)
        .map(|i| Bid {
            agent: AgentId(i as u32),
            price: price(rng),
            placed_at: i as u64,
        })
        .collect();

    let before = heap_bytes();
    let mut book = OrderBook::with_capacity(n);
    for b in &bids {
        // Ids and timestamps are in range: place cannot fail.
        let _ = book.place(*b);
    }
    let bytes_per_bid = heap_bytes().saturating_sub(before) as f64 / n as f64;

    let clear_us = time_per_call(9, 2_000, || {
        black_box(book.clear(black_box(slots), Tokens(0)));
    });

    let mut seq = n as u64;
    let mut targets: Vec<(u32, Tokens)> = (0..20_000)
        .map(|_| ((rng.next_u64() % n as u64) as u32, price(rng)))
        .collect();
    let mut next = 0usize;
    let update_us = time_per_call(9, 20_000, || {
        let (agent, p) = targets[next % targets.len()];
        next += 1;
        seq += 1;
        let _ = black_box(book.place(Bid {
            agent: AgentId(agent),
            price: p,
            placed_at: seq,
        }));
    });
    targets.clear();

    // The naive design: push every standing bid into a heap, pop the winners and the first loser.
    let standing: Vec<Bid> = book.iter().collect();
    let rounds = (2_000_000 / n).clamp(5, 50);
    let naive_clear_us = time_per_call(rounds, 1, || {
        let mut heap = BinaryHeap::new();
        for b in &standing {
            heap.push((b.price, Reverse(b.placed_at), Reverse(b.agent)));
        }
        for _ in 0..=slots {
            black_box(heap.pop());
        }
    });
    SizeResult {
        bids: n,
        clear_us,
        naive_clear_us,
        speedup: naive_clear_us / clear_us,
        update_us,
        bytes_per_bid,
    }
}

/// Runs the benchmark and prints the figures.
pub(crate) fn auction(args: &AuctionBenchArgs) -> anyhow::Result<Exit> {
    if args.sizes.iter().any(|&n| n == 0 || n > u32::MAX as usize) {
        anyhow::bail!("sizes must be between 1 and {}", u32::MAX);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let mut sizes = Vec::new();
    for &n in &args.sizes {
        if !args.json {
            eprintln!("measuring {n} standing bids ...");
        }
        sizes.push(measure(n, args.slots, &mut rng));
    }
    let mut targets = Targets {
        clear_us_max: 100.0,
        speedup_min: 100.0,
        update_us_max: 2.0,
        bytes_per_bid_max: 100.0,
        met: None,
    };
    if let Some(big) = sizes.iter().find(|s| s.bids == 1_000_000) {
        targets.met = Some(
            big.clear_us <= targets.clear_us_max
                && big.speedup >= targets.speedup_min
                && big.update_us <= targets.update_us_max
                && big.bytes_per_bid <= targets.bytes_per_bid_max,
        );
    }
    let report = Report {
        slots: args.slots,
        sizes,
        targets,
    };
    if args.json {
        let mut text = serde_json::to_string_pretty(&report)?;
        text.push('\n');
        write_out(&text)?;
    } else {
        let mut text = format!(
            "Clearing {} slots per tick: order book vs naive heap rebuilt every tick (median of rounds)\n\n\
             {:>9} {:>11} {:>15} {:>9} {:>11} {:>14}\n",
            report.slots,
            "bids",
            "clear_us",
            "naive_clear_us",
            "speedup",
            "update_us",
            "bytes_per_bid"
        );
        for s in &report.sizes {
            text.push_str(&format!(
                "{:>9} {:>11.3} {:>15.1} {:>8.0}x {:>11.3} {:>14.1}\n",
                s.bids, s.clear_us, s.naive_clear_us, s.speedup, s.update_us, s.bytes_per_bid
            ));
        }
        let t = &report.targets;
        text.push_str(&format!(
            "\nTargets at 1M bids: clear <= {} us, >= {}x the naive design, update <= {} us, <= {} bytes per bid: {}\n",
            t.clear_us_max,
            t.speedup_min,
            t.update_us_max,
            t.bytes_per_bid_max,
            match t.met {
                Some(true) => "met",
                Some(false) => "NOT MET",
                None => "not measured (add 1000000 to --sizes)",
            }
        ));
        write_out(&text)?;
    }
    Ok(if report.targets.met == Some(false) {
        Exit::Failed
    } else {
        Exit::Success
    })
}
