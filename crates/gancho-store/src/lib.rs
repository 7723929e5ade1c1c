//! The durable store of gancho: the event log with its sequence numbers, the dedup index, the
//! index by (source, type, correlation key, event time), and the quarantine of rejected items.
//! The log and its indexes live together because they share dedup and the `indexed` watermark;
//! the engine's state and the outbox are another crate's (`gancho-state`), on the same [`kv`].
//!
//! Only this crate knows sled, and within it only [`kv`]: no sled type appears in its public
//! API, so another engine can replace it. It knows nothing of HTTP, scripts or actions, and it
//! never reads the wall clock: times arrive on the events.
//!
//! A key design decision made here is that all appends go through one writer thread and one
//! flusher thread ([`Appender`]): the writer deduplicates and writes each group of requests
//! atomically (a commit record closes it, so nothing is ever half-stored), and the flusher makes every applied
//! group durable with one flush (and, by default, one `fdatasync`) shared by all the requests
//! that arrived meanwhile. This is group commit: durability costs one flush per group, not per
//! request, and it also avoids sled 0.34's deadlock under concurrent `flush_async` calls.
//! The indexes are written behind the log by an indexer thread, because sled's cost per insert
//! would otherwise set the ingest rate; queries merge in the log's unindexed tail, so their
//! answers are always complete (see `index/indexer.rs`).

mod config;
mod error;
pub mod format;
mod index;
pub mod keys;
pub mod kv;
mod log;
mod migrate;
mod progress;
mod purged;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use gancho_core::Event;

pub use config::{StoreConfig, StoreSection};
pub use error::StoreError;
pub use index::{IndexStats, index_stats};
pub use log::append::{AppendReport, Appender, Rejected, Submission};
pub use log::codec::Quarantined;
pub use log::prune::{PruneReport, PruneRequest};
pub use log::query::{EventQuery, KeyFilter, Order, Window};

use crate::kv::{Db, FileSync};
use crate::log::{cache, codec, query, writer};
use crate::progress::Progress;

/// An open store. Cheap to clone; the underlying database closes when the last clone and the
/// last [`Appender`] are gone (call [`Store::shutdown`] to wait for pending writes first).
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    /// The log database: log blocks, quarantine, schema. Flushed (and synced) by group commit.
    log_db: Db,
    /// The log's tree and the segment files of its larger blocks.
    log: log::segments::Log,
    /// The index database: dedup and query indexes and the indexer's watermark. A database of
    /// its own so that the indexer's many small writes neither lengthen the group-commit
    /// flushes of the log nor contend with its writer for sled's batch lock.
    index_db: Db,
    index: Arc<index::Index>,
    appender: Appender,
    /// Decompressed log blocks, for single-event reads.
    blocks: Arc<cache::BlockCache>,
    pruner: log::prune::Pruner,
    progress: Arc<Progress>,
    threads: Mutex<Option<Threads>>,
}

#[derive(Debug)]
struct Threads {
    writer: JoinHandle<()>,
    flusher: JoinHandle<()>,
    indexer: JoinHandle<()>,
}

/// How far the log has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogStatus {
    /// Every event up to this seq is on disk.
    pub durable: u64,
    /// Every event up to this seq is in the indexes; the rest are indexed shortly.
    pub indexed: u64,
}

impl Store {
    /// Opens (or creates) the store in `path`. Fails with [`StoreError::Locked`] when another
    /// process has it open: sled allows one process per database.
    pub fn open(path: &Path, config: &StoreConfig) -> Result<Store, StoreError> {
        std::fs::create_dir_all(path).map_err(|source| StoreError::Io {
            what: format!("creating {}", path.display()),
            source,
        })?;
        let (log_path, index_path) = (path.join("log"), path.join("indexes"));
        let log_db = Db::open(&log_path, config.log_cache())?;
        let events = log_db.tree("events")?;
        let mut log_sync = if config.fsync {
            Some(FileSync::open(&log_path)?)
        } else {
            None
        };
        migrate::LOG.upgrade(&events, &mut || log_db.make_durable(log_sync.as_mut()))?;
        let discarded = codec::discard_uncommitted(&events)?;
        let segments = log::segments::Segments::open(&log_path.join(log::segments::SEGMENTS_DIR))?;
        if discarded > 0 {
            tracing::warn!(
                discarded,
                "discarded the unacknowledged tail of a group a crash interrupted"
            );
            log_db.make_durable(log_sync.as_mut())?;
        }
        let index_db = Db::open(&index_path, config.index_cache())?;
        let index_tree = index_db.tree("index")?;
        let index_sync = || -> Result<Option<FileSync>, StoreError> {
            match config.fsync {
                true => FileSync::open(&index_path).map(Some),
                false => Ok(None),
            }
        };
        let (last_seq, _) = codec::log_end(&events)?;
        // Segments no committed pointer refers to: those a crash left past the log's end, and
        // those a prune let go of just before a crash.
        let dropped = segments.collect_garbage(&events, None)?;
        if dropped > 0 {
            tracing::info!(dropped, "deleted log segments nothing refers to");
        }
        let log = log::segments::Log {
            tree: events.clone(),
            segments,
        };
        let purged = log::prune::read_purged(&events)?;
        // Seqs past the log's end in the set: a group of `Appender::append_at` recorded where
        // it placed no event, and a crash lost the group. Those seqs will be given again.
        let purged = Arc::new(match purged.through(last_seq) {
            kept if kept != purged => {
                events.insert(log::prune::PURGED_KEY, kept.encode())?;
                kept
            }
            same => same,
        });
        let watermark = match index::indexed_seq(&index_tree) {
            Err(StoreError::Corrupt { .. }) => None,
            other => Some(other?),
        };
        let condemned = index_tree.contains_key(index::REBUILD_KEY)?;
        if condemned || watermark.is_none_or(|indexed| indexed > last_seq) {
            // Ahead: only possible with fsync off after a power loss (the log lost its newest
            // events but the index kept entries for them, and those seqs will be reused). Or
            // the watermark is unreadable, or a read found the indexes damaged. Either way the
            // index is rebuilt from the log.
            tracing::warn!(
                last_seq,
                "the index is ahead of the log or damaged; rebuilding it"
            );
            index_tree.remove_all()?;
        }
        let mut index_file = index_sync()?;
        let mut index_durable = || index_db.make_durable(index_file.as_mut());
        match migrate::INDEX.upgrade(&index_tree, &mut index_durable) {
            // Derived from the log: indexes of a format this build cannot read are rebuilt.
            Err(StoreError::Format { found, .. }) => {
                tracing::warn!(found, "the indexes are in another format; rebuilding them");
                index_tree.remove_all()?;
                migrate::INDEX.upgrade(&index_tree, &mut index_durable)?;
            }
            other => drop(other?),
        }
        let (rule, pacing) = (
            keys::KEY_RULE,
            index::Pacing::for_memory(config.memory_tier()).boosting_before(config.max_index_lag()),
        );
        let memory_shape = pacing.memory_shape();
        let (index, index_writer, indexed) = match index::open(
            index_db.clone(),
            rule,
            index_sync()?,
            memory_shape,
            Arc::clone(&purged),
            config.index_blocks(),
        ) {
            Err(err @ StoreError::Corrupt { .. }) => {
                // The indexes are derived from the log: rebuild rather than refuse to start.
                tracing::error!(error = %err, "the indexes are damaged; rebuilding them from the log");
                index_tree.remove_all()?;
                migrate::INDEX.upgrade(&index_tree, &mut index_durable)?;
                index::open(
                    index_db.clone(),
                    rule,
                    index_sync()?,
                    memory_shape,
                    purged,
                    config.index_blocks(),
                )?
            }
            other => other?,
        };
        let progress = Arc::new(Progress::new(last_seq, indexed));
        let prune_sync = match config.fsync {
            true => Some(FileSync::open(&log_path)?),
            false => None,
        };
        let started = writer::start(
            log_db.clone(),
            log.clone(),
            Arc::clone(&index),
            log_sync,
            Arc::clone(&progress),
            config.quarantine_max_bytes,
            config.max_index_lag(),
        )?;
        let indexer = {
            let indexer = index::indexer::Indexer {
                log: log.clone(),
                index: index_writer,
                progress: Arc::clone(&progress),
                pacing,
            };
            std::thread::Builder::new()
                .name("gancho-indexer".to_owned())
                .spawn(move || indexer.run())
                .map_err(|source| StoreError::Io {
                    what: "starting the indexer thread".to_owned(),
                    source,
                })?
        };
        let blocks = Arc::new(cache::BlockCache::new(256));
        let pruner = log::prune::Pruner {
            db: log_db.clone(),
            log: log.clone(),
            index: Arc::clone(&index),
            blocks: Arc::clone(&blocks),
            quarantine: started.quarantine,
            sync: Mutex::new(prune_sync),
            running: Mutex::new(()),
        };
        Ok(Store {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                log_db,
                log,
                index_db,
                index,
                appender: started.appender,
                blocks,
                pruner,
                progress,
                threads: Mutex::new(Some(Threads {
                    writer: started.writer,
                    flusher: started.flusher,
                    indexer,
                })),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The handle through which events are appended durably.
    pub fn appender(&self) -> Appender {
        self.inner.appender.clone()
    }

    /// The event with this sequence number.
    pub fn get(&self, seq: u64) -> Result<Option<Event>, StoreError> {
        if seq > self.inner.progress.durable.load(Ordering::Acquire)
            || self.inner.index.purged().contains(seq)
        {
            return Ok(None);
        }
        let Some(block) = self.inner.blocks.block(&self.inner.log, seq)? else {
            return Ok(None);
        };
        match block.record(seq) {
            Some(record) => codec::decode_event(seq, record).map(Some),
            None => Ok(None),
        }
    }

    /// How far the log is durable and indexed.
    pub fn status(&self) -> LogStatus {
        LogStatus {
            durable: self.inner.progress.durable.load(Ordering::Acquire),
            indexed: self.inner.progress.indexed.load(Ordering::Acquire),
        }
    }

    /// Why the store stopped accepting events, if it failed (a flush or fdatasync error). The
    /// daemon should then exit so that its supervisor restarts it.
    pub fn failure(&self) -> Option<String> {
        self.inner.progress.failure()
    }

    /// Waits until the indexes hold every event up to `seq`, or the timeout passes; returns
    /// whether they do.
    pub fn wait_indexed(&self, seq: u64, timeout: Duration) -> bool {
        let progress = &self.inner.progress;
        progress.wait_until(|| progress.indexed.load(Ordering::Acquire) >= seq, timeout)
    }

    /// The seq of the log's first block, `None` for an empty log: no event below it is stored
    /// (some at or above it may be pruned). What a cluster node keeps of its partition's stream
    /// follows it.
    pub fn first_stored_seq(&self) -> Result<Option<u64>, StoreError> {
        codec::log_start(&self.inner.log.tree)
    }

    /// The sequence number of the newest event, 0 for an empty log.
    pub fn last_seq(&self) -> Result<u64, StoreError> {
        codec::log_end(&self.inner.log.tree).map(|(seq, _)| seq)
    }

    /// Deletes what is past its retention (see [`PruneRequest`]): events from the log and the
    /// indexes (whose runs are written again without them in the background), quarantine
    /// records. One prune runs at a time; ingest and reads go on meanwhile.
    pub fn prune(&self, request: &PruneRequest) -> Result<PruneReport, StoreError> {
        self.inner.pruner.prune(request)
    }

    /// Whether index runs wait to be written again without the entries of pruned events.
    pub fn index_rewrites_pending(&self) -> bool {
        self.inner.index.rewrites_pending()
    }

    /// How many events were pruned, ever.
    pub fn pruned(&self) -> u64 {
        self.inner.index.purged().total()
    }

    /// Events matching the query, in log order (oldest first), the newest `query.limit` of them.
    pub fn events(&self, query: &EventQuery) -> Result<Vec<Event>, StoreError> {
        let indexed = self.inner.progress.indexed.load(Ordering::Acquire);
        let durable = self.inner.progress.durable.load(Ordering::Acquire);
        query::run(&self.inner.log, &self.inner.index, query, indexed, durable)
    }

    /// The answer to `query` (as [`Store::events`]), handed to `f` one event at a time, oldest
    /// first, without holding it whole: listing a million events costs no more memory than
    /// listing a hundred. An error of `f` stops the walk and is returned.
    pub fn each_event(
        &self,
        query: &EventQuery,
        f: impl FnMut(Event) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.each_event_before(query, None, f)
    }

    /// [`Store::each_event`] over the events with a seq below `before` only: with a `limit`,
    /// the page of the newest `limit` of those, and the smallest seq handed over is where the
    /// next page (further back) starts.
    pub fn each_event_before(
        &self,
        query: &EventQuery,
        before: Option<u64>,
        f: impl FnMut(Event) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let indexed = self.inner.progress.indexed.load(Ordering::Acquire);
        let mut durable = self.inner.progress.durable.load(Ordering::Acquire);
        if let Some(before) = before {
            durable = durable.min(before.saturating_sub(1));
        }
        let indexed = indexed.min(durable);
        query::each(
            &self.inner.log,
            &self.inner.index,
            query,
            (indexed, durable),
            f,
        )
    }

    /// Every event with a seq in `from..=to` (durable ones only), in log order.
    pub fn read_range(&self, from: u64, to: u64) -> Result<Vec<Event>, StoreError> {
        self.read_range_where(from, to, |_, _| true)
    }

    /// The events with a seq in `from..=to` (durable ones only) whose (source, type) `keep`
    /// accepts, in log order; the others are not decoded.
    pub fn read_range_where(
        &self,
        from: u64,
        to: u64,
        keep: impl Fn(&str, &str) -> bool,
    ) -> Result<Vec<Event>, StoreError> {
        let to = to.min(self.inner.progress.durable.load(Ordering::Acquire));
        let mut events = Vec::new();
        let purged = self.inner.index.purged();
        self.inner
            .log
            .for_each_record(from.max(1), to, |seq, record| {
                if purged.contains(seq) {
                    return Ok(());
                }
                let view = codec::view_record(seq, record)?;
                if keep(view.source, view.kind) {
                    events.push(codec::event_from_view(view)?);
                }
                Ok(())
            })?;
        Ok(events)
    }

    /// The (event time ms, seq) of the events in a window, in `order`, at most `limit`, from the
    /// indexes (O(log n + k)); events the indexer has not reached yet are read from the log.
    pub fn window(
        &self,
        window: &Window,
        order: Order,
        limit: usize,
    ) -> Result<Vec<(i64, u64)>, StoreError> {
        self.run_window(window, (order, limit, true))
            .map(|(found, _)| found)
    }

    /// How many events a window holds, counting no further than `cap`, without listing them.
    pub fn count(&self, window: &Window, cap: usize) -> Result<usize, StoreError> {
        self.run_window(window, (Order::Oldest, cap, false))
            .map(|(_, count)| count)
    }

    fn run_window(
        &self,
        window: &Window,
        how: (Order, usize, bool),
    ) -> Result<(Vec<(i64, u64)>, usize), StoreError> {
        let indexed = self.inner.progress.indexed.load(Ordering::Acquire);
        let durable = self.inner.progress.durable.load(Ordering::Acquire);
        let window = Window {
            max_seq: window.max_seq.min(durable),
            ..window.clone()
        };
        query::window(&self.inner.log, &self.inner.index, &window, how, indexed)
    }

    /// The event with this seq, which must be in the log.
    pub fn event(&self, seq: u64) -> Result<Event, StoreError> {
        self.get(seq)?.ok_or_else(|| StoreError::Corrupt {
            key: format!("L{seq}"),
            reason: "event missing from the log".to_owned(),
        })
    }

    /// How many quarantine records were dropped, ever, to keep it under `quarantine_max_bytes`.
    pub fn quarantine_dropped(&self) -> Result<u64, StoreError> {
        Ok(self
            .inner
            .log
            .tree
            .get(log::codec::QUARANTINE_DROPPED_KEY)?
            .and_then(|v| keys::read_u64(&v[..]))
            .unwrap_or(0))
    }

    /// The seq of the event a source posted with this id (`p:…` or `h:…`, as listed), if it
    /// is stored: from the dedup index, or from the log's unindexed tail.
    pub fn find_event(&self, source: &str, id: &str) -> Result<Option<u64>, StoreError> {
        let indexed = self.inner.progress.indexed.load(Ordering::Acquire);
        let durable = self.inner.progress.durable.load(Ordering::Acquire);
        if let Some(value) = self.inner.index.get(&keys::dedup_key(source, id))? {
            return Ok(keys::read_u64(&value));
        }
        let mut found = None;
        self.inner
            .log
            .for_each_record(indexed + 1, durable, |seq, record| {
                let view = codec::view_record(seq, record)?;
                if view.source == source && view.id == id {
                    found = Some(seq);
                }
                Ok(())
            })?;
        Ok(found)
    }

    /// Quarantined items, oldest first, the newest `limit` of them.
    pub fn quarantine(&self, limit: usize) -> Result<Vec<Quarantined>, StoreError> {
        let mut items = Vec::new();
        self.each_quarantined(limit, |item| {
            items.push(item);
            Ok(())
        })?;
        Ok(items)
    }

    /// Quarantined items handed to `f` one at a time, oldest first, the newest `limit` of
    /// them (0: all, without holding them).
    pub fn each_quarantined(
        &self,
        limit: usize,
        f: impl FnMut(Quarantined) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        query::each_quarantined(&self.inner.log.tree, None, limit, f)
    }

    /// [`Store::each_quarantined`] over the records with an id below `before` only. A record
    /// (one request's rejected items, which share its id) is handed over whole, so a page may
    /// pass `limit` by the rest of its oldest record; the smallest id handed over is where the
    /// next page starts.
    pub fn each_quarantined_before(
        &self,
        before: Option<u64>,
        limit: usize,
        f: impl FnMut(Quarantined) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        query::each_quarantined(&self.inner.log.tree, before, limit, f)
    }

    /// Stops accepting appends, waits until everything submitted is durable, stops the indexer
    /// after its current batch (it resumes at the next start), and flushes. Appends after this
    /// fail with [`StoreError::Closed`].
    pub fn shutdown(&self) -> Result<(), StoreError> {
        let threads = self
            .inner
            .threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(threads) = threads {
            self.inner.progress.closing.store(true, Ordering::Release);
            self.inner.progress.notify();
            self.inner.appender.send_shutdown();
            join(threads.writer, "writer");
            join(threads.flusher, "flusher");
            self.inner.progress.stop();
            join(threads.indexer, "indexer");
        }
        self.inner.log_db.flush()?;
        self.inner.index_db.flush()?;
        Ok(())
    }
}

fn join(thread: JoinHandle<()>, name: &str) {
    if thread.join().is_err() {
        tracing::error!(thread = name, "a store thread panicked");
    }
}

#[cfg(test)]
mod append_at_tests;
#[cfg(test)]
mod backpressure_tests;
#[cfg(test)]
mod crash_tests;
#[cfg(test)]
mod prune_tests;
#[cfg(test)]
mod recovery_tests;
#[cfg(test)]
mod segments_tests;
#[cfg(test)]
pub(crate) mod tests;
