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
//! | `R`, run id u64 BE                   | the run's record: entries, filter              |
//! | `B`, run id u64 BE, block's last key | a block of the run's entries                   |
//!
//! Crash safety rests on sled recovering a prefix of its writes (as the log does): a run's
//! blocks are written before its record, and a merged run's record before the records of the
//! runs it replaces are removed; blocks whose run has no record are deleted at open. A run
//! written but not yet covered by the watermark only holds entries that re-indexing writes
//! again: equal entries are merged into one wherever runs meet.

use std::cmp::Ordering;
use std::ops::Bound;
use std::sync::Arc;

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
/// A block is closed once its encoded entries pass this size.
const BLOCK_BYTES: usize = 4096;
/// Runs in one size tier that trigger a merge of that tier.
const MERGE_WIDTH: usize = 4;
/// Bloom filter bits per distinct filter prefix (about 1 % false positives with 7 probes).
const BLOOM_BITS_PER_KEY: usize = 10;
const BLOOM_PROBES: u32 = 7;
const RUN_RECORD_V1: u8 = 1;

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

#[derive(Debug, Clone)]
struct Bloom {
    words: Vec<u64>,
}

impl Bloom {
    fn for_keys(n: u64) -> Bloom {
        let bits = usize::try_from(n)
            .unwrap_or(usize::MAX / 2)
            .saturating_mul(BLOOM_BITS_PER_KEY)
            .max(64);
        Bloom {
            words: vec![0; bits.div_ceil(64)],
        }
    }

    /// Probe `i` of `hash`: a word and the bit in it (double hashing).
    fn probe(&self, hash: u64, i: u64) -> (usize, u64) {
        let n = self.words.len() as u64 * 64;
        let step = hash.rotate_left(32) | 1;
        let bit = hash.wrapping_add(i.wrapping_mul(step)) % n;
        ((bit / 64) as usize, 1u64 << (bit % 64))
    }

    fn insert(&mut self, hash: u64) {
        for i in 0..u64::from(BLOOM_PROBES) {
            let (word, mask) = self.probe(hash, i);
            self.words[word] |= mask;
        }
    }

    fn may_contain(&self, hash: u64) -> bool {
        (0..u64::from(BLOOM_PROBES)).all(|i| {
            let (word, mask) = self.probe(hash, i);
            self.words[word] & mask != 0
        })
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
        Ok(Block {
            bytes,
            n,
            data,
            run,
        })
    }

    /// Entry `i`: the length of the first key's prefix it shares, its key's suffix, its value.
    fn parts(&self, i: usize) -> Result<(usize, &[u8], &[u8]), StoreError> {
        let bad = || corrupt(self.run, "entry out of its block");
        let at = 4 + 4 * i;
        let offset = self
            .bytes
            .get(at..at + 4)
            .and_then(read_u32)
            .ok_or_else(bad)? as usize;
        let mut r = self.data.checked_add(offset).ok_or_else(bad)?;
        let mut take = |len: usize| -> Result<&[u8], StoreError> {
            let slice = self.bytes.get(r..r.checked_add(len).ok_or_else(bad)?);
            r += len;
            slice.ok_or_else(bad)
        };
        let shared = read_u32(take(4)?).ok_or_else(bad)? as usize;
        let suffix_len = read_u32(take(4)?).ok_or_else(bad)? as usize;
        let suffix = take(suffix_len)?;
        let value_len = read_u32(take(4)?).ok_or_else(bad)? as usize;
        let value = take(value_len)?;
        Ok((shared, suffix, value))
    }

    fn first_key(&self) -> Result<&[u8], StoreError> {
        self.parts(0).map(|(_, key, _)| key)
    }

    /// Compares entry `i`'s key with `target`, without building the key.
    fn cmp(&self, i: usize, target: &[u8]) -> Result<Ordering, StoreError> {
        let (shared, suffix, _) = self.parts(i)?;
        let head = self
            .first_key()?
            .get(..shared)
            .ok_or_else(|| corrupt(self.run, "shared prefix longer than the first key"))?;
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

    fn entry(&self, i: usize) -> Result<Entry, StoreError> {
        let (shared, suffix, value) = self.parts(i)?;
        let head = self
            .first_key()?
            .get(..shared)
            .ok_or_else(|| corrupt(self.run, "shared prefix longer than the first key"))?;
        let mut key = Vec::with_capacity(shared + suffix.len());
        key.extend_from_slice(head);
        key.extend_from_slice(suffix);
        Ok((key, value.to_vec()))
    }

    /// The first entry whose key is at least (`strict`: more than) `target`.
    fn seek(&self, target: &[u8], strict: bool) -> Result<usize, StoreError> {
        let (mut lo, mut hi) = (0, self.n);
        while lo < hi {
            let mid = (lo + hi) / 2;
            let before = match self.cmp(mid, target)? {
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

fn block_key(id: u64, last: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(9 + last.len());
    key.push(BLOCK);
    key.extend_from_slice(&id.to_be_bytes());
    key.extend_from_slice(last);
    key
}

/// The bounds of all of a run's blocks.
fn run_blocks(id: u64) -> (Vec<u8>, Bound<Vec<u8>>) {
    let end = match id.checked_add(1) {
        Some(next) => Bound::Excluded(block_key(next, &[])),
        None => Bound::Excluded(vec![BLOCK + 1]),
    };
    (block_key(id, &[]), end)
}

// ---------------------------------------------------------------------------------------------
// Runs

/// Entries of recent batches, not yet written out: sorted, unique keys.
#[derive(Debug)]
struct MemRun {
    entries: Vec<Entry>,
    bloom: Bloom,
}

impl MemRun {
    fn new(mut entries: Vec<Entry>) -> MemRun {
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        entries.dedup_by(|a, b| a.0 == b.0);
        let mut bloom = Bloom::for_keys(entries.len() as u64);
        for (key, _) in &entries {
            bloom.insert(hash(filter_prefix(key)));
        }
        MemRun { entries, bloom }
    }
}

/// A run in sled: its id, size, and filter.
#[derive(Debug)]
struct DiskRun {
    id: u64,
    entries: u64,
    distinct: u64,
    bloom: Bloom,
}

impl DiskRun {
    fn tier(&self) -> u32 {
        // Size classes of factor 4.
        (64 - self.entries.leading_zeros()) / 2
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(21 + 8 * self.bloom.words.len());
        out.push(RUN_RECORD_V1);
        out.extend_from_slice(&self.entries.to_be_bytes());
        out.extend_from_slice(&self.distinct.to_be_bytes());
        out.extend_from_slice(&len32(self.bloom.words.len()).to_be_bytes());
        for word in &self.bloom.words {
            out.extend_from_slice(&word.to_le_bytes());
        }
        out
    }

    fn decode(id: u64, bytes: &[u8]) -> Result<DiskRun, StoreError> {
        let bad = || corrupt(id, "unreadable run record");
        if bytes.first() != Some(&RUN_RECORD_V1) {
            return Err(bad());
        }
        let entries = bytes.get(1..9).and_then(codec::read_u64).ok_or_else(bad)?;
        let distinct = bytes.get(9..17).and_then(codec::read_u64).ok_or_else(bad)?;
        let n = bytes.get(17..21).and_then(read_u32).ok_or_else(bad)? as usize;
        let words = bytes
            .get(21..)
            .filter(|w| w.len() == n * 8)
            .ok_or_else(bad)?;
        if n == 0 {
            return Err(bad());
        }
        let words = words
            .chunks_exact(8)
            .map(|w| w.try_into().map(u64::from_le_bytes))
            .collect::<Result<Vec<u64>, _>>()
            .map_err(|_| bad())?;
        Ok(DiskRun {
            id,
            entries,
            distinct,
            bloom: Bloom { words },
        })
    }
}

/// What readers see: the memory runs (oldest first) and the disk runs.
#[derive(Debug, Default)]
struct View {
    mem: Vec<Arc<MemRun>>,
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
    /// The value of `key`, looked up whole (dedup entries).
    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let view = self.view.load_full();
        let h = hash(filter_prefix(key));
        for run in view.mem.iter().rev() {
            if run.bloom.may_contain(h)
                && let Ok(i) = run.entries.binary_search_by(|(k, _)| k[..].cmp(key))
            {
                return Ok(Some(run.entries[i].1.clone()));
            }
        }
        for run in view.disk.iter().rev() {
            if !run.bloom.may_contain(h) {
                continue;
            }
            let (_, end) = run_blocks(run.id);
            let first = self
                .tree
                .range((Bound::Included(block_key(run.id, key)), end))
                .next()
                .transpose()
                .map_err(StoreError::sled)?;
            if let Some((_, bytes)) = first {
                let block = Block::parse(run.id, bytes)?;
                let i = block.seek(key, false)?;
                if i < block.n && block.cmp(i, key)? == Ordering::Equal {
                    return Ok(Some(block.entry(i)?.1));
                }
            }
        }
        Ok(None)
    }

    /// The entries with keys in `lo..=hi`, in key order (`reverse`: descending), every one of
    /// which has `prefix` as its [`filter_prefix`].
    pub(crate) fn scan(&self, prefix: &[u8], lo: &[u8], hi: &[u8], reverse: bool) -> Scan {
        let view = self.view.load_full();
        let h = hash(prefix);
        let mut sources = Vec::new();
        for run in &view.mem {
            if run.bloom.may_contain(h) {
                let start = run.entries.partition_point(|(k, _)| k[..] < *lo);
                let end = run.entries.partition_point(|(k, _)| k[..] <= *hi);
                if start < end {
                    sources.push(Source::Mem {
                        run: Arc::clone(run),
                        start,
                        end,
                    });
                }
            }
        }
        for run in &view.disk {
            if run.bloom.may_contain(h) {
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

/// A merge, in key order, of the scans of several runs; equal entries come out once.
#[derive(Debug)]
pub(crate) struct Scan {
    sources: Vec<Source>,
    heads: Vec<Option<Entry>>,
    reverse: bool,
    last: Option<Vec<u8>>,
    failed: Option<StoreError>,
    started: bool,
}

#[derive(Debug)]
enum Source {
    Mem {
        run: Arc<MemRun>,
        /// The entries left are `start..end`.
        start: usize,
        end: usize,
    },
    Disk(Box<DiskScan>),
}

impl Source {
    fn next(&mut self, reverse: bool) -> Option<Result<Entry, StoreError>> {
        match self {
            Source::Mem { run, start, end } => {
                if start >= end {
                    return None;
                }
                let i = if reverse {
                    *end -= 1;
                    *end
                } else {
                    *start += 1;
                    *start - 1
                };
                Some(Ok(run.entries[i].clone()))
            }
            Source::Disk(scan) => scan.next(),
        }
    }
}

impl Scan {
    fn new(sources: Vec<Source>, reverse: bool) -> Scan {
        Scan {
            heads: Vec::with_capacity(sources.len()),
            sources,
            reverse,
            last: None,
            failed: None,
            started: false,
        }
    }

    fn pull(&mut self, i: usize) -> Option<Entry> {
        match self.sources[i].next(self.reverse)? {
            Ok(entry) => Some(entry),
            Err(err) => {
                self.failed.get_or_insert(err);
                None
            }
        }
    }
}

impl Iterator for Scan {
    type Item = Result<Entry, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if !self.started {
            self.started = true;
            for i in 0..self.sources.len() {
                let head = self.pull(i);
                self.heads.push(head);
            }
        }
        loop {
            if let Some(err) = self.failed.take() {
                self.heads.clear();
                return Some(Err(err));
            }
            let mut best: Option<usize> = None;
            for (i, head) in self.heads.iter().enumerate() {
                let Some((key, _)) = head else { continue };
                let better = match best.and_then(|b| self.heads[b].as_ref()) {
                    None => true,
                    Some((best_key, _)) => {
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
            let i = best?;
            let next = self.pull(i);
            let entry = std::mem::replace(&mut self.heads[i], next)?;
            if self.last.as_deref() == Some(&entry.0[..]) {
                continue;
            }
            self.last = Some(entry.0.clone());
            return Some(Ok(entry));
        }
    }
}

/// A scan of one disk run, block by block.
struct DiskScan {
    run: u64,
    /// Held so that a merge does not delete the run's blocks under this scan.
    _keep: Arc<DiskRun>,
    lo: Vec<u8>,
    hi: Option<Vec<u8>>,
    reverse: bool,
    /// The blocks to read, from their far end when `reverse`.
    blocks: sled::Iter,
    /// The block being read and the next entry to read in it (reverse: one past it).
    current: Option<(Block, usize)>,
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
        let (start, end) = run_blocks(run);
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
            _keep: Arc::clone(keep),
            lo: lo.to_vec(),
            hi: hi.map(<[u8]>::to_vec),
            reverse,
            blocks,
            current: None,
            done: false,
            failed,
        }
    }

    fn next(&mut self) -> Option<Result<Entry, StoreError>> {
        if let Some(err) = self.failed.take() {
            self.done = true;
            return Some(Err(err));
        }
        loop {
            if self.done {
                return None;
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
                    let entry = match block.entry(i) {
                        Ok(entry) => entry,
                        Err(err) => {
                            self.done = true;
                            return Some(Err(err));
                        }
                    };
                    let past = if self.reverse {
                        entry.0 < self.lo
                    } else {
                        self.hi.as_ref().is_some_and(|hi| entry.0 > *hi)
                    };
                    if past {
                        self.done = true;
                        return None;
                    }
                    return Some(Ok(entry));
                }
                self.current = None;
            }
            let next = if self.reverse {
                self.blocks.next_back()
            } else {
                self.blocks.next()
            };
            let Some(next) = next else {
                self.done = true;
                return None;
            };
            let positioned = next
                .map_err(StoreError::sled)
                .and_then(|(_, bytes)| Block::parse(self.run, bytes))
                .and_then(|block| {
                    let at = if self.reverse {
                        match &self.hi {
                            Some(hi) => block.seek(hi, true)?,
                            None => block.n,
                        }
                    } else {
                        block.seek(&self.lo, false)?
                    };
                    Ok((block, at))
                });
            match positioned {
                Ok(current) => self.current = Some(current),
                Err(err) => {
                    self.done = true;
                    return Some(Err(err));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Writing

/// Writes one run's blocks as its entries come, in key order.
struct RunBuilder<'a> {
    tree: &'a sled::Tree,
    id: u64,
    block: BlockBuilder,
    entries: u64,
    distinct: u64,
    bloom: Bloom,
    prev_prefix: Vec<u8>,
    prev_key: Option<Vec<u8>>,
}

impl<'a> RunBuilder<'a> {
    /// `distinct_bound`: at least the number of distinct filter prefixes it will hold (sizes
    /// its filter).
    fn new(tree: &'a sled::Tree, id: u64, distinct_bound: u64) -> RunBuilder<'a> {
        RunBuilder {
            tree,
            id,
            block: BlockBuilder::default(),
            entries: 0,
            distinct: 0,
            bloom: Bloom::for_keys(distinct_bound),
            prev_prefix: Vec::new(),
            prev_key: None,
        }
    }

    fn add(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        if self.prev_key.as_deref() == Some(key) {
            return Ok(());
        }
        let prefix = filter_prefix(key);
        if self.entries == 0 || prefix != &self.prev_prefix[..] {
            self.distinct += 1;
            self.bloom.insert(hash(prefix));
            self.prev_prefix.clear();
            self.prev_prefix.extend_from_slice(prefix);
        }
        self.prev_key = Some(key.to_vec());
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

    /// Writes the last block and the run's record; `None` for a run with no entries.
    fn finish(mut self) -> Result<Option<DiskRun>, StoreError> {
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
            bloom: self.bloom,
        };
        self.tree
            .insert(run_key(run.id), run.encode())
            .map_err(StoreError::sled)?;
        Ok(Some(run))
    }
}

/// Changes the indexes: owned by the indexer thread.
#[derive(Debug)]
pub(crate) struct IndexWriter {
    index: Arc<Index>,
    db: sled::Db,
    sync: Option<FileSync>,
    mem: Vec<Arc<MemRun>>,
    disk: Vec<Arc<DiskRun>>,
    /// Runs merged away whose blocks are deleted once no reader holds them.
    retired: Vec<Arc<DiskRun>>,
    next_id: u64,
}

/// Opens the indexes of the index database: returns the reader side, the writer side and the
/// watermark of the last checkpoint. Deletes the blocks of runs a crash left without a record.
pub(crate) fn open(
    db: sled::Db,
    sync: Option<FileSync>,
) -> Result<(Arc<Index>, IndexWriter, u64), StoreError> {
    let tree = db.open_tree("index").map_err(StoreError::sled)?;
    let mut disk = Vec::new();
    for item in tree.scan_prefix([RUN]) {
        let (key, value) = item.map_err(StoreError::sled)?;
        let id = key
            .get(1..)
            .and_then(codec::read_u64)
            .ok_or_else(|| corrupt(0, "run record with a bad key"))?;
        disk.push(Arc::new(DiskRun::decode(id, &value)?));
    }
    let mut next_id = disk.iter().map(|r| r.id + 1).max().unwrap_or(1);
    // Blocks of runs without a record: a run cut short by a crash, or one merged away.
    let mut at = vec![BLOCK];
    let mut orphans = 0;
    loop {
        let found = tree
            .range(at.clone()..vec![BLOCK + 1])
            .next()
            .transpose()
            .map_err(StoreError::sled)?;
        let Some((key, _)) = found else { break };
        let id = key
            .get(1..9)
            .and_then(codec::read_u64)
            .ok_or_else(|| corrupt(0, "block with a bad key"))?;
        next_id = next_id.max(id.saturating_add(1));
        if !disk.iter().any(|r| r.id == id) {
            orphans += delete_blocks(&tree, id)?;
        }
        match id.checked_add(1) {
            Some(next) => at = block_key(next, &[]),
            None => break,
        }
    }
    if orphans > 0 {
        info!(blocks = orphans, "deleted index blocks a crash left behind");
    }
    let indexed = codec::indexed_seq(&tree)?;
    let index = Arc::new(Index {
        tree,
        view: ArcSwap::from_pointee(View {
            mem: Vec::new(),
            disk: disk.clone(),
        }),
    });
    let writer = IndexWriter {
        index: Arc::clone(&index),
        db,
        sync,
        mem: Vec::new(),
        disk,
        retired: Vec::new(),
        next_id,
    };
    Ok((index, writer, indexed))
}

fn delete_blocks(tree: &sled::Tree, id: u64) -> Result<usize, StoreError> {
    let (start, end) = run_blocks(id);
    let mut n = 0;
    for key in tree.range((Bound::Included(start), end)).keys() {
        tree.remove(key.map_err(StoreError::sled)?)
            .map_err(StoreError::sled)?;
        n += 1;
    }
    Ok(n)
}

impl IndexWriter {
    /// Adds a batch of entries; readers see them when this returns.
    pub(crate) fn add(&mut self, entries: Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
        self.mem.push(Arc::new(MemRun::new(entries)));
        self.publish();
    }

    /// Batches added since the last checkpoint.
    pub(crate) fn memory_runs(&self) -> usize {
        self.mem.len()
    }

    fn publish(&self) {
        self.index.view.store(Arc::new(View {
            mem: self.mem.clone(),
            disk: self.disk.clone(),
        }));
    }

    /// Writes the memory runs out as one disk run and records `indexed` as the watermark a
    /// restart resumes from; both are durable when this returns.
    pub(crate) fn checkpoint(&mut self, indexed: u64) -> Result<(), StoreError> {
        let tree = self.index.tree.clone();
        let mut run = None;
        if !self.mem.is_empty() {
            let bound = self.mem.iter().map(|r| r.entries.len() as u64).sum();
            let id = self.take_id();
            let mut builder = RunBuilder::new(&tree, id, bound);
            let mut merge = Scan::new(
                self.mem
                    .iter()
                    .map(|run| Source::Mem {
                        run: Arc::clone(run),
                        start: 0,
                        end: run.entries.len(),
                    })
                    .collect(),
                false,
            );
            for entry in &mut merge {
                let (key, value) = entry?;
                builder.add(&key, &value)?;
            }
            run = builder.finish()?;
        }
        tree.insert(codec::INDEXED_KEY, &indexed.to_be_bytes()[..])
            .map_err(StoreError::sled)?;
        self.make_durable()?;
        if let Some(run) = run {
            self.disk.push(Arc::new(run));
        }
        self.mem.clear();
        self.publish();
        Ok(())
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

    /// Whether some size tier holds enough runs to be merged.
    pub(crate) fn wants_merge(&self) -> bool {
        self.merge_candidates().is_some()
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

    /// Merges the runs of one size tier into one run, if a tier is full. Gives up (deleting what
    /// it wrote) as soon as `stop()` says so. Returns whether it merged.
    pub(crate) fn merge_step(&mut self, stop: impl Fn() -> bool) -> Result<bool, StoreError> {
        let Some(runs) = self.merge_candidates() else {
            return Ok(false);
        };
        let tree = self.index.tree.clone();
        let id = self.take_id();
        let bound = runs.iter().map(|r| r.distinct).sum();
        let mut builder = RunBuilder::new(&tree, id, bound);
        let mut merge = Scan::new(
            runs.iter()
                .map(|run| Source::Disk(Box::new(DiskScan::new(&tree, run, &[], None, false))))
                .collect(),
            false,
        );
        let mut n = 0u64;
        for entry in &mut merge {
            let (key, value) = entry?;
            builder.add(&key, &value)?;
            n += 1;
            if n % 4096 == 0 && stop() {
                drop(builder);
                delete_blocks(&tree, id)?;
                return Ok(false);
            }
        }
        let merged = builder.finish()?;
        // The new run's record is written; now the old ones go. A crash in between leaves
        // both, which only means entries found twice and merged into one.
        for run in &runs {
            tree.remove(run_key(run.id)).map_err(StoreError::sled)?;
        }
        self.make_durable()?;
        debug!(
            runs = runs.len(),
            entries = merged.as_ref().map_or(0, |r| r.entries),
            "merged index runs"
        );
        self.disk.retain(|r| !runs.iter().any(|old| old.id == r.id));
        if let Some(merged) = merged {
            self.disk.push(Arc::new(merged));
        }
        self.publish();
        self.retired.extend(runs);
        Ok(true)
    }

    /// Deletes the blocks of merged-away runs that no reader holds any more.
    pub(crate) fn collect_garbage(&mut self) -> Result<(), StoreError> {
        let mut keep = Vec::new();
        for run in std::mem::take(&mut self.retired) {
            // The published view no longer has it: once this is the last handle, no reader can
            // reach it.
            if Arc::strong_count(&run) == 1 {
                delete_blocks(&self.index.tree, run.id)?;
            } else {
                keep.push(run);
            }
        }
        self.retired = keep;
        Ok(())
    }

    /// Disk runs, for logs.
    pub(crate) fn disk_runs(&self) -> usize {
        self.disk.len()
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
            assert_eq!(block.entry(i).unwrap(), (k.clone(), vec![i as u8]));
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

    #[test]
    fn runs_of_a_tier_are_merged_and_their_blocks_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let (db, index, mut writer, _) = open_in(dir.path());
        for batch in 0..MERGE_WIDTH as u64 {
            writer.add(
                (0..1000)
                    .map(|i| (key("m", i, batch * 1000 + i), vec![]))
                    .collect(),
            );
            writer.checkpoint(batch + 1).unwrap();
        }
        assert_eq!(writer.disk_runs(), MERGE_WIDTH);
        assert!(writer.wants_merge());
        // A reader holding a scan keeps the old runs' blocks alive.
        let mut held = index.scan(&prefix("m"), &bounds("m").0, &bounds("m").1, false);
        assert!(writer.merge_step(|| false).unwrap());
        assert_eq!(writer.disk_runs(), 1);
        assert!(!writer.wants_merge());
        writer.collect_garbage().unwrap();
        assert_eq!(held.by_ref().count(), 4000);
        drop(held);
        writer.collect_garbage().unwrap();
        let all = scan_seqs(&index, "m", false);
        assert_eq!(all.len(), 4000);
        let blocks = db.open_tree("index").unwrap().scan_prefix([BLOCK]).count();
        // Only the merged run's blocks are left.
        let (start, end) = run_blocks(writer.disk.first().unwrap().id);
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
            for batch in 0..MERGE_WIDTH as u64 {
                writer.add(
                    (0..3000)
                        .map(|i| (key("o", i, batch * 3000 + i), vec![]))
                        .collect(),
                );
                writer.checkpoint(batch + 1).unwrap();
            }
            // Stopped halfway: what it wrote is deleted.
            assert!(!writer.merge_step(|| true).unwrap());
            assert_eq!(writer.disk_runs(), MERGE_WIDTH);
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
}
