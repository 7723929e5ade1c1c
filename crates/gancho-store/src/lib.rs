//! The durable store of gancho: the event log with its sequence numbers, the dedup index, the
//! index by (source, type, correlation key, event time), the quarantine of rejected items, and
//! the engine's state (cursor, rule state, timers, outbox; see [`EngineState`]).
//!
//! Only this crate knows sled; no sled type appears in its public API, so another engine can
//! replace it. It knows nothing of HTTP, scripts or actions, and it never reads the wall clock:
//! times arrive on the events.
//!
//! A key design decision made here is that all appends go through one writer thread and one
//! flusher thread ([`Appender`]): the writer deduplicates and writes each group of requests
//! atomically (a commit record closes it, so nothing is ever half-stored), and the flusher makes every applied
//! group durable with one flush (and, by default, one `fdatasync`) shared by all the requests
//! that arrived meanwhile. This is group commit: durability costs one flush per group, not per
//! request, and it also avoids sled 0.34's deadlock under concurrent `flush_async` calls.
//! The indexes are written behind the log by an indexer thread, because sled's cost per insert
//! would otherwise set the ingest rate; queries merge in the log's unindexed tail, so their
//! answers are always complete (see `indexer.rs`).

mod cache;
mod codec;
mod error;
mod index;
mod indexer;
mod outbox;
mod progress;
mod query;
mod state;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use gancho_core::Event;

pub use error::StoreError;
pub use outbox::{Attempt, DeadLetter, Delivery, OutboxItem};
pub use query::{EventQuery, KeyFilter, Order, Window};
pub use state::{
    Change, EngineState, ExpectShape, Expectation, StateValue, Timer, expectation_name,
};
pub use writer::{AppendReport, Appender, Rejected, Submission};

use crate::progress::Progress;

/// How the store is opened.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// After sled's flush, also `fdatasync` the log file, so an acknowledged event survives a
    /// power loss and not only a crash of the process. Default: true.
    pub fsync: bool,
    /// sled's page cache, in bytes. Default: 256 MiB.
    pub cache_capacity: u64,
}

impl Default for StoreConfig {
    fn default() -> StoreConfig {
        StoreConfig {
            fsync: true,
            cache_capacity: 256 * 1024 * 1024,
        }
    }
}

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
    log_db: sled::Db,
    events: sled::Tree,
    /// The index database: dedup and query indexes and the indexer's watermark. A database of
    /// its own so that the indexer's many small writes neither lengthen the group-commit
    /// flushes of the log nor contend with its writer for sled's batch lock.
    index_db: sled::Db,
    index: Arc<index::Index>,
    /// The engine's database: cursor, rule state, timers, outbox (see `state.rs`).
    engine: EngineState,
    engine_db: sled::Db,
    appender: Appender,
    /// Decompressed log blocks, for single-event reads.
    blocks: cache::BlockCache,
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

/// A quarantined item: something a source sent that could not be made into an event, kept with
/// the reason so an operator can see it (and, later, replay it).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Quarantined {
    pub id: u64,
    pub source: String,
    pub received: chrono::DateTime<chrono::Utc>,
    pub reason: String,
    /// The item exactly as it was sent.
    pub item: Box<serde_json::value::RawValue>,
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
        let old_index = path.join("index");
        if old_index.is_dir() {
            // The indexes of an earlier layout (one sled key per entry): rebuilt from the log.
            tracing::info!(path = %old_index.display(), "removing indexes of an earlier layout; they are rebuilt from the log");
            std::fs::remove_dir_all(&old_index).map_err(|source| StoreError::Io {
                what: format!("removing {}", old_index.display()),
                source,
            })?;
        }
        // The index gets half of the cache: dedup lookups land all over its key space, while
        // the log is written at its end and read near it.
        let log_db = open_db(&log_path, config.cache_capacity / 4)?;
        let events = log_db.open_tree("events").map_err(StoreError::sled)?;
        codec::check_schema(&events)?;
        let discarded = codec::discard_uncommitted(&events)?;
        if discarded > 0 {
            tracing::warn!(
                discarded,
                "discarded the unacknowledged tail of a group a crash interrupted"
            );
            log_db.flush().map_err(StoreError::sled)?;
        }
        let index_db = open_db(&index_path, config.cache_capacity / 2)?;
        let engine_path = path.join("engine");
        let engine_db = open_db(&engine_path, config.cache_capacity / 4)?;
        let engine = EngineState::open(engine_db.clone(), &engine_path, config.fsync)?;
        let index_tree = index_db.open_tree("index").map_err(StoreError::sled)?;
        let log_sync = if config.fsync {
            Some(writer::FileSync::open(&log_path)?)
        } else {
            None
        };
        let index_sync = || -> Result<Option<writer::FileSync>, StoreError> {
            match config.fsync {
                true => writer::FileSync::open(&index_path).map(Some),
                false => Ok(None),
            }
        };
        let last_seq = codec::last_seq(&events)?;
        let watermark = match codec::indexed_seq(&index_tree) {
            Err(StoreError::Corrupt { .. }) => None,
            other => Some(other?),
        };
        let condemned = index_tree
            .contains_key(codec::REBUILD_KEY)
            .map_err(StoreError::sled)?;
        if condemned || watermark.is_none_or(|indexed| indexed > last_seq) {
            // Ahead: only possible with fsync off after a power loss (the log lost its newest
            // events but the index kept entries for them, and those seqs will be reused). Or
            // the watermark is unreadable, or a read found the indexes damaged. Either way the
            // index is rebuilt from the log.
            tracing::warn!(
                last_seq,
                "the index is ahead of the log or damaged; rebuilding it"
            );
            clear(&index_tree)?;
        }
        let (index, index_writer, indexed) = match index::open(index_db.clone(), index_sync()?) {
            Err(err @ StoreError::Corrupt { .. }) => {
                // The indexes are derived from the log: rebuild rather than refuse to start.
                tracing::error!(error = %err, "the indexes are damaged; rebuilding them from the log");
                clear(&index_tree)?;
                index::open(index_db.clone(), index_sync()?)?
            }
            other => other?,
        };
        let progress = Arc::new(Progress::new(last_seq, indexed));
        let started = writer::start(
            log_db.clone(),
            events.clone(),
            Arc::clone(&index),
            log_sync,
            Arc::clone(&progress),
        )?;
        let indexer = {
            let indexer = indexer::Indexer {
                events: events.clone(),
                index: index_writer,
                progress: Arc::clone(&progress),
            };
            std::thread::Builder::new()
                .name("gancho-indexer".to_owned())
                .spawn(move || indexer.run())
                .map_err(|source| StoreError::Io {
                    what: "starting the indexer thread".to_owned(),
                    source,
                })?
        };
        Ok(Store {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                log_db,
                events,
                index_db,
                index,
                engine,
                engine_db,
                appender: started.appender,
                blocks: cache::BlockCache::new(256),
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
        if seq > self.inner.progress.durable.load(Ordering::Acquire) {
            return Ok(None);
        }
        let Some(block) = self.inner.blocks.block(&self.inner.events, seq)? else {
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
        self.inner
            .progress
            .failure()
            .or_else(|| self.inner.engine.failure())
    }

    /// Waits until the indexes hold every event up to `seq`, or the timeout passes; returns
    /// whether they do.
    pub fn wait_indexed(&self, seq: u64, timeout: Duration) -> bool {
        let progress = &self.inner.progress;
        progress.wait_until(|| progress.indexed.load(Ordering::Acquire) >= seq, timeout)
    }

    /// The sequence number of the newest event, 0 for an empty log.
    pub fn last_seq(&self) -> Result<u64, StoreError> {
        codec::last_seq(&self.inner.events)
    }

    /// Events matching the query, in log order (oldest first), the newest `query.limit` of them.
    pub fn events(&self, query: &EventQuery) -> Result<Vec<Event>, StoreError> {
        let indexed = self.inner.progress.indexed.load(Ordering::Acquire);
        let durable = self.inner.progress.durable.load(Ordering::Acquire);
        query::run(
            &self.inner.events,
            &self.inner.index,
            query,
            indexed,
            durable,
        )
    }

    /// The engine's durable state.
    pub fn engine_state(&self) -> &EngineState {
        &self.inner.engine
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
        codec::for_each_record(&self.inner.events, from.max(1), to, |seq, record| {
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
        query::window(&self.inner.events, &self.inner.index, &window, how, indexed)
    }

    /// The event with this seq, which must be in the log.
    pub fn event(&self, seq: u64) -> Result<Event, StoreError> {
        self.get(seq)?.ok_or_else(|| StoreError::Corrupt {
            key: format!("L{seq}"),
            reason: "event missing from the log".to_owned(),
        })
    }

    /// Quarantined items, oldest first, the newest `limit` of them.
    pub fn quarantine(&self, limit: usize) -> Result<Vec<Quarantined>, StoreError> {
        query::quarantine(&self.inner.events, limit)
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
            self.inner.appender.send_shutdown();
            join(threads.writer, "writer");
            join(threads.flusher, "flusher");
            self.inner.progress.stop();
            join(threads.indexer, "indexer");
        }
        self.inner.engine.close();
        self.inner.log_db.flush().map_err(StoreError::sled)?;
        self.inner.index_db.flush().map_err(StoreError::sled)?;
        self.inner.engine_db.flush().map_err(StoreError::sled)?;
        Ok(())
    }
}

/// Opens sled, retrying a lock held for a moment: a store closed in this process releases its
/// lock only when sled's own background thread lets go of it, shortly after.
fn open_db(path: &Path, cache_capacity: u64) -> Result<sled::Db, StoreError> {
    let mut attempts = 0;
    loop {
        match sled_config(path, cache_capacity).open() {
            Ok(db) => return Ok(db),
            Err(err) => match StoreError::from_open(path, err) {
                StoreError::Locked { .. } if attempts < 20 => {
                    attempts += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                other => return Err(other),
            },
        }
    }
}

/// How sled is configured. Its segment size is fixed when a store is created: change it and
/// existing stores no longer open.
fn sled_config(path: &Path, cache_capacity: u64) -> sled::Config {
    sled::Config::new()
        .path(path)
        .cache_capacity(cache_capacity)
        .mode(sled::Mode::HighThroughput)
        // sled writes a page larger than a quarter of a segment to a file of its own, and a
        // leaf holds up to 16 log blocks: 4 MiB segments keep such leaves in the log.
        .segment_size(4 * 1024 * 1024)
}

/// Empties a tree with plain removals: not `Tree::clear`, which would put sled behind its global
/// lock (see writer.rs).
fn clear(tree: &sled::Tree) -> Result<(), StoreError> {
    for key in tree.iter().keys() {
        tree.remove(key.map_err(StoreError::sled)?)
            .map_err(StoreError::sled)?;
    }
    Ok(())
}

fn join(thread: JoinHandle<()>, name: &str) {
    if thread.join().is_err() {
        tracing::error!(thread = name, "a store thread panicked");
    }
}

#[cfg(test)]
mod tests;
