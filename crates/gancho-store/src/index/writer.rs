//! The writer side of the indexes, owned by the indexer thread: adds batches as memory runs,
//! checkpoints them into disk runs with the watermark, merges disk runs a slice at a time, and
//! deletes merged-away runs once no reader holds them. What to merge is decided by `policy`.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tracing::{debug, info};

use super::bloom::SharedBloom;
use super::cache::BlockCache;
use super::file::{RUNS_DIR, run_id};
use super::layout::{INDEXED_KEY, RUN, run_key, run_of_key};
use super::memory::{Batch, MemRun};
use super::policy::{self, MemoryShape};
use super::reader::{Index, View};
use super::rule::KeyRule;
use super::run::{DiskRun, FilterBounds, RunBuilder, delete_file, delete_run, record_max_seq};
use super::scan::{DiskScan, Scan, Source};
use crate::error::StoreError;
use crate::keys::read_u64;
use crate::kv::{Db, FileSync, Tree};
use crate::purged::Purged;

#[derive(Debug)]
struct Merge {
    runs: Vec<Arc<DiskRun>>,
    scan: Scan,
    builder: RunBuilder,
    /// The pruned events the scan passes over.
    purged: Arc<Purged>,
}

/// Changes the indexes: owned by the indexer thread.
#[derive(Debug)]
pub(crate) struct IndexWriter {
    pub(super) index: Arc<Index>,
    pub(super) db: Db,
    pub(super) sync: Option<FileSync>,
    pub(super) mem: Vec<Arc<MemRun>>,
    pub(super) mem_bloom: Arc<SharedBloom>,
    pub(super) mem_bytes: usize,
    /// Distinct keys a new memory filter is sized for, and the size past which memory runs are
    /// not merged.
    mem_shape: MemoryShape,
    pub(super) disk: Vec<Arc<DiskRun>>,
    /// Runs merged away whose keys are deleted once no reader holds them.
    pub(super) retired: Vec<Arc<DiskRun>>,
    merge: Option<Merge>,
    pub(super) next_id: u64,
    /// The bytes of lookup filter a run may keep in memory.
    resident: u64,
}

/// Opens the indexes of the index database: returns the reader side, the writer side and the
/// watermark of the last checkpoint. Deletes what a crash left of runs: files of runs without a
/// record, and runs past the watermark (possible with fsync off: their events may be lost from
/// the log, and their seqs reused). A [`StoreError::Corrupt`] means the index database should
/// be rebuilt. `block_cache`: the block cache's budget in bytes, which also sets what a run
/// keeps in memory ([`policy::resident_per_run`]).
pub(crate) fn open(
    db: Db,
    rule: KeyRule,
    mut sync: Option<FileSync>,
    mem_shape: MemoryShape,
    purged: Arc<Purged>,
    block_cache: u64,
) -> Result<(Arc<Index>, IndexWriter, u64), StoreError> {
    let tree = db.tree("index")?;
    let dir = db.path().join(RUNS_DIR);
    std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
        what: format!("creating {}", dir.display()),
        source,
    })?;
    let indexed = indexed_seq(&tree)?;
    let resident = policy::resident_per_run(block_cache);
    let mut disk = Vec::new();
    let mut next_id = 1u64;
    let mut past = 0;
    for item in tree.scan_prefix([RUN]) {
        let (key, value) = item?;
        let id = run_of_key(&key)?;
        next_id = next_id.max(id.saturating_add(1));
        let max_seq = record_max_seq(id, &value)?;
        if max_seq > indexed {
            // Its record goes now, its file with the orphans below, once that is durable (a
            // crash in between must not bring back a record without its file).
            info!(
                run = id,
                max_seq, indexed, "deleting an index run past the watermark"
            );
            tree.remove(run_key(id))?;
            past += 1;
        } else {
            disk.push(Arc::new(DiskRun::open(&dir, id, &value, resident)?));
        }
    }
    if past > 0 {
        db.make_durable(sync.as_mut())?;
    }
    // Files of runs without a record: a run cut short by a crash, or one merged away.
    let listing = std::fs::read_dir(&dir).map_err(|source| StoreError::Io {
        what: format!("listing {}", dir.display()),
        source,
    })?;
    let mut orphans = 0;
    for entry in listing {
        let entry = entry.map_err(|source| StoreError::Io {
            what: format!("listing {}", dir.display()),
            source,
        })?;
        let Some(id) = entry.file_name().to_str().and_then(run_id) else {
            continue;
        };
        next_id = next_id.max(id.saturating_add(1));
        if !disk.iter().any(|r| r.id == id) {
            delete_file(&dir, id)?;
            orphans += 1;
        }
    }
    if orphans > 0 {
        info!(
            files = orphans,
            "deleted index run files a crash left behind"
        );
    }
    let mem_bloom = Arc::new(SharedBloom::for_keys(mem_shape.filter_keys));
    let index = Arc::new(Index {
        tree,
        dir,
        blocks: Arc::new(BlockCache::new(block_cache)),
        rule,
        view: ArcSwap::from_pointee(View {
            mem: Vec::new(),
            mem_bloom: Arc::clone(&mem_bloom),
            disk: disk.clone(),
        }),
        purged: ArcSwap::new(purged),
        purged_writes: std::sync::Mutex::new(()),
        checkpointing: std::sync::atomic::AtomicBool::new(false),
    });
    let writer = IndexWriter {
        index: Arc::clone(&index),
        db,
        sync,
        mem: Vec::new(),
        mem_bloom,
        mem_bytes: 0,
        mem_shape,
        disk,
        retired: Vec::new(),
        merge: None,
        next_id,
        resident,
    };
    Ok((index, writer, indexed))
}

impl IndexWriter {
    /// Adds a batch of entries; readers see them when this returns.
    pub(crate) fn add(&mut self, batch: Batch) {
        if batch.len() == 0 {
            return;
        }
        let mut run = MemRun::new(batch, &self.mem_bloom, self.index.rule);
        // Batches are small when the indexer keeps up (one per group commit): merge runs of
        // about one size, so that their sizes halve from the oldest on and readers look at a
        // few of them only.
        while let Some(last) = self.mem.last() {
            let (older, newer) = ((last.len(), last.bytes()), (run.len(), run.bytes()));
            if !policy::merges_in_memory(older, newer, self.mem_shape.run_cap) {
                break;
            }
            run = MemRun::merge(last, &run);
            self.mem.pop();
        }
        self.mem_bytes = self.mem.iter().map(|r| r.bytes()).sum::<usize>() + run.bytes();
        self.mem.push(Arc::new(run));
        self.publish();
    }

    /// The memory the entries added since the last checkpoint take.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.mem_bytes
    }

    /// The set of pruned events.
    pub(crate) fn purged(&self) -> Arc<Purged> {
        self.index.purged()
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
        let checkpointing = &self.index.checkpointing;
        checkpointing.store(!self.mem.is_empty(), std::sync::atomic::Ordering::Release);
        let done = self.checkpoint_memory(indexed);
        self.index
            .checkpointing
            .store(false, std::sync::atomic::Ordering::Release);
        done
    }

    fn checkpoint_memory(&mut self, indexed: u64) -> Result<(), StoreError> {
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
        gancho_core::fail_point!("index.checkpoint.before_watermark");
        let tree = &self.index.tree;
        if let Err(err) = tree.insert(INDEXED_KEY, &indexed.to_be_bytes()[..]) {
            if let Some(run) = run {
                self.discard(run.id);
            }
            return Err(err);
        }
        // From here the run stays, durable or not: sled's own periodic flush may already have
        // written the watermark, and without the run those events would be missing from the
        // indexes after a crash. If neither reaches the disk, the run is past the watermark at
        // the next open, which deletes it.
        gancho_core::fail_point!("index.checkpoint.before_sync");
        let durable = self.make_durable();
        if let Some(run) = run {
            self.disk.push(Arc::new(run));
        }
        self.mem.clear();
        self.mem_bytes = 0;
        self.mem_bloom = Arc::new(SharedBloom::for_keys(self.mem_shape.filter_keys));
        self.publish();
        durable
    }

    fn write_memory_runs(&self, id: u64, indexed: u64) -> Result<Option<DiskRun>, StoreError> {
        let purged = self.index.purged();
        let bound = self
            .mem
            .iter()
            .map(|run| run.filter_bounds(self.index.rule))
            .fold(FilterBounds::default(), FilterBounds::add);
        let mut builder = self.builder(id, bound)?;
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
        )
        .skipping(Arc::clone(&purged), self.index.rule);
        while merge.advance()? {
            let (key, value) = merge.entry();
            builder.add(key, value)?;
        }
        builder.finish(indexed, &purged)
    }

    /// A new run's builder.
    fn builder(&self, id: u64, bounds: FilterBounds) -> Result<RunBuilder, StoreError> {
        RunBuilder::new(
            self.index.tree.clone(),
            &self.index.dir,
            self.sync.is_some(),
            id,
            self.index.rule,
            bounds,
            self.resident,
        )
    }

    /// Deletes what was written of a run that is not live (best effort: what stays is deleted
    /// at the next open).
    fn discard(&mut self, id: u64) {
        // The record (if it was written) goes durably before the file.
        let deleted = self
            .index
            .tree
            .remove(run_key(id))
            .and_then(|()| self.make_durable())
            .and_then(|()| delete_file(&self.index.dir, id));
        if let Err(err) = deleted {
            tracing::warn!(run = id, error = %err, "could not delete an unfinished index run");
        }
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn make_durable(&mut self) -> Result<(), StoreError> {
        self.db.make_durable(self.sync.as_mut())
    }

    /// Whether merging has work: a merge under way, or a size tier full enough to start one.
    pub(crate) fn merge_pending(&self) -> bool {
        self.merge.is_some() || self.merge_candidates().is_some()
    }

    /// The runs to merge next, as [`policy::merge_choice`] picks them; else a run to write
    /// again without the entries of pruned events, once they are a quarter of its span
    /// ([`policy::worth_rewriting`]).
    fn merge_candidates(&self) -> Option<Vec<Arc<DiskRun>>> {
        let sizes: Vec<u64> = self.disk.iter().map(|r| r.entries).collect();
        if let Some(chosen) = policy::merge_choice(&sizes) {
            return Some(
                chosen
                    .into_iter()
                    .map(|i| Arc::clone(&self.disk[i]))
                    .collect(),
            );
        }
        let purged = self.index.purged.load();
        if purged.is_empty() {
            return None;
        }
        self.disk
            .iter()
            .find(|run| {
                let pruned = purged.count_in(run.min_seq, run.max_seq);
                policy::worth_rewriting(
                    run.max_seq.saturating_sub(run.min_seq) + 1,
                    pruned.saturating_sub(run.purged_at_write),
                )
            })
            .map(|run| vec![Arc::clone(run)])
    }

    /// Advances the merge under way by up to `budget` entries, first starting one if a size
    /// tier is full. Returns whether a merge finished.
    pub(crate) fn merge_step(&mut self, budget: usize) -> Result<bool, StoreError> {
        if self.merge.is_none() {
            let Some(runs) = self.merge_candidates() else {
                return Ok(false);
            };
            let id = self.take_id();
            let bound = runs
                .iter()
                .map(|r| r.filter_bounds())
                .fold(FilterBounds::default(), FilterBounds::add);
            let tree = &self.index.tree;
            let purged = self.index.purged();
            let scan = Scan::new(
                runs.iter()
                    .map(|run| {
                        Source::Disk(Box::new(DiskScan::new(tree, None, run, &[], None, false)))
                    })
                    .collect(),
                false,
            )
            .skipping(Arc::clone(&purged), self.index.rule);
            let builder = self.builder(id, bound)?;
            self.merge = Some(Merge {
                runs,
                scan,
                builder,
                purged,
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
        let Some(Merge {
            runs,
            builder,
            purged,
            ..
        }) = self.merge.take()
        else {
            return Ok(false);
        };
        let id = builder.id;
        let max_seq = runs.iter().map(|r| r.max_seq).max().unwrap_or(0);
        let merged = match builder.finish(max_seq, &purged) {
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
            // Hit before each removal: `N*off->crash` stops after the first N.
            gancho_core::fail_point!("index.merge.remove_record");
            match self.index.tree.remove(run_key(run.id)) {
                Ok(_) => removed.push(Arc::clone(run)),
                Err(err) => {
                    failed = Some(err);
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
        // Their files are deleted once durable: until then a crash could bring a record back.
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

    /// Deletes the files of merged-away runs that no reader holds any more.
    pub(crate) fn collect_garbage(&mut self) -> Result<(), StoreError> {
        let mut result = Ok(());
        let mut keep = Vec::new();
        for run in std::mem::take(&mut self.retired) {
            // The published view no longer has it: once this is the last handle, no reader can
            // reach it.
            if result.is_ok() && Arc::strong_count(&run) == 1 {
                gancho_core::fail_point!("index.gc.delete_run");
                match delete_run(&self.index.tree, &self.index.dir, run.id) {
                    Ok(()) => self.index.blocks.forget(run.id),
                    Err(err) => {
                        result = Err(err);
                        keep.push(run);
                    }
                }
            } else {
                keep.push(run);
            }
        }
        self.retired = keep;
        result
    }
}

/// The watermark of the last checkpoint, 0 for none.
pub(crate) fn indexed_seq(tree: &Tree) -> Result<u64, StoreError> {
    match tree.get(INDEXED_KEY)? {
        Some(v) => read_u64(&v).ok_or_else(|| StoreError::Corrupt {
            key: "indexed".to_owned(),
            reason: "not a u64".to_owned(),
        }),
        None => Ok(0),
    }
}
