//! Useful work that can be audited: counting primes in a range.
//!
//! A scientist claims "primes in `[start, end)`: count `c`, digest `d`". The digest folds every
//! prime in the range, in order, through a 64-bit mixing function, so a claim can only be right
//! if the primes were actually found; an auditor recomputes the range with the same segmented
//! sieve and compares. The digest is not a cryptographic commitment: it makes a guess
//! improbable, not impossible, which is what probabilistic audit needs.

use serde::{Deserialize, Serialize};

/// A claim of useful work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrimeClaim {
    /// First number of the range.
    pub start: u64,
    /// One past the last number.
    pub end: u64,
    /// Primes found in the range.
    pub count: u64,
    /// Digest of those primes.
    pub digest: u64,
}

/// The largest range one claim may cover: audits recompute claims, so a claim must stay cheap to
/// check.
pub const MAX_CLAIM_SPAN: u64 = 1 << 24;

/// Numbers in one unit of work near [`FIRST`]. Further out a number costs more to sieve (more
/// base primes to cross off with), so a unit there holds fewer numbers: a unit is a fixed amount
/// of sieve work, a gas, and bounties paid per unit pay the same for the same work wherever it
/// lies (see [`cost_ppm`]). A bounty per prime paid less and less as primes thin out; a bounty per
/// number paid less and less per CPU-second as the scientists climbed.
pub const UNIT: u64 = 1024;

/// Numbers in one lease of work, the range a scientist sieves and claims at a time.
pub const RANGE: u64 = 1 << 18;

/// Where the dispenser hands out its first range.
pub const FIRST: u64 = 1_000_000_000;

/// Leases one agent may hold unclaimed; handing out one more forfeits its oldest.
pub const MAX_LEASES: usize = 64;

/// What sieving a number near `n` costs, relative to a number near [`FIRST`], in parts per
/// million: the built-in scientist's (`agents/wasm/scientist.wat`) measured cost curve, per
/// number, fastest of five runs of 600 leases at each point (`maxwell bench work` measures it and
/// checks that a unit then costs the same everywhere). The cost grows with the number of base
/// primes below sqrt(n), each crossed off with once per lease (a division, a few marks);
/// past 2^40 the scientist's table of base primes ends and it walks every odd base number, so
/// beyond the last point the cost is extrapolated as sqrt(n).
pub const COST_CURVE: [(u64, u64); 12] = [
    (1_000_000_000, 1_000_000),
    (3_000_000_000, 1_030_000),
    (10_000_000_000, 1_090_000),
    (30_000_000_000, 1_170_000),
    (100_000_000_000, 1_330_000),
    (300_000_000_000, 1_670_000),
    (600_000_000_000, 2_060_000),
    (1_100_000_000_000, 2_320_000),
    (1_500_000_000_000, 3_070_000),
    (2_000_000_000_000, 4_140_000),
    (3_000_000_000_000, 5_460_000),
    (10_000_000_000_000, 12_400_000),
];

/// log2(x) in 1/256ths, the mantissa taken as linear: exact at powers of two, monotone, integer.
fn log2_q8(x: u64) -> u64 {
    let x = x.max(1);
    let e = x.ilog2();
    let frac = if e >= 8 {
        (x >> (e - 8)) & 0xFF
    } else {
        (x << (8 - e)) & 0xFF
    };
    u64::from(e) * 256 + frac
}

/// The cost of sieving a number near `n`, relative to one near [`FIRST`], in ppm
/// ([`COST_CURVE`] interpolated in log2(n); flat below the first point, as sqrt(n) past the last).
pub fn cost_ppm(n: u64) -> u64 {
    let (first, last) = (COST_CURVE[0], COST_CURVE[COST_CURVE.len() - 1]);
    if n <= first.0 {
        return first.1;
    }
    if n > last.0 {
        // sqrt(n / last) in 1/1024ths.
        let r = (u128::from(n) << 20) / u128::from(last.0);
        let root = r.isqrt();
        return u64::try_from(u128::from(last.1) * root / 1024).unwrap_or(u64::MAX);
    }
    let x = log2_q8(n);
    for w in COST_CURVE.windows(2) {
        let ((a, ca), (b, cb)) = (w[0], w[1]);
        if n <= b {
            let (xa, xb) = (log2_q8(a), log2_q8(b));
            if xb <= xa {
                return cb;
            }
            let t = x.clamp(xa, xb) - xa;
            return ca + (cb.saturating_sub(ca)) * t / (xb - xa);
        }
    }
    last.1
}

/// Units of work in `[start, end)`: its numbers, weighted by what they cost to sieve there
/// ([`cost_ppm`] at `end`), in units of [`UNIT`] numbers near [`FIRST`].
pub fn units(start: u64, end: u64) -> u64 {
    let numbers = u128::from(end.saturating_sub(start));
    let weighted = numbers * u128::from(cost_ppm(end)) / (u128::from(UNIT) * 1_000_000);
    u64::try_from(weighted).unwrap_or(u64::MAX)
}

/// Why a claim was not accepted as useful work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "kebab-case")]
pub enum LeaseError {
    /// Nobody was handed this range (or the agent's lease on it was forfeited).
    #[error("the range [{0}, {1}) was not leased to this agent; ask the host for work")]
    NotLeased(u64, u64),
}

/// Hands out disjoint ranges of work and accepts claims only for ranges it handed to the
/// claimant: work never collides (no two agents hold the same range), never runs out (2^63
/// numbers), and cannot be reserved or blocked (a claim of a range nobody leased to you is
/// refused, whatever its width). Pure: the driver moves leases to agents and claims back.
///
/// Ranges are `[FIRST + i * RANGE, FIRST + (i + 1) * RANGE)` in order, so all agents work in
/// the same neighbourhood and a number costs the same to sieve for everyone at any time.
#[derive(Debug, Clone, Default)]
pub struct Dispenser {
    next: u64,
    /// Lease start -> holder.
    leases: std::collections::BTreeMap<u64, u32>,
    /// Holder -> its unclaimed leases, oldest first.
    held: std::collections::BTreeMap<u32, std::collections::VecDeque<u64>>,
}

impl Dispenser {
    /// A dispenser whose first range starts at or after `after` (the end of the highest range
    /// claimed before a restart), aligned to the range grid.
    pub fn resuming_after(after: u64) -> Dispenser {
        let i = after.saturating_sub(FIRST).div_ceil(RANGE);
        Dispenser {
            next: i,
            ..Dispenser::default()
        }
    }

    /// Leases the next range to `holder`. At most [`MAX_LEASES`] stay unclaimed per holder:
    /// beyond that the holder's oldest lease is forfeited (it was taken and never claimed).
    pub fn lease(&mut self, holder: u32) -> (u64, u64) {
        let start = FIRST.saturating_add(self.next.saturating_mul(RANGE));
        self.next += 1;
        let q = self.held.entry(holder).or_default();
        q.push_back(start);
        if q.len() > MAX_LEASES
            && let Some(old) = q.pop_front()
        {
            self.leases.remove(&old);
        }
        self.leases.insert(start, holder);
        (start, start.saturating_add(RANGE))
    }

    /// Accepts `holder`'s claim of `[start, end)` if it is exactly a range leased to it; the
    /// lease is used up.
    pub fn redeem(&mut self, holder: u32, start: u64, end: u64) -> Result<(), LeaseError> {
        if end != start.saturating_add(RANGE) || self.leases.get(&start) != Some(&holder) {
            return Err(LeaseError::NotLeased(start, end));
        }
        self.leases.remove(&start);
        if let Some(q) = self.held.get_mut(&holder) {
            q.retain(|&s| s != start);
        }
        Ok(())
    }

    /// Forfeits every lease `holder` still has (it died).
    pub fn release(&mut self, holder: u32) {
        for s in self.held.remove(&holder).unwrap_or_default() {
            self.leases.remove(&s);
        }
    }

    /// Leases outstanding, over all holders.
    pub fn outstanding(&self) -> usize {
        self.leases.len()
    }

    /// Where the next range starts.
    pub fn next_start(&self) -> u64 {
        FIRST.saturating_add(self.next.saturating_mul(RANGE))
    }
}

fn mix(mut h: u64, p: u64) -> u64 {
    // A splitmix64 finaliser over the running state and the prime.
    h ^= p.wrapping_add(0x9E37_79B9_7F4A_7C15);
    h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    h ^ (h >> 31)
}

/// Small primes up to and including `limit`, by the sieve of Eratosthenes.
fn base_primes(limit: u64) -> Vec<u64> {
    let n = limit as usize + 1;
    let mut composite = vec![false; n.max(2)];
    let mut out = Vec::new();
    for i in 2..n {
        if !composite[i] {
            out.push(i as u64);
            let mut j = i * i;
            while j < n {
                composite[j] = true;
                j += i;
            }
        }
    }
    out
}

/// A segmented sieve that keeps its base primes and its buffer between ranges, and marks odd
/// numbers only. Recomputing the base primes below sqrt(end) for every range was most of an
/// audit's cost (and of the experiment's verification, which rechecks every claim of an arm):
/// keep one per thread that sieves many ranges. Same count and digest as [`sieve`].
#[derive(Debug, Clone, Default)]
pub struct Sieve {
    /// Odd primes up to `limit`, ascending.
    odd_primes: Vec<u64>,
    limit: u64,
    marks: Vec<bool>,
}

impl Sieve {
    /// An empty sieve; base primes are computed on first use, as far as the ranges need.
    pub fn new() -> Sieve {
        Sieve::default()
    }

    fn ensure(&mut self, root: u64) {
        if root <= self.limit {
            return;
        }
        // Twice what is asked for, so a climbing caller recomputes only now and then; never past
        // sqrt(2^64), the last base prime any u64 range needs.
        let limit = root.saturating_mul(2).min(u64::from(u32::MAX));
        self.odd_primes = base_primes(limit).into_iter().filter(|&p| p > 2).collect();
        self.limit = limit;
    }

    /// Counts and digests the primes in `[start, end)`. Ranges wider than [`MAX_CLAIM_SPAN`]
    /// are cut to that span.
    pub fn sieve(&mut self, start: u64, end: u64) -> PrimeClaim {
        let end = end.min(start.saturating_add(MAX_CLAIM_SPAN));
        let mut claim = PrimeClaim {
            start,
            end,
            count: 0,
            digest: 0,
        };
        if end <= start || end <= 2 {
            return claim;
        }
        let lo = start.max(2);
        let (mut count, mut digest) = (0u64, 0u64);
        if lo == 2 {
            count = 1;
            digest = mix(digest, 2);
        }
        // The odd numbers o0, o0 + 2, ... below end; mark i stands for o0 + 2i.
        let o0 = lo | 1;
        if o0 < end {
            let root = (end - 1).isqrt();
            self.ensure(root);
            let n = usize::try_from((end - o0).div_ceil(2)).unwrap_or(usize::MAX);
            self.marks.clear();
            self.marks.resize(n, false);
            for &p in &self.odd_primes {
                if p > root {
                    break;
                }
                // The first odd multiple of p at or past both p^2 and o0.
                let mut m = (p * p).max(o0.div_ceil(p).saturating_mul(p));
                if m % 2 == 0 {
                    m = m.saturating_add(p);
                }
                if m >= end {
                    continue;
                }
                let step = usize::try_from(p).unwrap_or(usize::MAX);
                let mut i = usize::try_from((m - o0) / 2).unwrap_or(usize::MAX);
                while i < n {
                    self.marks[i] = true;
                    i += step;
                }
            }
            for (i, &c) in self.marks.iter().enumerate() {
                if !c {
                    count += 1;
                    digest = mix(digest, o0 + 2 * i as u64);
                }
            }
        }
        claim.count = count;
        claim.digest = digest;
        claim
    }

    /// Recomputes a claim. True when count and digest match the range exactly.
    pub fn verify(&mut self, claim: &PrimeClaim) -> bool {
        claim.end > claim.start
            && claim.end - claim.start <= MAX_CLAIM_SPAN
            && self.sieve(claim.start, claim.end) == *claim
    }
}

/// Counts and digests the primes in `[start, end)` with a segmented sieve. Ranges wider than
/// [`MAX_CLAIM_SPAN`] are cut to that span. One range: for many, keep a [`Sieve`].
pub fn sieve(start: u64, end: u64) -> PrimeClaim {
    Sieve::new().sieve(start, end)
}

/// Recomputes a claim. True when count and digest match the range exactly. One claim: for
/// many, keep a [`Sieve`].
pub fn verify(claim: &PrimeClaim) -> bool {
    Sieve::new().verify(claim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_disjoint_and_only_their_holder_can_claim_them() {
        let mut d = Dispenser::default();
        let a = d.lease(1);
        let b = d.lease(2);
        assert_eq!(a, (FIRST, FIRST + RANGE));
        assert_eq!(b.0, a.1);
        // Someone else's lease, a wider range, a range nobody leased: refused.
        assert!(d.redeem(1, b.0, b.1).is_err());
        assert!(d.redeem(1, a.0, a.1 + 1).is_err());
        assert!(d.redeem(1, 5, 5 + RANGE).is_err());
        assert!(d.redeem(1, a.0, a.1).is_ok());
        // Once.
        assert!(d.redeem(1, a.0, a.1).is_err());
        d.release(2);
        assert!(d.redeem(2, b.0, b.1).is_err());
        assert_eq!(d.outstanding(), 0);
    }

    #[test]
    fn a_hoarder_forfeits_its_oldest_leases() {
        let mut d = Dispenser::default();
        let first = d.lease(7);
        for _ in 0..MAX_LEASES {
            d.lease(7);
        }
        assert_eq!(d.outstanding(), MAX_LEASES);
        assert!(d.redeem(7, first.0, first.1).is_err());
    }

    /// The plain segmented sieve over every number, fresh base primes each time: the reference.
    fn reference(start: u64, end: u64) -> PrimeClaim {
        let end = end.min(start.saturating_add(MAX_CLAIM_SPAN));
        let (lo, mut count, mut digest) = (start.max(2), 0, 0);
        let mut composite = vec![false; end.saturating_sub(lo) as usize];
        if end > 2 {
            for p in base_primes((end - 1).isqrt()) {
                let mut m = (p * p).max(lo.div_ceil(p) * p);
                while m < end {
                    composite[(m - lo) as usize] = true;
                    m += p;
                }
            }
        }
        for (i, c) in composite.iter().enumerate() {
            if !c {
                count += 1;
                digest = mix(digest, lo + i as u64);
            }
        }
        PrimeClaim {
            start,
            end,
            count,
            digest,
        }
    }

    #[test]
    fn the_kept_sieve_agrees_with_the_plain_one() {
        let mut s = Sieve::new();
        let ranges = [
            (0, 0),
            (0, 1),
            (0, 2),
            (0, 3),
            (1, 2),
            (2, 3),
            (3, 4),
            (4, 5),
            (0, 100),
            (1, 100),
            (2, 100),
            (9, 10),
            (24, 26),
            (25, 26),
            (99, 100),
            (1_000_000_000, 1_000_262_144),
            (4_294_967_000, 4_294_968_000),
            (1_000_000_000_000, 1_000_000_100_000),
            (FIRST, FIRST + 1),
            (FIRST + 7, FIRST + 300),
            (1 << 40, (1 << 40) + 10_000),
        ];
        for &(a, b) in &ranges {
            assert_eq!(s.sieve(a, b), reference(a, b), "[{a}, {b})");
        }
        // Descending after ascending: the kept base primes still cover small ranges.
        assert_eq!(s.sieve(10, 1000), reference(10, 1000));
        assert_eq!(s.sieve(10, 1000).count, 164);
        assert_eq!(s.sieve(0, 100).count, 25);
        assert!(s.verify(&reference(FIRST, FIRST + RANGE)));
        let mut bad = reference(FIRST, FIRST + RANGE);
        bad.count += 1;
        assert!(!s.verify(&bad));
    }

    #[test]
    fn a_unit_is_a_fixed_amount_of_work_wherever_it_lies() {
        // A lease near the first one is 256 units; further out the same numbers are worth more.
        assert_eq!(units(FIRST, FIRST + RANGE), RANGE / UNIT);
        assert_eq!(units(0, RANGE), RANGE / UNIT);
        let at = |n: u64| units(n - RANGE, n);
        assert_eq!(at(100_000_000_000), 340);
        // The curve's points, and monotone between and beyond them.
        for (n, c) in COST_CURVE {
            assert_eq!(cost_ppm(n), c, "at {n}");
        }
        let mut prev = 0;
        let mut n = FIRST / 2;
        while n < u64::MAX / 2 {
            let c = cost_ppm(n);
            assert!(c >= prev, "cost falls at {n}: {c} < {prev}");
            prev = c;
            n += n / 7;
        }
        // Past the curve as sqrt(n): four times as far, twice the cost.
        assert_eq!(cost_ppm(40_000_000_000_000), 2 * 12_400_000);
        // Never overflows.
        assert!(units(0, u64::MAX) > 0);
    }

    #[test]
    fn resuming_starts_past_what_was_claimed() {
        let d = Dispenser::resuming_after(FIRST + 3 * RANGE + 1);
        assert_eq!(d.next_start(), FIRST + 4 * RANGE);
        assert_eq!(Dispenser::resuming_after(0).next_start(), FIRST);
    }

    fn naive_count(start: u64, end: u64) -> u64 {
        (start..end)
            .filter(|&n| n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| n % d != 0))
            .count() as u64
    }

    #[test]
    fn sieve_matches_trial_division() {
        for (s, e) in [
            (0, 100),
            (1, 2),
            (2, 3),
            (90, 200),
            (1_000_000, 1_002_000),
            (7, 7),
        ] {
            assert_eq!(sieve(s, e).count, naive_count(s, e), "[{s}, {e})");
        }
        assert_eq!(sieve(0, 100).count, 25);
    }

    #[test]
    fn honest_claims_verify_and_forgeries_do_not() {
        let honest = sieve(1_000_000, 1_004_096);
        assert!(verify(&honest));
        assert!(!verify(&PrimeClaim {
            count: honest.count + 1,
            ..honest
        }));
        assert!(!verify(&PrimeClaim {
            digest: honest.digest ^ 1,
            ..honest
        }));
        assert!(!verify(&PrimeClaim {
            start: 5,
            end: 5,
            count: 0,
            digest: 0
        }));
        assert!(!verify(&PrimeClaim {
            start: 0,
            end: MAX_CLAIM_SPAN + 1,
            count: 0,
            digest: 0
        }));
    }
}
