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

fn isqrt(n: u64) -> u64 {
    let mut r = (n as f64).sqrt() as u64;
    while r.saturating_mul(r) > n {
        r -= 1;
    }
    while (r + 1).saturating_mul(r + 1) <= n {
        r += 1;
    }
    r
}

/// Counts and digests the primes in `[start, end)` with a segmented sieve. Ranges wider than
/// [`MAX_CLAIM_SPAN`] are cut to that span.
pub fn sieve(start: u64, end: u64) -> PrimeClaim {
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
    let len = (end - lo) as usize;
    let mut composite = vec![false; len];
    for p in base_primes(isqrt(end - 1)) {
        let first = (p * p).max(lo.div_ceil(p) * p);
        let mut m = first;
        while m < end {
            composite[(m - lo) as usize] = true;
            m += p;
        }
    }
    let mut digest = 0u64;
    let mut count = 0u64;
    for (i, c) in composite.iter().enumerate() {
        if !c {
            count += 1;
            digest = mix(digest, lo + i as u64);
        }
    }
    claim.count = count;
    claim.digest = digest;
    claim
}

/// Recomputes a claim. True when count and digest match the range exactly.
pub fn verify(claim: &PrimeClaim) -> bool {
    claim.end > claim.start
        && claim.end - claim.start <= MAX_CLAIM_SPAN
        && sieve(claim.start, claim.end) == *claim
}

#[cfg(test)]
mod tests {
    use super::*;

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
