//! Bloom filters of the runs: which filter prefixes a run may hold, so that a lookup or a scan
//! skips the runs that cannot answer it.

use std::sync::atomic::{AtomicU64, Ordering};

use xxhash_rust::xxh3::xxh3_64;

/// Bloom filter bits per distinct filter prefix (about 1 % false positives with 7 probes).
pub(super) const BLOOM_BITS_PER_KEY: usize = 10;
const BLOOM_PROBES: u32 = 7;

/// A blocked Bloom filter: each key sets [`BLOOM_PROBES`] bits in one 512-bit block (one cache
/// line), so a lookup costs one cache miss.
#[derive(Debug, Clone)]
pub(super) struct Bloom {
    /// A multiple of 8 words; never empty.
    pub(super) words: Vec<u64>,
}

pub(super) const BLOOM_BLOCK_WORDS: usize = 8;

impl Bloom {
    pub(super) fn for_keys(n: u64) -> Bloom {
        let bits = usize::try_from(n)
            .unwrap_or(usize::MAX)
            .saturating_mul(BLOOM_BITS_PER_KEY);
        let blocks = bits.div_ceil(64 * BLOOM_BLOCK_WORDS).max(1);
        Bloom {
            words: vec![0; blocks * BLOOM_BLOCK_WORDS],
        }
    }

    pub(super) fn insert(&mut self, hash: u64) {
        for (word, mask) in probes(self.words.len(), hash) {
            self.words[word] |= mask;
        }
    }

    pub(super) fn may_contain(&self, hash: u64) -> bool {
        probes(self.words.len(), hash).all(|(word, mask)| self.words[word] & mask != 0)
    }
}

/// The block (of [`BLOOM_BLOCK_WORDS`] words) that holds all the bits of `hash` in a filter of
/// `words` words: what a filter read from its file by block reads (`file.rs`).
pub(super) fn block_of(words: usize, hash: u64) -> usize {
    let blocks = (words / BLOOM_BLOCK_WORDS) as u128;
    ((u128::from(hash) * blocks) >> 64) as usize
}

/// Whether `block`, the block [`block_of`] names for `hash`, may hold it.
pub(super) fn block_may_contain(block: &[u64; BLOOM_BLOCK_WORDS], hash: u64) -> bool {
    in_block(hash).all(|(word, mask)| block[word] & mask != 0)
}

/// The bits a key sets in a blocked filter of `words` words: [`BLOOM_PROBES`] (word, mask)
/// pairs, all in the block of `hash`.
fn probes(words: usize, hash: u64) -> impl Iterator<Item = (usize, u64)> {
    let first = block_of(words, hash) * BLOOM_BLOCK_WORDS;
    in_block(hash).map(move |(word, mask)| (first + word, mask))
}

/// The bits of `hash` within its block, each chosen by 9 bits of a second hash.
fn in_block(hash: u64) -> impl Iterator<Item = (usize, u64)> {
    let bits = (hash ^ (hash >> 29)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..BLOOM_PROBES).map(move |i| {
        let bit = (bits >> (9 * i)) & 511;
        ((bit / 64) as usize, 1u64 << (bit % 64))
    })
}

/// The Bloom filter of the memory runs together: one for all of them, so that merging runs
/// rebuilds nothing and a lookup asks one filter. Bits are only ever set, by the indexer,
/// before it publishes the runs that hold the keys; a new one starts at each checkpoint.
#[derive(Debug)]
pub(super) struct SharedBloom {
    words: Vec<AtomicU64>,
}

impl SharedBloom {
    pub(super) fn for_keys(n: u64) -> SharedBloom {
        let words = Bloom::for_keys(n).words.len();
        SharedBloom {
            words: (0..words).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub(super) fn insert(&self, hash: u64) {
        for (word, mask) in probes(self.words.len(), hash) {
            self.words[word].fetch_or(mask, Ordering::Relaxed);
        }
    }

    pub(super) fn may_contain(&self, hash: u64) -> bool {
        probes(self.words.len(), hash)
            .all(|(word, mask)| self.words[word].load(Ordering::Relaxed) & mask != 0)
    }
}

pub(super) fn hash(prefix: &[u8]) -> u64 {
    xxh3_64(prefix)
}
