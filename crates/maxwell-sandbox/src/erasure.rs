//! Estimating erased bytes by sampling page digests.
//!
//! WASM linear memory never shrinks, so a guest erases information by overwriting it. Hashing
//! all of memory between quanta would cost as much as the guest's own work; instead a
//! [`PageSampler`] keeps the digests of `k` pages drawn uniformly at random (by the host, with a
//! secret seed, so the guest cannot know which pages are watched), and at each observation counts
//! how many of them changed. With `n` pages of [`CHUNK`] bytes, the estimate of erased bytes over
//! the interval is
//!
//! ```text
//! erased = changed_in_sample / k * n * CHUNK
//! ```
//!
//! which is unbiased: each watched page is a uniform draw, so the expected fraction of watched
//! pages that changed equals the fraction of all pages that changed. Details:
//!
//! - A page counts when its content differs from the last observation, unless it was all zeros
//!   then: writing into fresh memory destroys no information and is not taxed.
//! - The unit is the page: overwriting one byte of a page counts the whole page. The estimate is
//!   unbiased for "bytes in changed pages", an upper bound on bytes changed.
//! - After each observation a quarter of the watched pages are replaced by fresh draws, so the
//!   sample wanders over memory; when memory grows, the whole sample is redrawn over the new size.
//! - The relative standard error is about `sqrt((1 - f) / (f * k))` for a changed fraction `f`:
//!   with `k = 64` and a quarter of memory overwritten, about 22% per observation, averaging out
//!   over the many observations of a run.

use maxwell_core::Bytes;

/// The page size the estimator works in.
pub const CHUNK: usize = 4096;

/// Pages watched by default.
pub const DEFAULT_WATCHED: usize = 64;

/// The estimator's state for one memory.
#[derive(Debug, Clone)]
pub struct PageSampler {
    rng: u64,
    key: u64,
    watched: usize,
    pages: usize,
    slots: Vec<(usize, u64)>,
}

impl Default for PageSampler {
    fn default() -> PageSampler {
        PageSampler::new(DEFAULT_WATCHED, 0x5EED)
    }
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl PageSampler {
    /// Watches `watched` pages, drawn with `seed` (keep it secret from the guest).
    pub fn new(watched: usize, seed: u64) -> PageSampler {
        let mut rng = seed;
        let key = splitmix(&mut rng) | 1;
        PageSampler {
            rng,
            key,
            watched: watched.max(1),
            pages: 0,
            slots: Vec::new(),
        }
    }

    fn digest(&self, page: &[u8]) -> u64 {
        // A keyed multiply-xor fold over 8-byte words: fast (several GB/s), and without the key
        // a guest cannot build a different page with the same digest on purpose.
        let mut h = self.key;
        for w in page.chunks_exact(8) {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            h = (h ^ u64::from_le_bytes(b))
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .rotate_left(29);
        }
        h
    }

    fn zero_digest(&self) -> u64 {
        self.digest(&[0u8; CHUNK])
    }

    fn draw(&mut self, read: &mut impl FnMut(usize, &mut [u8]), buf: &mut [u8]) -> (usize, u64) {
        let page = (splitmix(&mut self.rng) % self.pages as u64) as usize;
        read(page, buf);
        (page, self.digest(buf))
    }

    /// Observes memory now; returns the estimated bytes erased since the previous observation
    /// (zero on the first).
    pub fn observe(&mut self, memory: &[u8]) -> Bytes {
        self.observe_pages(memory.len() / CHUNK, |page, buf| {
            buf.copy_from_slice(&memory[page * CHUNK..(page + 1) * CHUNK]);
        })
    }

    /// [`PageSampler::observe`] of a memory of `pages` pages that is read a page at a time:
    /// `read(page, buf)` fills `buf` ([`CHUNK`] bytes) with that page (the microVM backend
    /// reads the guest's RAM from its memfd this way, never mapping all of it).
    pub fn observe_pages(&mut self, pages: usize, mut read: impl FnMut(usize, &mut [u8])) -> Bytes {
        if pages == 0 {
            self.slots.clear();
            self.pages = 0;
            return Bytes(0);
        }
        let mut buf = vec![0u8; CHUNK];
        let zero = self.zero_digest();
        let mut changed = 0u64;
        let mut valid = 0u64;
        for &(page, old) in &self.slots {
            if page < pages {
                valid += 1;
                read(page, &mut buf);
                let now = self.digest(&buf);
                if now != old && old != zero {
                    changed += 1;
                }
            }
        }
        let estimate = if valid == 0 {
            0
        } else {
            // Scaled by the page count the sample was drawn over.
            (u128::from(changed) * self.pages as u128 * CHUNK as u128 / u128::from(valid)) as u64
        };
        if pages != self.pages || self.slots.len() != self.watched {
            self.pages = pages;
            self.slots = (0..self.watched)
                .map(|_| self.draw(&mut read, &mut buf))
                .collect();
        } else {
            for i in 0..self.slots.len() {
                read(self.slots[i].0, &mut buf);
                self.slots[i].1 = self.digest(&buf);
            }
            let n = self.slots.len();
            for _ in 0..n.div_ceil(4) {
                let i = (splitmix(&mut self.rng) % n as u64) as usize;
                self.slots[i] = self.draw(&mut read, &mut buf);
            }
        }
        Bytes(estimate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(mem: &mut [u8], page: usize, value: u8) {
        mem[page * CHUNK..(page + 1) * CHUNK].fill(value);
    }

    #[test]
    fn writing_fresh_zero_memory_is_not_erasure() {
        let mut mem = vec![0u8; 64 * CHUNK];
        let mut s = PageSampler::new(16, 1);
        assert_eq!(s.observe(&mem), Bytes(0));
        for p in 0..64 {
            fill(&mut mem, p, 7);
        }
        assert_eq!(s.observe(&mem), Bytes(0));
        // Now every page holds data; overwriting all of it erases all of it.
        for p in 0..64 {
            fill(&mut mem, p, 9);
        }
        assert_eq!(s.observe(&mem), Bytes(64 * CHUNK as u64));
        // Unchanged memory erases nothing.
        assert_eq!(s.observe(&mem), Bytes(0));
    }

    #[test]
    fn unbiased_on_a_known_fraction() {
        // 1024 pages of data; each interval overwrites a fresh random quarter of them.
        let pages = 1024;
        let mut mem = vec![1u8; pages * CHUNK];
        let mut total = 0u128;
        let rounds = 400u64;
        let mut rng = 42u64;
        let mut value = 2u8;
        for seed in 0..4 {
            let mut s = PageSampler::new(DEFAULT_WATCHED, 1000 + seed);
            s.observe(&mem);
            for _ in 0..rounds / 4 {
                value = value.wrapping_add(1).max(1);
                let mut order: Vec<usize> = (0..pages).collect();
                for i in (1..pages).rev() {
                    order.swap(i, (splitmix(&mut rng) % (i as u64 + 1)) as usize);
                }
                for &p in &order[..pages / 4] {
                    fill(&mut mem, p, value);
                }
                total += u128::from(s.observe(&mem).0);
            }
        }
        let mean = total as f64 / rounds as f64;
        let truth = (pages / 4 * CHUNK) as f64;
        // Standard error of the mean: 22% / sqrt(400) = 1.1%; allow 4 of them.
        assert!(
            (mean / truth - 1.0).abs() < 0.045,
            "mean {mean} vs truth {truth}"
        );
    }

    #[test]
    fn growth_redraws_the_sample() {
        let mut mem = vec![3u8; 8 * CHUNK];
        let mut s = PageSampler::new(8, 5);
        s.observe(&mem);
        mem.resize(16 * CHUNK, 0);
        // Growth itself erases nothing.
        assert_eq!(s.observe(&mem), Bytes(0));
        assert_eq!(s.pages, 16);
    }
}
