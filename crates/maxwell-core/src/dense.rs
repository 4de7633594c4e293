//! [`Dense`]: a growable array indexed by agent id, stored in fixed chunks of [`CHUNK`]
//! elements.
//!
//! A `Vec` doubles when it fills: at 10,000 agents a `Vec` of per-agent state holds room for
//! 16,384 (64% more memory than the agents need), and each doubling copies every element while
//! the old and new buffers are both alive, on the thread that admits the agent (the tick
//! thread). Chunks never move: a push allocates at most one new chunk, the room held beyond
//! the last element is under one chunk, and no admission copies the others.

use std::ops::{Index, IndexMut};

/// Elements per chunk.
pub const CHUNK: usize = 1024;

/// A growable array in chunks of [`CHUNK`] elements (see the module documentation).
#[derive(Debug, Clone)]
pub struct Dense<T> {
    chunks: Vec<Vec<T>>,
    len: usize,
}

impl<T> Default for Dense<T> {
    fn default() -> Self {
        Dense {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Dense<T> {
    /// An empty array.
    pub fn new() -> Self {
        Self::default()
    }

    /// Elements held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends an element.
    pub fn push(&mut self, value: T) {
        match self.chunks.last_mut() {
            Some(last) if last.len() < CHUNK => last.push(value),
            _ => {
                let mut chunk = Vec::with_capacity(CHUNK);
                chunk.push(value);
                self.chunks.push(chunk);
            }
        }
        self.len += 1;
    }

    /// The element at `i`.
    pub fn get(&self, i: usize) -> Option<&T> {
        self.chunks.get(i / CHUNK)?.get(i % CHUNK)
    }

    /// The element at `i`, to change.
    pub fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        self.chunks.get_mut(i / CHUNK)?.get_mut(i % CHUNK)
    }

    /// The elements in order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &T> + Clone + '_ {
        self.chunks.iter().flatten()
    }

    /// The elements in order, to change.
    pub fn iter_mut(&mut self) -> impl DoubleEndedIterator<Item = &mut T> + '_ {
        self.chunks.iter_mut().flatten()
    }

    /// Bytes of element storage allocated (room for whole chunks).
    pub fn allocated_bytes(&self) -> usize {
        self.chunks.iter().map(Vec::capacity).sum::<usize>() * std::mem::size_of::<T>()
    }
}

impl<T> Index<usize> for Dense<T> {
    type Output = T;

    /// Panics when `i` is out of range, as a slice does.
    fn index(&self, i: usize) -> &T {
        &self.chunks[i / CHUNK][i % CHUNK]
    }
}

impl<T> IndexMut<usize> for Dense<T> {
    fn index_mut(&mut self, i: usize) -> &mut T {
        &mut self.chunks[i / CHUNK][i % CHUNK]
    }
}

impl<T> FromIterator<T> for Dense<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        let mut d = Dense::new();
        for v in iter {
            d.push(v);
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_like_a_vec_across_chunk_boundaries() {
        let n = 3 * CHUNK + 17;
        let mut d: Dense<u64> = Dense::new();
        let mut v = Vec::new();
        for i in 0..n as u64 {
            d.push(i * 3);
            v.push(i * 3);
        }
        assert_eq!(d.len(), v.len());
        assert!(d.iter().eq(v.iter()));
        for i in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, n - 1] {
            assert_eq!(d[i], v[i]);
            assert_eq!(d.get(i), v.get(i));
        }
        assert_eq!(d.get(n), None);
        d[CHUNK] = 7;
        *d.get_mut(n - 1).unwrap() += 1;
        for x in d.iter_mut() {
            *x += 1;
        }
        assert_eq!(d[CHUNK], 8);
        assert_eq!(d[n - 1], v[n - 1] + 2);
        // Room held beyond the elements is under one chunk.
        assert_eq!(d.allocated_bytes(), 4 * CHUNK * 8);
        let e: Dense<u64> = (0..5).collect();
        assert_eq!(e.len(), 5);
        assert!(e.iter().rev().eq([4, 3, 2, 1, 0].iter()));
    }
}
