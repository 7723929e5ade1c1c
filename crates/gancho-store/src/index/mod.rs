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

mod block;
mod bloom;
pub(crate) mod indexer;
mod memory;
mod policy;
mod run;
mod scan;
mod writer;

use std::cmp::Ordering;
use std::ops::Bound;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::StoreError;
use crate::format::{Format, Step};
use crate::kv::Tree;

use self::block::Block;
use self::bloom::{SharedBloom, hash};
use self::memory::MemRun;
use self::run::{BLOCK, DiskRun, TimeSpan, block_key, run_range};
use self::scan::{DiskScan, Source};

pub(crate) use self::memory::Batch;
pub(crate) use self::scan::Scan;
pub(crate) use self::writer::{IndexWriter, indexed_seq, open};

/// An index entry: its key and (for dedup entries) its value.
pub(crate) type Entry = (Vec<u8>, Vec<u8>);

/// The watermark of the last checkpoint: the disk runs hold every event up to it.
pub(crate) const INDEXED_KEY: &[u8] = b"Mindexed";
/// The indexes were found damaged; the next open rebuilds them.
pub(crate) const REBUILD_KEY: &[u8] = b"Mrebuild";

/// The index database's format (see `format.rs`). Version 1: sorted runs as described above.
/// Indexes are derived from the log, so one this build cannot read is rebuilt rather than
/// refused (see `Store::open`).
pub(crate) const FORMAT: Format = Format {
    name: "index",
    key: b"Mformat",
    current: 1,
    oldest: 0,
    steps: &[Step {
        what: "version 0 had this layout but no version key: record it",
        run: |_| Ok(()),
    }],
};

/// What the index knows of its keys, passed in by its owner (which knows the layouts of event
/// keys): which keys are *timed*, ending with an event time and a seq (8 bytes each) that scans
/// range over. A timed key's *filter prefix*, the part a Bloom filter holds and every scan stays
/// within, is the key without its time and seq; any other key is its own filter prefix (looked
/// up whole).
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyRule {
    pub(crate) timed: fn(&[u8]) -> bool,
}

impl KeyRule {
    /// The part of a key a Bloom filter holds.
    pub(crate) fn filter_prefix<'k>(&self, key: &'k [u8]) -> &'k [u8] {
        match (self.timed)(key) && key.len() > 16 {
            true => &key[..key.len() - 16],
            false => key,
        }
    }

    /// The event time of a timed key, as its 8 key bytes (byte order is time order).
    pub(crate) fn time(&self, key: &[u8]) -> Option<[u8; 8]> {
        match (self.timed)(key) && key.len() > 16 {
            true => key[key.len() - 16..key.len() - 8].try_into().ok(),
            false => None,
        }
    }

    /// The time range a scan of the filter prefix `prefix` from `lo` to `hi` covers: the time
    /// bytes right after the prefix. `None` for untimed keys, where no run is skipped by time.
    fn scan_times(&self, prefix: &[u8], lo: &[u8], hi: &[u8]) -> Option<([u8; 8], [u8; 8])> {
        let at = prefix.len();
        let from = lo
            .get(at..at + 8)
            .and_then(|t| t.try_into().ok())
            .unwrap_or([0; 8]);
        let to = hi
            .get(at..at + 8)
            .and_then(|t| t.try_into().ok())
            .unwrap_or([0xff; 8]);
        (self.timed)(prefix).then_some((from, to))
    }
}

/// Marks the indexes for a rebuild at the next open, when a read found them damaged (they are
/// derived from the log, so nothing is lost). Best effort: the error is reported anyway.
fn condemn(tree: &Tree, err: &StoreError) {
    if !matches!(err, StoreError::Corrupt { .. }) {
        return;
    }
    tracing::error!(error = %err, "the indexes are damaged; they are rebuilt at the next start");
    let marked = tree
        .insert(REBUILD_KEY, err.to_string().as_bytes())
        .and_then(|()| tree.flush());
    if let Err(err) = marked {
        tracing::error!(error = %err, "could not mark the indexes for a rebuild");
    }
}

pub(super) fn read_u32(bytes: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(bytes.try_into().ok()?))
}

pub(super) fn corrupt(run: u64, reason: &str) -> StoreError {
    StoreError::Corrupt {
        key: format!("index run {run}"),
        reason: reason.to_owned(),
    }
}

/// What readers see: the memory runs (oldest first) and the disk runs.
#[derive(Debug)]
pub(super) struct View {
    mem: Vec<Arc<MemRun>>,
    /// The filter of the memory runs.
    mem_bloom: Arc<SharedBloom>,
    disk: Vec<Arc<DiskRun>>,
}

/// The indexes, for readers. The [`IndexWriter`] is the only one that changes them.
#[derive(Debug)]
pub(crate) struct Index {
    tree: Tree,
    rule: KeyRule,
    view: ArcSwap<View>,
}

impl Index {
    /// The value of `key`, looked up whole (dedup entries). Equal keys in several runs always
    /// carry equal values (an event id's seq never changes; query entries have none), so
    /// which run answers, here or in a scan or a merge, does not matter.
    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let view = self.view.load();
        let h = hash(self.rule.filter_prefix(key));
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
                .transpose()?;
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
    /// which has `prefix` as its filter prefix ([`KeyRule`]). Runs whose filter cannot hold `prefix`, or
    /// whose event times miss those of the scan, are not read.
    pub(crate) fn scan(&self, prefix: &[u8], lo: &[u8], hi: &[u8], reverse: bool) -> Scan {
        let view = self.view.load();
        let h = hash(prefix);
        let times = self.rule.scan_times(prefix, lo, hi);
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

#[cfg(test)]
mod tests;
