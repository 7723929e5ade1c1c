//! The indexes as readers see them: a snapshot of the runs behind an `ArcSwap`, so readers
//! share no lock with the idle-priority indexer. A point lookup asks the runs whose Bloom filter
//! may hold its key; a scan stays within one filter prefix, skips the runs that cannot hold it
//! or whose event times miss its window, and merges the others in key order.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::bloom::{SharedBloom, hash};
use super::cache::BlockCache;
use super::layout::condemn;
use super::memory::MemRun;
use super::rule::KeyRule;
use super::run::{DiskRun, TimeSpan};
use super::scan::{DiskScan, Scan, Source};
use crate::error::StoreError;
use crate::kv::Tree;
use crate::purged::Purged;

/// What readers see: the memory runs (oldest first) and the disk runs.
#[derive(Debug)]
pub(crate) struct View {
    pub(super) mem: Vec<Arc<MemRun>>,
    /// The filter of the memory runs.
    pub(super) mem_bloom: Arc<SharedBloom>,
    pub(super) disk: Vec<Arc<DiskRun>>,
}

/// The indexes, for readers. The [`IndexWriter`] is the only one that changes them.
#[derive(Debug)]
pub(crate) struct Index {
    pub(super) tree: Tree,
    /// The folder of the run files.
    pub(super) dir: PathBuf,
    /// Blocks readers asked for.
    pub(super) blocks: Arc<BlockCache>,
    pub(super) rule: KeyRule,
    pub(super) view: ArcSwap<View>,
    /// Events pruned from the log: their entries are not seen (and not written again).
    pub(super) purged: ArcSwap<Purged>,
    /// Held by whoever adds to the set (a prune; the log writer recording the seqs a group
    /// placed no event at), from reading it to publishing it, so neither loses the other's.
    pub(super) purged_writes: std::sync::Mutex<()>,
    /// The memory runs are being written out as a disk run. It is built with the pruned set as
    /// it was when it began, so a prune meanwhile leaves entries in it to rewrite: until it is
    /// published, whether rewrites are pending cannot be told from the runs in view.
    pub(super) checkpointing: std::sync::atomic::AtomicBool,
}

impl Index {
    /// The value of `key`, looked up whole (dedup entries). Equal keys in several runs carry
    /// equal values (an event id's seq never changes; query entries have none), but for a
    /// dedup entry whose first event was pruned and whose id was posted again: the pruned
    /// value is passed over, and the search goes on to the other runs.
    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let purged = self.purged.load();
        let live =
            |value: &[u8]| !(self.rule.seq)(key, value).is_some_and(|seq| purged.contains(seq));
        self.get_where(key, live)
    }

    /// Publishes the set of pruned events: readers pass over their entries from now on.
    pub(crate) fn set_purged(&self, purged: Arc<Purged>) {
        self.purged.store(purged);
    }

    /// Whether some disk run holds enough entries of pruned events to be written again (the
    /// indexer does it when it has nothing else to do).
    pub(crate) fn rewrites_pending(&self) -> bool {
        if self
            .checkpointing
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return true;
        }
        let purged = self.purged.load();
        self.view.load().disk.iter().any(|run| {
            let pruned = purged.count_in(run.min_seq, run.max_seq);
            super::policy::worth_rewriting(
                run.max_seq.saturating_sub(run.min_seq) + 1,
                pruned.saturating_sub(run.purged_at_write),
            )
        })
    }

    /// Taken to add to the set of pruned events: read it, write it, publish it, then let go.
    pub(crate) fn lock_purged(&self) -> std::sync::MutexGuard<'_, ()> {
        self.purged_writes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The set of pruned events readers pass over.
    pub(crate) fn purged(&self) -> Arc<Purged> {
        self.purged.load_full()
    }

    fn get_where(
        &self,
        key: &[u8],
        live: impl Fn(&[u8]) -> bool,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let view = self.view.load();
        let prefix = self.rule.filter_prefix(key);
        let (h, timed) = (hash(prefix), (self.rule.timed)(prefix));
        if view.mem_bloom.may_contain(h) {
            for run in view.mem.iter().rev() {
                let i = run.seek(key, false);
                if i < run.len() && run.key(i) == key && live(run.value(i)) {
                    return Ok(Some(run.value(i).to_vec()));
                }
            }
        }
        for run in view.disk.iter().rev() {
            if !run.may_hold(h, timed) {
                continue;
            }
            // A block the cache holds is searched there; any other is searched as read,
            // neither built nor cached: a point lookup (the writer's dedup, on a filter's
            // false positive or a repeat) is as likely to land in any block of the run.
            let found = run.file.find_block(key).and_then(|at| {
                if at >= run.file.blocks() {
                    return Ok(None);
                }
                match self.blocks.cached(run.id, at) {
                    Some(block) => block.get(key).map(|value| value.map(<[u8]>::to_vec)),
                    None => run.file.find_in_block(at, key),
                }
                .map(|value| value.filter(|value| live(value)))
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
        Ok(None)
    }

    /// The entries with keys in `lo..=hi`, in key order (`reverse`: descending), every one of
    /// which has `prefix` as its filter prefix ([`KeyRule`]). Runs whose filter cannot hold `prefix`, or
    /// whose event times miss those of the scan, are not read.
    pub(crate) fn scan(&self, prefix: &[u8], lo: &[u8], hi: &[u8], reverse: bool) -> Scan {
        let view = self.view.load();
        let h = hash(prefix);
        let timed = (self.rule.timed)(prefix);
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
            if meets(&run.times) && run.may_hold(h, timed) {
                sources.push(Source::Disk(Box::new(DiskScan::new(
                    &self.tree,
                    Some(Arc::clone(&self.blocks)),
                    run,
                    lo,
                    Some(hi),
                    reverse,
                ))));
            }
        }
        Scan::new(sources, reverse).skipping(self.purged.load_full(), self.rule)
    }
}
