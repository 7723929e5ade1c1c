//! Disk runs: a run's blocks, Bloom filters and block index in a file of its own (`file.rs`),
//! and its record (`R` + run id: entry counts, last seq, event-time span, filter sizes) in the
//! index database's tree. The file is written (and, with fsync on, synced) before the record,
//! which makes the run live; a run is deleted record first, so it is never half there.

use std::path::Path;

use super::block::{BlockBuilder, len32};
use super::bloom::{BLOOM_BITS_PER_KEY, BLOOM_BLOCK_WORDS, Bloom, hash};
use super::file::{FileWriter, RunFile, run_path};
use super::layout::{corrupt, run_key};
use super::packed::PackedBuilder;
use super::rule::KeyRule;
use crate::error::StoreError;
use crate::keys::{read_u32, read_u64};
use crate::kv::Tree;
use crate::kv::sync_dir;
use crate::purged::Purged;

/// The version of run records: entries u64, distinct filter prefixes u64, last seq u64, the
/// event-time span (0, or 1 and two time keys), the lookup filter's words u32, the lowest seq
/// u64, the seqs of its span pruned when it was written u64, the scan filter's words u32, the
/// distinct untimed keys u64. Versions 1 and 2 (one filter) are of index formats the migration
/// rebuilds.
const RUN_RECORD: u8 = 3;

/// How many distinct filter prefixes of each kind a run being built may hold: what its two
/// filters are sized for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct FilterBounds {
    /// Untimed keys, looked up whole (the dedup entries).
    pub(super) lookup: u64,
    /// Prefixes of timed keys, which scans ask for.
    pub(super) scan: u64,
}

impl FilterBounds {
    pub(super) fn add(self, other: FilterBounds) -> FilterBounds {
        FilterBounds {
            lookup: self.lookup.saturating_add(other.lookup),
            scan: self.scan.saturating_add(other.scan),
        }
    }
}

#[derive(Debug)]
pub(super) struct DiskRun {
    pub(super) id: u64,
    pub(super) entries: u64,
    /// Distinct filter prefixes, of both kinds.
    pub(super) distinct: u64,
    /// Distinct untimed keys (those in the lookup filter).
    pub(super) lookup_distinct: u64,
    /// It holds the entries of events up to this seq, none later.
    pub(super) max_seq: u64,
    /// Its entries are of events from this seq on.
    pub(super) min_seq: u64,
    /// How many seqs in `min_seq..=max_seq` had been pruned when it was written: those pruned
    /// since then are its garbage (`IndexWriter` rewrites a run when it is a quarter of it).
    pub(super) purged_at_write: u64,
    pub(super) times: TimeSpan,
    /// The filter of its untimed keys, kept in memory unless the run is too large
    /// (`file::keeps_lookup`); then, as that of its timed keys' prefixes always is, it is read
    /// from its file by block.
    pub(super) lookup: Option<Bloom>,
    pub(super) file: RunFile,
}

impl DiskRun {
    /// Writes the record, which makes the run (its file written) live.
    pub(super) fn write(&self, tree: &Tree) -> Result<(), StoreError> {
        let mut record = Vec::with_capacity(74);
        record.push(RUN_RECORD);
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
        record.extend_from_slice(&len32(self.file.lookup_words()).to_be_bytes());
        record.extend_from_slice(&self.min_seq.to_be_bytes());
        record.extend_from_slice(&self.purged_at_write.to_be_bytes());
        record.extend_from_slice(&len32(self.file.scan_words()).to_be_bytes());
        record.extend_from_slice(&self.lookup_distinct.to_be_bytes());
        // The file written, the record that makes it a run not yet.
        gancho_core::fail_point!("index.run.before_record");
        tree.insert(run_key(self.id), record)?;
        Ok(())
    }

    /// The run of this record, its file opened (from `dir`) and its filter read; `resident`:
    /// the bytes of lookup filter a run may keep in memory (`file::keeps_lookup`).
    pub(super) fn open(
        dir: &Path,
        id: u64,
        record: &[u8],
        resident: u64,
    ) -> Result<DiskRun, StoreError> {
        let bad = || corrupt(id, "unreadable run record");
        if record.first() != Some(&RUN_RECORD) {
            return Err(bad());
        }
        let u64_at = |at: usize| record.get(at..at + 8).and_then(read_u64);
        let entries = u64_at(1).ok_or_else(bad)?;
        let distinct = u64_at(9).ok_or_else(bad)?;
        let max_seq = record_max_seq(id, record)?;
        let (times, at) = match record.get(25) {
            Some(0) => (TimeSpan(None), 26),
            Some(1) => {
                let time = |at: usize| record.get(at..at + 8).and_then(|t| t.try_into().ok());
                let span = time(26).zip(time(34)).ok_or_else(bad)?;
                (TimeSpan(Some(span)), 42)
            }
            _ => return Err(bad()),
        };
        let u32_at = |at: usize| {
            record
                .get(at..at + 4)
                .and_then(read_u32)
                .map(|n| n as usize)
        };
        let lookup_words = u32_at(at).ok_or_else(bad)?;
        let min_seq = u64_at(at + 4).ok_or_else(bad)?;
        let purged_at_write = u64_at(at + 12).ok_or_else(bad)?;
        let scan_words = u32_at(at + 20).ok_or_else(bad)?;
        let lookup_distinct = u64_at(at + 24).ok_or_else(bad)?;
        let filter_size = |n: usize| n > 0 && n.is_multiple_of(BLOOM_BLOCK_WORDS);
        if !filter_size(lookup_words)
            || !filter_size(scan_words)
            || distinct > entries
            || lookup_distinct > distinct
        {
            return Err(bad());
        }
        let (file, lookup) = RunFile::open(dir, id, lookup_words, scan_words, resident)?;
        Ok(DiskRun {
            id,
            entries,
            distinct,
            lookup_distinct,
            max_seq,
            min_seq,
            purged_at_write,
            times,
            lookup,
            file,
        })
    }

    /// Whether it may hold entries of the filter prefix of `hash`, of a timed key (`timed`) or
    /// an untimed one. A filter that cannot be read from the file says "maybe": reading the
    /// run's blocks then reports the damage.
    pub(super) fn may_hold(&self, hash: u64, timed: bool) -> bool {
        match (timed, &self.lookup) {
            (false, Some(lookup)) => lookup.may_contain(hash),
            (false, None) => self.file.lookup_may_contain(hash).unwrap_or(true),
            (true, _) => self.file.scan_may_contain(hash).unwrap_or(true),
        }
    }

    /// What a run merged from it needs its filters sized for: its distinct prefixes of each
    /// kind, at most what its filters were sized for (counts read from disk do not size an
    /// allocation alone).
    pub(super) fn filter_bounds(&self) -> FilterBounds {
        let capacity = |words: usize| (words * 64 / BLOOM_BITS_PER_KEY) as u64;
        FilterBounds {
            lookup: self.lookup_distinct.min(capacity(self.file.lookup_words())),
            scan: (self.distinct - self.lookup_distinct).min(capacity(self.file.scan_words())),
        }
    }
}

/// The last seq of the run of this record, read without opening its file.
pub(super) fn record_max_seq(id: u64, record: &[u8]) -> Result<u64, StoreError> {
    match record.first() {
        Some(&RUN_RECORD) => record.get(17..25).and_then(read_u64),
        _ => None,
    }
    .ok_or_else(|| corrupt(id, "unreadable run record"))
}

/// Deletes a run whole: its record first (so that it is never half there), then its file. The
/// caller has made the record's removal durable, or knows that a crash cannot bring it back
/// without its file (the run was merged away, its removal made durable before).
pub(super) fn delete_run(tree: &Tree, dir: &Path, id: u64) -> Result<(), StoreError> {
    tree.remove(run_key(id))?;
    delete_file(dir, id)
}

/// Deletes a run's file (there may be none).
pub(super) fn delete_file(dir: &Path, id: u64) -> Result<(), StoreError> {
    let path = run_path(dir, id);
    match std::fs::remove_file(&path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(StoreError::Io {
            what: format!("deleting {}", path.display()),
            source: err,
        }),
        _ => Ok(()),
    }
}

/// Writes one run's blocks as its entries come, in key order.
pub(super) struct RunBuilder {
    tree: Tree,
    file: FileWriter,
    dir: std::path::PathBuf,
    fsync: bool,
    pub(super) id: u64,
    rule: KeyRule,
    /// The block being filled: it decides where a block ends, and the fence of each.
    block: BlockBuilder,
    /// The same entries as the file stores them (`packed.rs`).
    packed: PackedBuilder,
    entries: u64,
    distinct: u64,
    lookup_distinct: u64,
    lookup: Bloom,
    scan: Bloom,
    times: TimeSpan,
    min_seq: u64,
    prev_prefix: Vec<u8>,
    prev_key: Vec<u8>,
    /// The bytes of lookup filter the run may keep in memory (`file::keeps_lookup`).
    resident: u64,
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
    /// A run `id` written to its file in `dir` (synced when `fsync`), recorded in `tree`.
    /// `bounds`: at least the numbers of distinct filter prefixes it will hold (size its
    /// filters). `resident`: as for [`DiskRun::open`].
    pub(super) fn new(
        tree: Tree,
        dir: &Path,
        fsync: bool,
        id: u64,
        rule: KeyRule,
        bounds: FilterBounds,
        resident: u64,
    ) -> Result<RunBuilder, StoreError> {
        Ok(RunBuilder {
            tree,
            file: FileWriter::create(dir, id)?,
            dir: dir.to_owned(),
            fsync,
            id,
            rule,
            block: BlockBuilder::default(),
            packed: PackedBuilder::default(),
            entries: 0,
            distinct: 0,
            lookup_distinct: 0,
            lookup: Bloom::for_keys(bounds.lookup),
            scan: Bloom::for_keys(bounds.scan),
            times: TimeSpan::default(),
            min_seq: u64::MAX,
            prev_prefix: Vec::new(),
            prev_key: Vec::new(),
            resident,
        })
    }

    pub(super) fn add(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        if self.entries > 0 && self.prev_key == key {
            return Ok(());
        }
        let prefix = self.rule.filter_prefix(key);
        if self.entries == 0 || prefix != &self.prev_prefix[..] {
            self.distinct += 1;
            match (self.rule.timed)(prefix) {
                true => self.scan.insert(hash(prefix)),
                false => {
                    self.lookup_distinct += 1;
                    self.lookup.insert(hash(prefix));
                }
            }
            self.prev_prefix.clear();
            self.prev_prefix.extend_from_slice(prefix);
        }
        if let Some(time) = self.rule.time(key) {
            self.times.add(time);
        }
        if let Some(seq) = (self.rule.seq)(key, value) {
            self.min_seq = self.min_seq.min(seq);
        }
        self.prev_key.clear();
        self.prev_key.extend_from_slice(key);
        self.entries += 1;
        if self.block.is_empty() {
            self.file.next_block_starts(key);
        }
        self.block.add(key, value);
        self.packed.add(key, value);
        if self.block.is_full() {
            self.write_block()?;
        }
        Ok(())
    }

    pub(super) fn write_block(&mut self) -> Result<(), StoreError> {
        let (_, last) = self.block.finish();
        self.file.block(&self.packed.finish(), &last)
    }

    /// Writes the last block, the filter and the run's record (which makes it live); `None`
    /// for a run with no entries. `purged`: the pruned events its entries were filtered by.
    pub(super) fn finish(
        mut self,
        max_seq: u64,
        purged: &Purged,
    ) -> Result<Option<DiskRun>, StoreError> {
        if !self.block.is_empty() {
            self.write_block()?;
        }
        if self.entries == 0 {
            // Dropping the file writer deletes the file.
            return Ok(None);
        }
        let file = self
            .file
            .finish(&self.lookup, &self.scan, self.fsync, self.resident)?;
        if self.fsync {
            sync_dir(&self.dir)?;
        }
        let run = DiskRun {
            id: self.id,
            entries: self.entries,
            distinct: self.distinct,
            lookup_distinct: self.lookup_distinct,
            max_seq,
            min_seq: self.min_seq.min(max_seq),
            purged_at_write: purged.count_in(self.min_seq.min(max_seq), max_seq),
            times: self.times,
            lookup: file.keeps_lookup().then_some(self.lookup),
            file,
        };
        run.write(&self.tree)?;
        Ok(Some(run))
    }
}

/// A merge in progress: advanced a slice at a time, so that indexing goes on between slices.
/// The event times a run's query entries span, as time keys; `None` when it has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct TimeSpan(pub(super) Option<([u8; 8], [u8; 8])>);

impl TimeSpan {
    pub(super) fn add(&mut self, time: [u8; 8]) {
        self.0 = Some(match self.0 {
            None => (time, time),
            Some((lo, hi)) => (lo.min(time), hi.max(time)),
        });
    }

    /// The span of both.
    pub(super) fn join(self, other: TimeSpan) -> TimeSpan {
        match (self.0, other.0) {
            (Some((a, b)), Some((c, d))) => TimeSpan(Some((a.min(c), b.max(d)))),
            (x, y) => TimeSpan(x.or(y)),
        }
    }

    /// Whether a scan over `from..=to` may find entries here.
    pub(super) fn meets(&self, from: &[u8; 8], to: &[u8; 8]) -> bool {
        self.0.is_some_and(|(lo, hi)| &hi >= from && &lo <= to)
    }
}
