//! The dedup and query indexes, kept as sorted runs: a small log-structured merge tree whose
//! runs are stored in sled as blocks of entries.
//!
//! Why not one sled key per entry, as before: a Mailjet event has six index entries, and at
//! millions of keys sled spent 55-65 µs of CPU and wrote about 2.6 KB to disk per event (a leaf
//! holds 16 keys, every insert clones and relogs one, and the cache tracks every leaf). Indexing
//! then needed a whole core at 18,000 events/s, beside ingest. Here an entry costs a sort and a
//! copy: the indexer collects each batch's entries in memory (a *memory run*: sorted, with a
//! Bloom filter), and every few seconds writes the memory runs out as one *disk run*: its
//! entries in 4 KiB blocks (each a sled value), its Bloom filter in its record. Runs of about the
//! same size are merged into one (size tiers of factor 4), so a store holds a few dozen runs at
//! most, and each entry is rewritten once per tier.
//!
//! Readers take a snapshot of the runs (an `ArcSwap`, so no lock is shared with the indexer,
//! which runs at idle priority). A point lookup asks the runs whose Bloom filter may hold its
//! key; a scan is always within one *filter prefix* (an index key without its time and seq, or
//! a whole dedup key), so it too skips the runs that cannot hold it, and merges the others in
//! key order.
//!
//! Layout of the `index` tree of the index database (keys by first byte):
//!
//! | key                                  | value                                          |
//! |--------------------------------------|------------------------------------------------|
//! | `Mindexed`                           | u64 BE: the runs hold every event up to it     |
//! | `R`, run id u64 BE                   | the run's record: sizes, last seq, time span   |
//! | `F`, run id u64 BE, chunk u32 BE     | 64 KiB of the run's Bloom filter               |
//! | `B`, run id u64 BE, block's last key | a block of the run's entries                   |
//!
//! Crash safety rests on sled recovering a prefix of its writes (as the log does): a run's
//! blocks and filter are written before its record, and a merged run's record before the
//! records of the runs it replaces are removed; keys of a run without a record are deleted at
//! open. A run records the last seq it indexes: one past the watermark (a crash between the run
//! and the watermark, or a power loss with fsync off that cost the log its tail) is deleted at
//! open and indexed again. Equal entries in several runs are one entry to readers.
//!
//! A merge is done a slice at a time between batches, so indexing never waits long for one;
//! while the indexer trails the log it only merges once there are more than a few dozen runs.
//! A scan also skips runs whose event times miss its window.

use std::cmp::Ordering;
use std::ops::{Bound, Range};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

use arc_swap::ArcSwap;
use tracing::{debug, info};
use xxhash_rust::xxh3::xxh3_64;

use crate::StoreError;
use crate::codec;
use crate::writer::FileSync;

/// An index entry: its key and (for dedup entries) its value.
pub(crate) type Entry = (Vec<u8>, Vec<u8>);

const RUN: u8 = b'R';
const BLOCK: u8 = b'B';
const FILTER: u8 = b'F';
/// A block is closed once its encoded entries pass this size.
const BLOCK_BYTES: usize = 4096;
/// Runs in one size tier that trigger a merge of that tier.
const MERGE_WIDTH: usize = 4;
/// Bloom filter bits per distinct filter prefix (about 1 % false positives with 7 probes).
const BLOOM_BITS_PER_KEY: usize = 10;
const BLOOM_PROBES: u32 = 7;
const RUN_RECORD_V1: u8 = 1;
/// Distinct filter prefixes the memory runs' filter is sized for: those of the entries one
/// checkpoint holds (the indexer's `CHECKPOINT_ENTRIES`), with room; past it, false positives
/// only grow.
const MEMORY_BLOOM_KEYS: u64 = 400_000;

/// The part of an index key a Bloom filter holds: every scan stays within one such prefix.
/// Query entries (`T`, `K`) end with time and seq (16 bytes), which a scan ranges over; dedup
/// entries are looked up whole.
pub(crate) fn filter_prefix(key: &[u8]) -> &[u8] {
    match key.first() {
        Some(&codec::BY_TYPE | &codec::BY_KEY) if key.len() > 16 => &key[..key.len() - 16],
        _ => key,
    }
}

// ---------------------------------------------------------------------------------------------
// Bloom filter

/// A blocked Bloom filter: each key sets [`BLOOM_PROBES`] bits in one 512-bit block (one cache
/// line), so a lookup costs one cache miss.
#[derive(Debug, Clone)]
struct Bloom {
    /// A multiple of 8 words; never empty.
    words: Vec<u64>,
}

const BLOOM_BLOCK_WORDS: usize = 8;

impl Bloom {
    fn for_keys(n: u64) -> Bloom {
        let bits = usize::try_from(n)
            .unwrap_or(usize::MAX)
            .saturating_mul(BLOOM_BITS_PER_KEY);
        let blocks = bits.div_ceil(64 * BLOOM_BLOCK_WORDS).max(1);
        Bloom {
            words: vec![0; blocks * BLOOM_BLOCK_WORDS],
        }
    }

    fn insert(&mut self, hash: u64) {
        for (word, mask) in probes(self.words.len(), hash) {
            self.words[word] |= mask;
        }
    }

    fn may_contain(&self, hash: u64) -> bool {
        probes(self.words.len(), hash).all(|(word, mask)| self.words[word] & mask != 0)
    }
}

/// The bits a key sets in a blocked filter of `words` words: [`BLOOM_PROBES`] (word, mask)
/// pairs, all in the block of `hash`, each bit chosen by 9 bits of a second hash.
fn probes(words: usize, hash: u64) -> impl Iterator<Item = (usize, u64)> {
    let blocks = (words / BLOOM_BLOCK_WORDS) as u128;
    let first = ((u128::from(hash) * blocks) >> 64) as usize * BLOOM_BLOCK_WORDS;
    let bits = (hash ^ (hash >> 29)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..BLOOM_PROBES).map(move |i| {
        let bit = (bits >> (9 * i)) & 511;
        (first + (bit / 64) as usize, 1u64 << (bit % 64))
    })
}

/// The Bloom filter of the memory runs together: one for all of them, so that merging runs
/// rebuilds nothing and a lookup asks one filter. Bits are only ever set, by the indexer,
/// before it publishes the runs that hold the keys; a new one starts at each checkpoint.
#[derive(Debug)]
struct SharedBloom {
    words: Vec<AtomicU64>,
}

impl SharedBloom {
    fn for_keys(n: u64) -> SharedBloom {
        let words = Bloom::for_keys(n).words.len();
        SharedBloom {
            words: (0..words).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn insert(&self, hash: u64) {
        for (word, mask) in probes(self.words.len(), hash) {
            self.words[word].fetch_or(mask, AtomicOrdering::Relaxed);
        }
    }

    fn may_contain(&self, hash: u64) -> bool {
        probes(self.words.len(), hash)
            .all(|(word, mask)| self.words[word].load(AtomicOrdering::Relaxed) & mask != 0)
    }
}

fn hash(prefix: &[u8]) -> u64 {
    xxh3_64(prefix)
}

// ---------------------------------------------------------------------------------------------
// Blocks: `[n: u32][offset of each entry: u32 × n][entries]`, an entry being
// `[shared: u32][suffix length: u32][suffix][value length: u32][value]`: its key is the first
// `shared` bytes of the block's first key (held whole by entry 0), then the suffix. Any entry
// decodes on its own, so a block is binary-searched without decoding it.

#[derive(Debug, Default)]
struct BlockBuilder {
    offsets: Vec<u32>,
    data: Vec<u8>,
    first: Vec<u8>,
    last: Vec<u8>,
}

impl BlockBuilder {
    fn add(&mut self, key: &[u8], value: &[u8]) {
        let shared = if self.offsets.is_empty() {
            self.first = key.to_vec();
            0
        } else {
            self.first
                .iter()
                .zip(key)
                .take_while(|(a, b)| a == b)
                .count()
        };
        self.offsets.push(len32(self.data.len()));
        self.data.extend_from_slice(&len32(shared).to_be_bytes());
        self.data
            .extend_from_slice(&len32(key.len() - shared).to_be_bytes());
        self.data.extend_from_slice(&key[shared..]);
        self.data
            .extend_from_slice(&len32(value.len()).to_be_bytes());
        self.data.extend_from_slice(value);
        self.last.clear();
        self.last.extend_from_slice(key);
    }

    fn is_full(&self) -> bool {
        self.data.len() >= BLOCK_BYTES
    }

    fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// The encoded block and its last key; the builder is empty again.
    fn finish(&mut self) -> (Vec<u8>, Vec<u8>) {
        let mut out = Vec::with_capacity(4 + 4 * self.offsets.len() + self.data.len());
        out.extend_from_slice(&len32(self.offsets.len()).to_be_bytes());
        for offset in &self.offsets {
            out.extend_from_slice(&offset.to_be_bytes());
        }
        out.extend_from_slice(&self.data);
        self.offsets.clear();
        self.data.clear();
        (out, std::mem::take(&mut self.last))
    }
}

/// Index keys are capped far below 4 GiB (`gancho_core::MAX_KEY_LEN`); saturate rather than wrap.
fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// A decoded view of a block held by sled.
#[derive(Debug, Clone)]
struct Block {
    bytes: sled::IVec,
    n: usize,
    /// Where the entries start.
    data: usize,
    /// Where the first key (entry 0's suffix) lies in `bytes`.
    first: Range<usize>,
    /// The run it belongs to, for error messages.
    run: u64,
}

impl Block {
    fn parse(run: u64, bytes: sled::IVec) -> Result<Block, StoreError> {
        let n = bytes
            .get(..4)
            .and_then(read_u32)
            .map(|n| n as usize)
            .ok_or_else(|| corrupt(run, "block without a count"))?;
        let data = n
            .checked_mul(4)
            .and_then(|x| x.checked_add(4))
            .filter(|&d| d <= bytes.len() && n > 0)
            .ok_or_else(|| corrupt(run, "block shorter than its offsets"))?;
        let mut block = Block {
            bytes,
            n,
            data,
            first: 0..0,
            run,
        };
        let (shared, first, _) = block.ranges(0)?;
        if shared != 0 {
            return Err(corrupt(run, "a block's first key shares a prefix"));
        }
        block.first = first;
        Ok(block)
    }

    /// Entry `i`: the length of the first key's prefix it shares, and where its key's suffix
    /// and its value lie.
    fn ranges(&self, i: usize) -> Result<(usize, Range<usize>, Range<usize>), StoreError> {
        let bad = || corrupt(self.run, "entry out of its block");
        if i >= self.n {
            return Err(bad());
        }
        let at = 4 + 4 * i;
        let offset = self
            .bytes
            .get(at..at + 4)
            .and_then(read_u32)
            .ok_or_else(bad)? as usize;
        let mut r = self.data.checked_add(offset).ok_or_else(bad)?;
        let mut take = |len: usize| -> Result<Range<usize>, StoreError> {
            let end = r.checked_add(len).filter(|&e| e <= self.bytes.len());
            let range = r..end.ok_or_else(bad)?;
            r = range.end;
            Ok(range)
        };
        let word = |range: Range<usize>| read_u32(&self.bytes[range]).map(|n| n as usize);
        let shared = word(take(4)?).ok_or_else(bad)?;
        let suffix_len = word(take(4)?).ok_or_else(bad)?;
        let suffix = take(suffix_len)?;
        let value_len = word(take(4)?).ok_or_else(bad)?;
        let value = take(value_len)?;
        if shared > self.first.len() && i > 0 {
            return Err(corrupt(self.run, "shared prefix longer than the first key"));
        }
        Ok((shared, suffix, value))
    }

    /// Entry `i`'s key as the shared head of the first key and its own suffix.
    fn key_parts(&self, i: usize) -> Result<(&[u8], &[u8]), StoreError> {
        let (shared, suffix, _) = self.ranges(i)?;
        let head = &self.bytes[self.first.start..self.first.start + shared];
        Ok((head, &self.bytes[suffix]))
    }

    /// Compares entry `i`'s key with `target`, without building the key.
    fn cmp(&self, i: usize, target: &[u8]) -> Result<Ordering, StoreError> {
        let (head, suffix) = self.key_parts(i)?;
        let n = head.len().min(target.len());
        match head[..n].cmp(&target[..n]) {
            Ordering::Equal => {}
            other => return Ok(other),
        }
        if target.len() <= head.len() {
            return Ok(if head.len() + suffix.len() > target.len() {
                Ordering::Greater
            } else {
                Ordering::Equal
            });
        }
        Ok(suffix.cmp(&target[head.len()..]))
    }

    fn value(&self, i: usize) -> Result<&[u8], StoreError> {
        let (_, _, value) = self.ranges(i)?;
        Ok(&self.bytes[value])
    }

    /// The first entry whose key is at least (`strict`: more than) `target`.
    fn seek(&self, target: &[u8], strict: bool) -> Result<usize, StoreError> {
        first_not_before(self.n, strict, |i| self.cmp(i, target))
    }
}

/// Binary search over `n` sorted entries: the first whose comparison with a target (`cmp(i)`:
/// entry `i` against it) is not `Less` (`strict`: is `Greater`).
fn first_not_before<E>(
    n: usize,
    strict: bool,
    mut cmp: impl FnMut(usize) -> Result<Ordering, E>,
) -> Result<usize, E> {
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = (lo + hi) / 2;
        let before = match cmp(mid)? {
            Ordering::Less => true,
            Ordering::Equal => strict,
            Ordering::Greater => false,
        };
        if before {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}

/// Marks the indexes for a rebuild at the next open, when a read found them damaged (they are
/// derived from the log, so nothing is lost). Best effort: the error is reported anyway.
fn condemn(tree: &sled::Tree, err: &StoreError) {
    if !matches!(err, StoreError::Corrupt { .. }) {
        return;
    }
    tracing::error!(error = %err, "the indexes are damaged; they are rebuilt at the next start");
    let marked = tree
        .insert(codec::REBUILD_KEY, err.to_string().as_bytes())
        .and_then(|_| tree.flush());
    if let Err(err) = marked {
        tracing::error!(error = %err, "could not mark the indexes for a rebuild");
    }
}

fn read_u32(bytes: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(bytes.try_into().ok()?))
}

fn corrupt(run: u64, reason: &str) -> StoreError {
    StoreError::Corrupt {
        key: format!("index run {run}"),
        reason: reason.to_owned(),
    }
}

fn run_key(id: u64) -> [u8; 9] {
    let mut key = [RUN; 9];
    key[1..].copy_from_slice(&id.to_be_bytes());
    key
}

fn filter_key(id: u64, chunk: u32) -> [u8; 13] {
    let mut key = [FILTER; 13];
    key[1..9].copy_from_slice(&id.to_be_bytes());
    key[9..].copy_from_slice(&chunk.to_be_bytes());
    key
}

fn block_key(id: u64, last: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(9 + last.len());
    key.push(BLOCK);
    key.extend_from_slice(&id.to_be_bytes());
    key.extend_from_slice(last);
    key
}

/// The bounds of all of a run's keys under one prefix (`BLOCK` or `FILTER`).
fn run_range(prefix: u8, id: u64) -> (Vec<u8>, Bound<Vec<u8>>) {
    let mut start = vec![prefix];
    start.extend_from_slice(&id.to_be_bytes());
    let end = match id.checked_add(1) {
        Some(next) => {
            let mut end = vec![prefix];
            end.extend_from_slice(&next.to_be_bytes());
            Bound::Excluded(end)
        }
        None => Bound::Excluded(vec![prefix + 1]),
    };
    (start, end)
}

/// The event time of a query entry (`T`, `K`), as its 8 key bytes (byte order is time order).
fn entry_time(key: &[u8]) -> Option<[u8; 8]> {
    match key.first() {
        Some(&codec::BY_TYPE | &codec::BY_KEY) if key.len() > 16 => {
            key[key.len() - 16..key.len() - 8].try_into().ok()
        }
        _ => None,
    }
}

/// The event times a run's query entries span, as time keys; `None` when it has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct TimeSpan(Option<([u8; 8], [u8; 8])>);

impl TimeSpan {
    fn add(&mut self, time: [u8; 8]) {
        self.0 = Some(match self.0 {
            None => (time, time),
            Some((lo, hi)) => (lo.min(time), hi.max(time)),
        });
    }

    /// The span of both.
    fn join(self, other: TimeSpan) -> TimeSpan {
        match (self.0, other.0) {
            (Some((a, b)), Some((c, d))) => TimeSpan(Some((a.min(c), b.max(d)))),
            (x, y) => TimeSpan(x.or(y)),
        }
    }

    /// Whether a scan over `from..=to` may find entries here.
    fn meets(&self, from: &[u8; 8], to: &[u8; 8]) -> bool {
        self.0.is_some_and(|(lo, hi)| &hi >= from && &lo <= to)
    }
}

/// The time range a scan covers: the time bytes right after its prefix in `lo` and `hi`.
fn scan_times(prefix: &[u8], lo: &[u8], hi: &[u8]) -> Option<([u8; 8], [u8; 8])> {
    let at = prefix.len();
    let from = lo
        .get(at..at + 8)
        .and_then(|t| t.try_into().ok())
        .unwrap_or([0; 8]);
    let to = hi
        .get(at..at + 8)
        .and_then(|t| t.try_into().ok())
        .unwrap_or([0xff; 8]);
    // Only query entries carry times; a dedup key scan (no time) skips nothing.
    matches!(prefix.first(), Some(&codec::BY_TYPE | &codec::BY_KEY)).then_some((from, to))
}

// ---------------------------------------------------------------------------------------------
// Runs

/// The entries of one batch, as the indexer collects them: keys and values back to back in one
/// buffer (no allocation per entry).
#[derive(Debug, Default)]
pub(crate) struct Batch {
    data: Vec<u8>,
    slots: Vec<Slot>,
}

/// Where an entry lies in its run's buffer.
#[derive(Debug, Clone, Copy)]
struct Slot {
    at: usize,
    key_len: u32,
    value_len: u32,
}

impl Batch {
    pub(crate) fn push(&mut self, key: &[u8], value: &[u8]) {
        self.slots.push(Slot {
            at: self.data.len(),
            key_len: len32(key.len()),
            value_len: len32(value.len()),
        });
        self.data.extend_from_slice(key);
        self.data.extend_from_slice(value);
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
impl FromIterator<Entry> for Batch {
    fn from_iter<I: IntoIterator<Item = Entry>>(entries: I) -> Batch {
        let mut batch = Batch::default();
        for (key, value) in entries {
            batch.push(&key, &value);
        }
        batch
    }
}

/// Entries of recent batches, not yet written out: sorted, unique keys.
#[derive(Debug)]
struct MemRun {
    data: Vec<u8>,
    slots: Vec<Slot>,
    times: TimeSpan,
}

impl MemRun {
    /// Sorts a batch into a run, putting its keys in `bloom`.
    fn new(batch: Batch, bloom: &SharedBloom) -> MemRun {
        let Batch { data, mut slots } = batch;
        let key = |slot: &Slot| &data[slot.at..slot.at + slot.key_len as usize];
        slots.sort_unstable_by(|a, b| key(a).cmp(key(b)));
        slots.dedup_by(|a, b| key(a) == key(b));
        let mut times = TimeSpan::default();
        for slot in &slots {
            let key = key(slot);
            bloom.insert(hash(filter_prefix(key)));
            if let Some(time) = entry_time(key) {
                times.add(time);
            }
        }
        MemRun { data, slots, times }
    }

    /// One run of the entries of both (equal entries once).
    fn merge(older: &MemRun, newer: &MemRun) -> MemRun {
        let mut batch = Batch {
            data: Vec::with_capacity(older.data.len() + newer.data.len()),
            slots: Vec::with_capacity(older.len() + newer.len()),
        };
        let (mut i, mut j) = (0, 0);
        while i < older.len() || j < newer.len() {
            let take_older = j >= newer.len() || (i < older.len() && older.key(i) <= newer.key(j));
            if take_older {
                if j < newer.len() && older.key(i) == newer.key(j) {
                    j += 1;
                }
                batch.push(older.key(i), older.value(i));
                i += 1;
            } else {
                batch.push(newer.key(j), newer.value(j));
                j += 1;
            }
        }
        let times = older.times.join(newer.times);
        MemRun {
            data: batch.data,
            slots: batch.slots,
            times,
        }
    }

    fn len(&self) -> usize {
        self.slots.len()
    }

    fn key(&self, i: usize) -> &[u8] {
        let slot = self.slots[i];
        &self.data[slot.at..slot.at + slot.key_len as usize]
    }

    fn value(&self, i: usize) -> &[u8] {
        let slot = self.slots[i];
        let start = slot.at + slot.key_len as usize;
        &self.data[start..start + slot.value_len as usize]
    }

    /// The first entry whose key is at least (`strict`: more than) `target`.
    fn seek(&self, target: &[u8], strict: bool) -> usize {
        let found = first_not_before(self.len(), strict, |i| {
            Ok::<_, std::convert::Infallible>(self.key(i).cmp(target))
        });
        match found {
            Ok(i) => i,
            Err(never) => match never {},
        }
    }
}

/// A run in sled: its id, its size, the events it indexes, and its filter.
#[derive(Debug)]
struct DiskRun {
    id: u64,
    entries: u64,
    /// Distinct filter prefixes.
    distinct: u64,
    /// It holds the entries of events up to this seq, none later.
    max_seq: u64,
    times: TimeSpan,
    bloom: Bloom,
}

/// Filter words per `F` key: 64 KiB values, written once.
const FILTER_CHUNK_WORDS: usize = 8192;

impl DiskRun {
    fn tier(&self) -> u32 {
        // Size classes of factor 4.
        (64 - self.entries.leading_zeros()) / 2
    }

    /// Writes the filter (in chunks), then the record, which makes the run live.
    fn write(&self, tree: &sled::Tree) -> Result<(), StoreError> {
        for (i, chunk) in self.bloom.words.chunks(FILTER_CHUNK_WORDS).enumerate() {
            let mut bytes = Vec::with_capacity(8 * chunk.len());
            for word in chunk {
                bytes.extend_from_slice(&word.to_le_bytes());
            }
            tree.insert(filter_key(self.id, len32(i)), bytes)
                .map_err(StoreError::sled)?;
        }
        let mut record = Vec::with_capacity(46);
        record.push(RUN_RECORD_V1);
        record.extend_from_slice(&self.entries.to_be_bytes());
        record.extend_from_slice(&self.distinct.to_be_bytes());
        record.extend_from_slice(&self.max_seq.to_be_bytes());
        match self.times.0 {
            Some((lo, hi)) => {
                record.push(1);
                record.extend_from_slice(&lo);
                record.extend_from_slice(&hi);
            }
            None => record.push(0),
        }
        record.extend_from_slice(&len32(self.bloom.words.len()).to_be_bytes());
        tree.insert(run_key(self.id), record)
            .map_err(StoreError::sled)?;
        Ok(())
    }

    fn read(tree: &sled::Tree, id: u64, record: &[u8]) -> Result<DiskRun, StoreError> {
        let bad = || corrupt(id, "unreadable run record");
        if record.first() != Some(&RUN_RECORD_V1) {
            return Err(bad());
        }
        let u64_at = |at: usize| record.get(at..at + 8).and_then(codec::read_u64);
        let entries = u64_at(1).ok_or_else(bad)?;
        let distinct = u64_at(9).ok_or_else(bad)?;
        let max_seq = u64_at(17).ok_or_else(bad)?;
        let (times, at) = match record.get(25) {
            Some(0) => (TimeSpan(None), 26),
            Some(1) => {
                let time = |at: usize| record.get(at..at + 8).and_then(|t| t.try_into().ok());
                let span = time(26).zip(time(34)).ok_or_else(bad)?;
                (TimeSpan(Some(span)), 42)
            }
            _ => return Err(bad()),
        };
        let n = record.get(at..at + 4).and_then(read_u32).ok_or_else(bad)? as usize;
        if n == 0 || n % BLOOM_BLOCK_WORDS != 0 || distinct > entries {
            return Err(bad());
        }
        let mut words = Vec::with_capacity(n.min(1 << 24));
        let (start, end) = run_range(FILTER, id);
        for item in tree.range((Bound::Included(start), end)) {
            let (_, bytes) = item.map_err(StoreError::sled)?;
            if bytes.len() % 8 != 0 {
                return Err(bad());
            }
            for word in bytes.chunks_exact(8) {
                let word: [u8; 8] = word.try_into().map_err(|_| bad())?;
                words.push(u64::from_le_bytes(word));
            }
        }
        if words.len() != n {
            return Err(corrupt(id, "run filter of the wrong size"));
        }
        Ok(DiskRun {
            id,
            entries,
            distinct,
            max_seq,
            times,
            bloom: Bloom { words },
        })
    }
}

/// Deletes a run whole: its record first (so that it is never half there), then its filter and
/// blocks. Returns how many keys went.
fn delete_run(tree: &sled::Tree, id: u64) -> Result<usize, StoreError> {
    tree.remove(run_key(id)).map_err(StoreError::sled)?;
    let mut n = 0;
    for prefix in [FILTER, BLOCK] {
        let (start, end) = run_range(prefix, id);
        for key in tree.range((Bound::Included(start), end)).keys() {
            tree.remove(key.map_err(StoreError::sled)?)
                .map_err(StoreError::sled)?;
            n += 1;
        }
    }
    Ok(n)
}

/// What readers see: the memory runs (oldest first) and the disk runs.
#[derive(Debug)]
struct View {
    mem: Vec<Arc<MemRun>>,
    /// The filter of the memory runs.
    mem_bloom: Arc<SharedBloom>,
    disk: Vec<Arc<DiskRun>>,
}

// ---------------------------------------------------------------------------------------------
// Reading

/// The indexes, for readers. The [`IndexWriter`] is the only one that changes them.
#[derive(Debug)]
pub(crate) struct Index {
    tree: sled::Tree,
    view: ArcSwap<View>,
}

impl Index {
    /// The value of `key`, looked up whole (dedup entries). Equal keys in several runs always
    /// carry equal values (an event id's seq never changes; query entries have none), so
    /// which run answers, here or in a scan or a merge, does not matter.
    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let view = self.view.load();
        let h = hash(filter_prefix(key));
        if view.mem_bloom.may_contain(h) {
            for run in view.mem.iter().rev() {
                let i = run.seek(key, false);
                if i < run.len() && run.key(i) == key {
                    return Ok(Some(run.value(i).to_vec()));
                }
            }
        }
        for run in view.disk.iter().rev() {
            if !run.bloom.may_contain(h) {
                continue;
            }
            let (_, end) = run_range(BLOCK, run.id);
            let first = self
                .tree
                .range((Bound::Included(block_key(run.id, key)), end))
                .next()
                .transpose()
                .map_err(StoreError::sled)?;
            if let Some((_, bytes)) = first {
                let found = Block::parse(run.id, bytes).and_then(|block| {
                    let i = block.seek(key, false)?;
                    if i < block.n && block.cmp(i, key)? == Ordering::Equal {
                        return Ok(Some(block.value(i)?.to_vec()));
                    }
                    Ok(None)
                });
                match found {
                    Ok(None) => {}
                    Ok(Some(value)) => return Ok(Some(value)),
                    Err(err) => {
                        condemn(&self.tree, &err);
                        return Err(err);
                    }
                }
            }
        }
        Ok(None)
    }

    /// The entries with keys in `lo..=hi`, in key order (`reverse`: descending), every one of
    /// which has `prefix` as its [`filter_prefix`]. Runs whose filter cannot hold `prefix`, or
    /// whose event times miss those of the scan, are not read.
    pub(crate) fn scan(&self, prefix: &[u8], lo: &[u8], hi: &[u8], reverse: bool) -> Scan {
        let view = self.view.load();
        let h = hash(prefix);
        let times = scan_times(prefix, lo, hi);
        let meets = |span: &TimeSpan| times.is_none_or(|(from, to)| span.meets(&from, &to));
        let mut sources = Vec::new();
        let in_memory = view.mem_bloom.may_contain(h);
        for run in &view.mem {
            if in_memory && meets(&run.times) {
                let start = run.seek(lo, false);
                let end = run.seek(hi, true);
                if start < end {
                    sources.push(Source::Mem {
                        run: Arc::clone(run),
                        start,
                        end,
                        at: None,
                    });
                }
            }
        }
        for run in &view.disk {
            if meets(&run.times) && run.bloom.may_contain(h) {
                sources.push(Source::Disk(Box::new(DiskScan::new(
                    &self.tree,
                    run,
                    lo,
                    Some(hi),
                    reverse,
                ))));
            }
        }
        Scan::new(sources, reverse)
    }
}

/// A merge, in key order, of the scans of several runs; equal entries come out once. A cursor
/// ([`Scan::advance`], [`Scan::key`]) that copies nothing, and an iterator of owned entries.
#[derive(Debug)]
pub(crate) struct Scan {
    sources: Vec<Source>,
    /// Whether each source is on an entry.
    live: Vec<bool>,
    reverse: bool,
    /// The source of the current entry.
    current: Option<usize>,
    /// The previous entry's key, to pass over equal entries of other runs.
    last: Vec<u8>,
    started: bool,
}

#[derive(Debug)]
enum Source {
    Mem {
        run: Arc<MemRun>,
        /// The entries not visited yet are `start..end`.
        start: usize,
        end: usize,
        /// The entry it is on.
        at: Option<usize>,
    },
    Disk(Box<DiskScan>),
}

impl Source {
    /// Moves to the next entry; false once there is none.
    fn advance(&mut self, reverse: bool) -> Result<bool, StoreError> {
        match self {
            Source::Mem { start, end, at, .. } => {
                if start >= end {
                    *at = None;
                    return Ok(false);
                }
                *at = Some(if reverse {
                    *end -= 1;
                    *end
                } else {
                    *start += 1;
                    *start - 1
                });
                Ok(true)
            }
            Source::Disk(scan) => scan.advance(),
        }
    }

    /// The entry it is on (after `advance` returned true).
    fn entry(&self) -> (&[u8], &[u8]) {
        match self {
            Source::Mem { run, at, .. } => match at {
                Some(i) => (run.key(*i), run.value(*i)),
                None => (&[], &[]),
            },
            Source::Disk(scan) => scan.entry(),
        }
    }
}

impl Scan {
    fn new(sources: Vec<Source>, reverse: bool) -> Scan {
        Scan {
            live: vec![false; sources.len()],
            sources,
            reverse,
            current: None,
            last: Vec::new(),
            started: false,
        }
    }

    /// Moves to the next entry; false at the end.
    pub(crate) fn advance(&mut self) -> Result<bool, StoreError> {
        if !self.started {
            self.started = true;
            for (source, live) in self.sources.iter_mut().zip(&mut self.live) {
                *live = source.advance(self.reverse)?;
            }
        } else if let Some(i) = self.current.take() {
            self.last.clear();
            self.last.extend_from_slice(self.sources[i].entry().0);
            self.live[i] = self.sources[i].advance(self.reverse)?;
        }
        loop {
            let mut best: Option<usize> = None;
            for i in 0..self.sources.len() {
                if !self.live[i] {
                    continue;
                }
                let better = match best {
                    None => true,
                    Some(b) => {
                        let (key, best_key) =
                            (self.sources[i].entry().0, self.sources[b].entry().0);
                        if self.reverse {
                            key > best_key
                        } else {
                            key < best_key
                        }
                    }
                };
                if better {
                    best = Some(i);
                }
            }
            let Some(i) = best else {
                return Ok(false);
            };
            if self.sources.len() > 1
                && !self.last.is_empty()
                && self.sources[i].entry().0 == &self.last[..]
            {
                // The same entry from another run.
                self.live[i] = self.sources[i].advance(self.reverse)?;
                continue;
            }
            self.current = Some(i);
            return Ok(true);
        }
    }

    /// The entry it is on: (key, value).
    pub(crate) fn entry(&self) -> (&[u8], &[u8]) {
        match self.current {
            Some(i) => self.sources[i].entry(),
            None => (&[], &[]),
        }
    }
}

impl Iterator for Scan {
    type Item = Result<Entry, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.advance() {
            Ok(true) => {
                let (key, value) = self.entry();
                Some(Ok((key.to_vec(), value.to_vec())))
            }
            Ok(false) => None,
            Err(err) => {
                // Nothing after an error.
                self.live.iter_mut().for_each(|live| *live = false);
                self.current = None;
                Some(Err(err))
            }
        }
    }
}

/// A scan of one disk run, block by block.
struct DiskScan {
    run: u64,
    /// For marking the indexes for a rebuild if a block is damaged.
    tree: sled::Tree,
    /// Held so that a merge does not delete the run's blocks under this scan.
    _keep: Arc<DiskRun>,
    lo: Vec<u8>,
    hi: Option<Vec<u8>>,
    reverse: bool,
    /// The blocks to read, from their far end when `reverse`.
    blocks: sled::Iter,
    /// The block being read and the next entry to read in it (reverse: one past it).
    current: Option<(Block, usize)>,
    /// The entry it is on: its key, and where its value lies in the current block.
    key: Vec<u8>,
    value: Range<usize>,
    done: bool,
    /// An error met while setting up, returned by the first `next`.
    failed: Option<StoreError>,
}

impl std::fmt::Debug for DiskScan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskScan")
            .field("run", &self.run)
            .field("reverse", &self.reverse)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl DiskScan {
    fn new(
        tree: &sled::Tree,
        keep: &Arc<DiskRun>,
        lo: &[u8],
        hi: Option<&[u8]>,
        reverse: bool,
    ) -> DiskScan {
        let run = keep.id;
        let (start, end) = run_range(BLOCK, run);
        let mut failed = None;
        let blocks = if reverse {
            // From the block that holds `hi` (the first whose last key is at least `hi`) down.
            let top = match hi {
                Some(hi) => match tree
                    .range((Bound::Included(block_key(run, hi)), end.clone()))
                    .next()
                    .transpose()
                {
                    Ok(Some((key, _))) => Bound::Included(key.to_vec()),
                    Ok(None) => end,
                    Err(err) => {
                        failed = Some(StoreError::sled(err));
                        end
                    }
                },
                None => end,
            };
            tree.range((Bound::Included(start), top))
        } else {
            // From the first block whose last key is at least `lo`.
            tree.range((Bound::Included(block_key(run, lo)), end))
        };
        DiskScan {
            run,
            tree: tree.clone(),
            _keep: Arc::clone(keep),
            lo: lo.to_vec(),
            hi: hi.map(<[u8]>::to_vec),
            reverse,
            blocks,
            current: None,
            key: Vec::new(),
            value: 0..0,
            done: false,
            failed,
        }
    }

    /// The entry it is on (after `advance` returned true).
    fn entry(&self) -> (&[u8], &[u8]) {
        match &self.current {
            Some((block, _)) => (&self.key, &block.bytes[self.value.clone()]),
            None => (&[], &[]),
        }
    }

    /// Moves to the next entry within the bounds; false once there is none.
    fn advance(&mut self) -> Result<bool, StoreError> {
        if let Some(err) = self.failed.take() {
            self.done = true;
            return Err(err);
        }
        let result = self.step();
        if !matches!(result, Ok(true)) {
            self.done = true;
        }
        if let Err(err) = &result {
            condemn(&self.tree, err);
        }
        result
    }

    fn step(&mut self) -> Result<bool, StoreError> {
        loop {
            if self.done {
                return Ok(false);
            }
            if let Some((block, at)) = &mut self.current {
                let index = if self.reverse {
                    (*at > 0).then(|| {
                        *at -= 1;
                        *at
                    })
                } else {
                    (*at < block.n).then(|| {
                        *at += 1;
                        *at - 1
                    })
                };
                if let Some(i) = index {
                    let (head, suffix) = block.key_parts(i)?;
                    self.key.clear();
                    self.key.extend_from_slice(head);
                    self.key.extend_from_slice(suffix);
                    self.value = block.ranges(i)?.2;
                    let past = if self.reverse {
                        self.key < self.lo
                    } else {
                        self.hi.as_ref().is_some_and(|hi| self.key > *hi)
                    };
                    return Ok(!past);
                }
            }
            let next = if self.reverse {
                self.blocks.next_back()
            } else {
                self.blocks.next()
            };
            let Some(next) = next else {
                return Ok(false);
            };
            let (_, bytes) = next.map_err(StoreError::sled)?;
            let block = Block::parse(self.run, bytes)?;
            let at = if self.reverse {
                match &self.hi {
                    Some(hi) => block.seek(hi, true)?,
                    None => block.n,
                }
            } else {
                block.seek(&self.lo, false)?
            };
            self.current = Some((block, at));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Writing

/// Writes one run's blocks as its entries come, in key order.
struct RunBuilder {
    tree: sled::Tree,
    id: u64,
    block: BlockBuilder,
    entries: u64,
    distinct: u64,
    bloom: Bloom,
    times: TimeSpan,
    prev_prefix: Vec<u8>,
    prev_key: Vec<u8>,
}

impl std::fmt::Debug for RunBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunBuilder")
            .field("id", &self.id)
            .field("entries", &self.entries)
            .finish_non_exhaustive()
    }
}

impl RunBuilder {
    /// `distinct_bound`: at least the number of distinct filter prefixes it will hold (sizes
    /// its filter).
    fn new(tree: sled::Tree, id: u64, distinct_bound: u64) -> RunBuilder {
        RunBuilder {
            tree,
            id,
            block: BlockBuilder::default(),
            entries: 0,
            distinct: 0,
            bloom: Bloom::for_keys(distinct_bound),
            times: TimeSpan::default(),
            prev_prefix: Vec::new(),
            prev_key: Vec::new(),
        }
    }

    fn add(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        if self.entries > 0 && self.prev_key == key {
            return Ok(());
        }
        let prefix = filter_prefix(key);
        if self.entries == 0 || prefix != &self.prev_prefix[..] {
            self.distinct += 1;
            self.bloom.insert(hash(prefix));
            self.prev_prefix.clear();
            self.prev_prefix.extend_from_slice(prefix);
        }
        if let Some(time) = entry_time(key) {
            self.times.add(time);
        }
        self.prev_key.clear();
        self.prev_key.extend_from_slice(key);
        self.entries += 1;
        self.block.add(key, value);
        if self.block.is_full() {
            self.write_block()?;
        }
        Ok(())
    }

    fn write_block(&mut self) -> Result<(), StoreError> {
        let (bytes, last) = self.block.finish();
        self.tree
            .insert(block_key(self.id, &last), bytes)
            .map_err(StoreError::sled)?;
        Ok(())
    }

    /// Writes the last block, the filter and the run's record (which makes it live); `None`
    /// for a run with no entries.
    fn finish(mut self, max_seq: u64) -> Result<Option<DiskRun>, StoreError> {
        if !self.block.is_empty() {
            self.write_block()?;
        }
        if self.entries == 0 {
            return Ok(None);
        }
        let run = DiskRun {
            id: self.id,
            entries: self.entries,
            distinct: self.distinct,
            max_seq,
            times: self.times,
            bloom: self.bloom,
        };
        run.write(&self.tree)?;
        Ok(Some(run))
    }
}

/// A merge in progress: advanced a slice at a time, so that indexing goes on between slices.
#[derive(Debug)]
struct Merge {
    runs: Vec<Arc<DiskRun>>,
    scan: Scan,
    builder: RunBuilder,
}

/// Changes the indexes: owned by the indexer thread.
#[derive(Debug)]
pub(crate) struct IndexWriter {
    index: Arc<Index>,
    db: sled::Db,
    sync: Option<FileSync>,
    mem: Vec<Arc<MemRun>>,
    mem_bloom: Arc<SharedBloom>,
    mem_entries: usize,
    disk: Vec<Arc<DiskRun>>,
    /// Runs merged away whose keys are deleted once no reader holds them.
    retired: Vec<Arc<DiskRun>>,
    merge: Option<Merge>,
    next_id: u64,
}

/// Opens the indexes of the index database: returns the reader side, the writer side and the
/// watermark of the last checkpoint. Deletes what a crash left of runs: keys of runs without a
/// record, and runs past the watermark (possible with fsync off: their events may be lost from
/// the log, and their seqs reused). A [`StoreError::Corrupt`] means the index database should
/// be rebuilt.
pub(crate) fn open(
    db: sled::Db,
    sync: Option<FileSync>,
) -> Result<(Arc<Index>, IndexWriter, u64), StoreError> {
    let tree = db.open_tree("index").map_err(StoreError::sled)?;
    let indexed = codec::indexed_seq(&tree)?;
    let mut disk = Vec::new();
    let mut next_id = 1u64;
    for item in tree.scan_prefix([RUN]) {
        let (key, value) = item.map_err(StoreError::sled)?;
        let id = key
            .get(1..)
            .and_then(codec::read_u64)
            .ok_or_else(|| corrupt(0, "run record with a bad key"))?;
        next_id = next_id.max(id.saturating_add(1));
        let run = DiskRun::read(&tree, id, &value)?;
        if run.max_seq > indexed {
            info!(
                run = id,
                max_seq = run.max_seq,
                indexed,
                "deleting an index run past the watermark"
            );
            delete_run(&tree, id)?;
        } else {
            disk.push(Arc::new(run));
        }
    }
    // Keys of runs without a record: a run cut short by a crash, or one merged away.
    let mut orphans = 0;
    for prefix in [FILTER, BLOCK] {
        let mut at = vec![prefix];
        loop {
            let found = tree
                .range(at.clone()..vec![prefix + 1])
                .next()
                .transpose()
                .map_err(StoreError::sled)?;
            let Some((key, _)) = found else { break };
            let id = key
                .get(1..9)
                .and_then(codec::read_u64)
                .ok_or_else(|| corrupt(0, "run key without a run id"))?;
            next_id = next_id.max(id.saturating_add(1));
            if !disk.iter().any(|r| r.id == id) {
                orphans += delete_run(&tree, id)?;
            }
            let (_, end) = run_range(prefix, id);
            match end {
                Bound::Excluded(next) if next.len() == 9 => at = next,
                _ => break,
            }
        }
    }
    if orphans > 0 {
        info!(keys = orphans, "deleted index keys a crash left behind");
    }
    let mem_bloom = Arc::new(SharedBloom::for_keys(MEMORY_BLOOM_KEYS));
    let index = Arc::new(Index {
        tree,
        view: ArcSwap::from_pointee(View {
            mem: Vec::new(),
            mem_bloom: Arc::clone(&mem_bloom),
            disk: disk.clone(),
        }),
    });
    let writer = IndexWriter {
        index: Arc::clone(&index),
        db,
        sync,
        mem: Vec::new(),
        mem_bloom,
        mem_entries: 0,
        disk,
        retired: Vec::new(),
        merge: None,
        next_id,
    };
    Ok((index, writer, indexed))
}

impl IndexWriter {
    /// Adds a batch of entries; readers see them when this returns.
    pub(crate) fn add(&mut self, batch: Batch) {
        if batch.len() == 0 {
            return;
        }
        let mut run = MemRun::new(batch, &self.mem_bloom);
        // Batches are small when the indexer keeps up (one per group commit): merge runs of
        // about one size, so that their sizes halve from the oldest on and readers look at a
        // few of them only.
        while let Some(last) = self.mem.last() {
            if last.len() > 2 * run.len() {
                break;
            }
            run = MemRun::merge(last, &run);
            self.mem.pop();
        }
        self.mem_entries = self.mem.iter().map(|r| r.len()).sum::<usize>() + run.len();
        self.mem.push(Arc::new(run));
        self.publish();
    }

    /// Entries added since the last checkpoint.
    pub(crate) fn memory_entries(&self) -> usize {
        self.mem_entries
    }

    /// Disk runs.
    pub(crate) fn disk_runs(&self) -> usize {
        self.disk.len()
    }

    fn publish(&self) {
        self.index.view.store(Arc::new(View {
            mem: self.mem.clone(),
            mem_bloom: Arc::clone(&self.mem_bloom),
            disk: self.disk.clone(),
        }));
    }

    /// Writes the memory runs out as one disk run and records `indexed` as the watermark a
    /// restart resumes from; both are durable when this returns. On failure the memory runs
    /// stay, for the next checkpoint.
    pub(crate) fn checkpoint(&mut self, indexed: u64) -> Result<(), StoreError> {
        let mut run = None;
        if !self.mem.is_empty() {
            let id = self.take_id();
            let written = self.write_memory_runs(id, indexed);
            match written {
                Ok(written) => run = written,
                Err(err) => {
                    self.discard(id);
                    return Err(err);
                }
            }
        }
        let tree = &self.index.tree;
        if let Err(err) = tree.insert(codec::INDEXED_KEY, &indexed.to_be_bytes()[..]) {
            if let Some(run) = run {
                self.discard(run.id);
            }
            return Err(StoreError::sled(err));
        }
        // From here the run stays, durable or not: sled's own periodic flush may already have
        // written the watermark, and without the run those events would be missing from the
        // indexes after a crash. If neither reaches the disk, the run is past the watermark at
        // the next open, which deletes it.
        let durable = self.make_durable();
        if let Some(run) = run {
            self.disk.push(Arc::new(run));
        }
        self.mem.clear();
        self.mem_entries = 0;
        self.mem_bloom = Arc::new(SharedBloom::for_keys(MEMORY_BLOOM_KEYS));
        self.publish();
        durable
    }

    fn write_memory_runs(&self, id: u64, indexed: u64) -> Result<Option<DiskRun>, StoreError> {
        let bound = self.mem.iter().map(|r| r.len() as u64).sum();
        let mut builder = RunBuilder::new(self.index.tree.clone(), id, bound);
        let mut merge = Scan::new(
            self.mem
                .iter()
                .map(|run| Source::Mem {
                    run: Arc::clone(run),
                    start: 0,
                    end: run.len(),
                    at: None,
                })
                .collect(),
            false,
        );
        while merge.advance()? {
            let (key, value) = merge.entry();
            builder.add(key, value)?;
        }
        builder.finish(indexed)
    }

    /// Deletes what was written of a run that is not live (best effort: what stays is deleted
    /// at the next open).
    fn discard(&self, id: u64) {
        if let Err(err) = delete_run(&self.index.tree, id) {
            tracing::warn!(run = id, error = %err, "could not delete an unfinished index run");
        }
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn make_durable(&mut self) -> Result<(), StoreError> {
        self.db.flush().map_err(StoreError::sled)?;
        if let Some(sync) = &mut self.sync {
            sync.sync().map_err(StoreError::Engine)?;
        }
        Ok(())
    }

    /// Whether merging has work: a merge under way, or a size tier full enough to start one.
    pub(crate) fn merge_pending(&self) -> bool {
        self.merge.is_some() || self.merge_candidates().is_some()
    }

    /// The runs of the smallest tier that holds at least [`MERGE_WIDTH`] of them.
    fn merge_candidates(&self) -> Option<Vec<Arc<DiskRun>>> {
        let mut tiers: Vec<u32> = self.disk.iter().map(|r| r.tier()).collect();
        tiers.sort_unstable();
        tiers.dedup();
        tiers.into_iter().find_map(|tier| {
            let runs: Vec<Arc<DiskRun>> = self
                .disk
                .iter()
                .filter(|r| r.tier() == tier)
                .take(2 * MERGE_WIDTH)
                .cloned()
                .collect();
            (runs.len() >= MERGE_WIDTH).then_some(runs)
        })
    }

    /// Advances the merge under way by up to `budget` entries, first starting one if a size
    /// tier is full. Returns whether a merge finished.
    pub(crate) fn merge_step(&mut self, budget: usize) -> Result<bool, StoreError> {
        if self.merge.is_none() {
            let Some(runs) = self.merge_candidates() else {
                return Ok(false);
            };
            let id = self.take_id();
            // Sized from the filters that exist (not from counts read from disk).
            let bound = runs
                .iter()
                .map(|r| {
                    r.distinct
                        .min((r.bloom.words.len() * 64 / BLOOM_BITS_PER_KEY) as u64)
                })
                .fold(0u64, u64::saturating_add);
            let tree = self.index.tree.clone();
            let scan = Scan::new(
                runs.iter()
                    .map(|run| Source::Disk(Box::new(DiskScan::new(&tree, run, &[], None, false))))
                    .collect(),
                false,
            );
            self.merge = Some(Merge {
                runs,
                scan,
                builder: RunBuilder::new(tree, id, bound),
            });
        }
        let Some(merge) = self.merge.as_mut() else {
            return Ok(false);
        };
        let mut done = true;
        let mut failed = None;
        for _ in 0..budget.max(1) {
            match merge.scan.advance() {
                Ok(true) => {
                    let (key, value) = merge.scan.entry();
                    if let Err(err) = merge.builder.add(key, value) {
                        failed = Some(err);
                        break;
                    }
                }
                Ok(false) => {
                    done = true;
                    break;
                }
                Err(err) => {
                    failed = Some(err);
                    break;
                }
            }
            done = false;
        }
        if let Some(err) = failed {
            self.abandon_merge();
            return Err(err);
        }
        if !done {
            return Ok(false);
        }
        let Some(Merge { runs, builder, .. }) = self.merge.take() else {
            return Ok(false);
        };
        let id = builder.id;
        let max_seq = runs.iter().map(|r| r.max_seq).max().unwrap_or(0);
        let merged = match builder.finish(max_seq) {
            Ok(merged) => merged,
            Err(err) => {
                self.discard(id);
                return Err(err);
            }
        };
        // The merged run is live; now the ones it replaces go. A crash (or an error) in
        // between leaves some of them live too, which only means entries found twice and
        // merged into one.
        let mut removed = Vec::new();
        let mut failed = None;
        for run in &runs {
            match self.index.tree.remove(run_key(run.id)) {
                Ok(_) => removed.push(Arc::clone(run)),
                Err(err) => {
                    failed = Some(StoreError::sled(err));
                    break;
                }
            }
        }
        let durable = self.make_durable();
        debug!(
            runs = removed.len(),
            entries = merged.as_ref().map_or(0, |r| r.entries),
            "merged index runs"
        );
        self.disk
            .retain(|r| !removed.iter().any(|old| old.id == r.id));
        if let Some(merged) = merged {
            self.disk.push(Arc::new(merged));
        }
        self.publish();
        // Their keys are deleted once durable: until then a crash could bring a record back.
        if durable.is_ok() {
            self.retired.extend(removed);
        }
        match failed {
            Some(err) => Err(err),
            None => durable.map(|()| true),
        }
    }

    /// Gives up the merge under way, deleting what it wrote.
    pub(crate) fn abandon_merge(&mut self) {
        if let Some(merge) = self.merge.take() {
            let id = merge.builder.id;
            drop(merge);
            self.discard(id);
        }
    }

    /// Deletes the keys of merged-away runs that no reader holds any more.
    pub(crate) fn collect_garbage(&mut self) -> Result<(), StoreError> {
        let mut result = Ok(());
        let mut keep = Vec::new();
        for run in std::mem::take(&mut self.retired) {
            // The published view no longer has it: once this is the last handle, no reader can
            // reach it.
            if result.is_ok() && Arc::strong_count(&run) == 1 {
                if let Err(err) = delete_run(&self.index.tree, run.id) {
                    result = Err(err);
                    keep.push(run);
                }
            } else {
                keep.push(run);
            }
        }
        self.retired = keep;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(prefix: &str, time: u64, seq: u64) -> Vec<u8> {
        let mut key = vec![codec::BY_KEY];
        key.extend_from_slice(prefix.as_bytes());
        key.extend_from_slice(&time.to_be_bytes());
        key.extend_from_slice(&seq.to_be_bytes());
        key
    }

    fn prefix(p: &str) -> Vec<u8> {
        let mut key = vec![codec::BY_KEY];
        key.extend_from_slice(p.as_bytes());
        key
    }

    fn bounds(p: &str) -> (Vec<u8>, Vec<u8>) {
        let lo = prefix(p);
        let mut hi = prefix(p);
        hi.extend_from_slice(&[0xff; 16]);
        (lo, hi)
    }

    fn scan_seqs(index: &Index, p: &str, reverse: bool) -> Vec<u64> {
        let (lo, hi) = bounds(p);
        index
            .scan(&prefix(p), &lo, &hi, reverse)
            .map(|e| {
                let (k, _) = e.unwrap();
                codec::read_u64(&k[k.len() - 8..]).unwrap()
            })
            .collect()
    }

    fn open_in(dir: &std::path::Path) -> (sled::Db, Arc<Index>, IndexWriter, u64) {
        let db = sled::Config::new().path(dir).open().unwrap();
        let (index, writer, indexed) = open(db.clone(), None).unwrap();
        (db, index, writer, indexed)
    }

    #[test]
    fn blocks_find_every_key_and_no_other() {
        let mut builder = BlockBuilder::default();
        let keys: Vec<Vec<u8>> = (0..200u64).map(|i| key("abc", i * 2, i)).collect();
        for (i, k) in keys.iter().enumerate() {
            builder.add(k, &[i as u8]);
        }
        let (bytes, last) = builder.finish();
        assert_eq!(&last, keys.last().unwrap());
        let block = Block::parse(1, sled::IVec::from(bytes)).unwrap();
        assert_eq!(block.n, 200);
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(block.seek(k, false).unwrap(), i);
            assert_eq!(block.seek(k, true).unwrap(), i + 1);
            let (head, suffix) = block.key_parts(i).unwrap();
            assert_eq!([head, suffix].concat(), *k);
            assert_eq!(block.value(i).unwrap(), &[i as u8]);
        }
        // Between two keys, and before and after all of them.
        assert_eq!(block.seek(&key("abc", 3, 0), false).unwrap(), 2);
        assert_eq!(block.seek(&prefix("ab"), false).unwrap(), 0);
        assert_eq!(block.seek(&prefix("abd"), false).unwrap(), 200);
        assert!(Block::parse(1, sled::IVec::from(&[0, 0, 0, 9][..])).is_err());
    }

    #[test]
    fn bloom_filters_hold_what_was_put_in() {
        let mut bloom = Bloom::for_keys(1000);
        for i in 0..1000u64 {
            bloom.insert(hash(&i.to_be_bytes()));
        }
        assert!((0..1000u64).all(|i| bloom.may_contain(hash(&i.to_be_bytes()))));
        let false_positives = (1000..101_000u64)
            .filter(|i| bloom.may_contain(hash(&i.to_be_bytes())))
            .count();
        assert!(false_positives < 3000, "{false_positives} false positives");
    }

    #[test]
    fn scans_merge_memory_and_disk_runs_in_order_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, index, mut writer, indexed) = open_in(dir.path());
        assert_eq!(indexed, 0);
        // Three batches, the second one written out, all interleaved in key order; another
        // prefix beside them, and one entry present twice (re-indexed).
        writer.add(
            (0..100)
                .step_by(3)
                .map(|s| (key("a", s, s), vec![]))
                .collect(),
        );
        writer.add(
            (1..100)
                .step_by(3)
                .map(|s| (key("a", s, s), vec![]))
                .collect(),
        );
        writer.checkpoint(10).unwrap();
        writer.add(
            (2..100)
                .step_by(3)
                .chain([3])
                .map(|s| (key("a", s, s), vec![]))
                .chain((0..50).map(|s| (key("b", s, s), vec![])))
                .collect(),
        );
        let forward = scan_seqs(&index, "a", false);
        assert_eq!(forward, (0..100).collect::<Vec<u64>>());
        let backward = scan_seqs(&index, "a", true);
        assert_eq!(backward, (0..100).rev().collect::<Vec<u64>>());
        assert_eq!(scan_seqs(&index, "b", false).len(), 50);
        assert!(scan_seqs(&index, "c", false).is_empty());
        // A time range inside one prefix.
        let mut lo = prefix("a");
        lo.extend_from_slice(&10u64.to_be_bytes());
        let mut hi = prefix("a");
        hi.extend_from_slice(&20u64.to_be_bytes());
        hi.extend_from_slice(&[0xff; 8]);
        let got: Vec<u64> = index
            .scan(&prefix("a"), &lo, &hi, true)
            .map(|e| codec::read_u64(&e.unwrap().0[10..18]).unwrap())
            .collect();
        assert_eq!(got, (10..=20).rev().collect::<Vec<u64>>());
    }

    #[test]
    fn dedup_entries_are_found_in_every_kind_of_run() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, index, mut writer, _) = open_in(dir.path());
        let dedup = |i: u64| {
            let mut k = vec![b'D'];
            k.extend_from_slice(&xxh3_64(&i.to_be_bytes()).to_be_bytes());
            k
        };
        writer.add(
            (0..5000)
                .map(|i| (dedup(i), i.to_be_bytes().to_vec()))
                .collect(),
        );
        writer.checkpoint(5000).unwrap();
        writer.add(
            (5000..6000)
                .map(|i| (dedup(i), i.to_be_bytes().to_vec()))
                .collect(),
        );
        for i in [0, 1, 2500, 4999, 5000, 5999] {
            assert_eq!(
                index.get(&dedup(i)).unwrap(),
                Some(i.to_be_bytes().to_vec())
            );
        }
        for i in 6000..7000 {
            assert_eq!(index.get(&dedup(i)).unwrap(), None);
        }
    }

    /// Fills one size tier: [`MERGE_WIDTH`] disk runs of `n` entries each under prefix `p`.
    fn fill_a_tier(writer: &mut IndexWriter, p: &str, n: u64) {
        for batch in 0..MERGE_WIDTH as u64 {
            writer.add((0..n).map(|i| (key(p, i, batch * n + i), vec![])).collect());
            writer.checkpoint(batch + 1).unwrap();
        }
    }

    #[test]
    fn runs_of_a_tier_are_merged_and_their_blocks_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let (db, index, mut writer, _) = open_in(dir.path());
        fill_a_tier(&mut writer, "m", 1000);
        assert_eq!(writer.disk_runs(), MERGE_WIDTH);
        assert!(writer.merge_pending());
        // A reader holding a scan keeps the old runs' blocks alive.
        let mut held = index.scan(&prefix("m"), &bounds("m").0, &bounds("m").1, false);
        // A slice at a time: readers see the old runs until the merge is done.
        let mut steps = 0;
        while !writer.merge_step(500).unwrap() {
            steps += 1;
            assert_eq!(writer.disk_runs(), MERGE_WIDTH);
            assert_eq!(scan_seqs(&index, "m", false).len(), 4000);
        }
        assert!(steps >= 7, "{steps} steps");
        assert_eq!(writer.disk_runs(), 1);
        assert!(!writer.merge_pending());
        writer.collect_garbage().unwrap();
        assert_eq!(held.by_ref().count(), 4000);
        drop(held);
        writer.collect_garbage().unwrap();
        let all = scan_seqs(&index, "m", false);
        assert_eq!(all.len(), 4000);
        let blocks = db.open_tree("index").unwrap().scan_prefix([BLOCK]).count();
        // Only the merged run's blocks are left.
        let (start, end) = run_range(BLOCK, writer.disk.first().unwrap().id);
        let merged_blocks = db
            .open_tree("index")
            .unwrap()
            .range((Bound::Included(start), end))
            .count();
        assert_eq!(blocks, merged_blocks);
    }

    #[test]
    fn a_merge_cut_short_and_orphan_blocks_leave_the_answers_whole() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (db, _index, mut writer, _) = open_in(dir.path());
            fill_a_tier(&mut writer, "o", 3000);
            // Stopped halfway: what it wrote is deleted.
            assert!(!writer.merge_step(5000).unwrap());
            writer.abandon_merge();
            assert_eq!(writer.disk_runs(), MERGE_WIDTH);
            // Another half-done merge, left as a crash would leave it.
            assert!(!writer.merge_step(5000).unwrap());
            drop(writer);
            // Blocks of a run with no record, as a crash would leave them.
            let tree = db.open_tree("index").unwrap();
            tree.insert(block_key(999, b"zzz"), &b"garbage"[..])
                .unwrap();
            db.flush().unwrap();
        }
        let (db, index, writer, indexed) = open_in(dir.path());
        assert_eq!(indexed, MERGE_WIDTH as u64);
        assert_eq!(writer.disk_runs(), MERGE_WIDTH);
        assert_eq!(scan_seqs(&index, "o", false).len(), 3000 * MERGE_WIDTH);
        let tree = db.open_tree("index").unwrap();
        assert!(tree.get(block_key(999, b"zzz")).unwrap().is_none());
        assert!(writer.next_id > 999);
    }

    #[test]
    fn a_run_past_the_watermark_is_dropped_at_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (db, _index, mut writer, _) = open_in(dir.path());
            writer.add((0..10).map(|s| (key("w", s, s), vec![])).collect());
            writer.checkpoint(10).unwrap();
            writer.add((10..20).map(|s| (key("w", s, s), vec![])).collect());
            writer.checkpoint(20).unwrap();
            // As if the watermark of the second checkpoint had not reached the disk.
            let tree = db.open_tree("index").unwrap();
            tree.insert(codec::INDEXED_KEY, &10u64.to_be_bytes()[..])
                .unwrap();
            db.flush().unwrap();
        }
        let (_db, index, writer, indexed) = open_in(dir.path());
        assert_eq!(indexed, 10);
        assert_eq!(writer.disk_runs(), 1);
        assert_eq!(scan_seqs(&index, "w", false), (0..10).collect::<Vec<u64>>());
    }

    #[test]
    fn small_batches_are_merged_in_memory_and_stay_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, index, mut writer, _) = open_in(dir.path());
        // Overlapping batches of 15 entries, as when the indexer keeps up with single events.
        for start in (0..1000u64).step_by(10) {
            writer.add(
                (start..start + 15)
                    .map(|s| (key("s", s, s), vec![]))
                    .collect(),
            );
        }
        assert!(writer.mem.len() <= 12, "{} memory runs", writer.mem.len());
        assert_eq!(
            scan_seqs(&index, "s", false),
            (0..1005).collect::<Vec<u64>>()
        );
        assert!(writer.memory_entries() >= 1005);
        writer.checkpoint(1).unwrap();
        assert_eq!(writer.memory_entries(), 0);
        assert_eq!(
            scan_seqs(&index, "s", true),
            (0..1005).rev().collect::<Vec<u64>>()
        );
    }
}
