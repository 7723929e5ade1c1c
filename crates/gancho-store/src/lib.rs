//! The durable store of gancho: the event log with its sequence numbers, the dedup index, the
//! index by (source, type, correlation key, event time), and the quarantine of rejected items.
//!
//! Only this crate knows sled; no sled type appears in its public API, so another engine can
//! replace it. It knows nothing of HTTP, scripts or actions, and it never reads the wall clock:
//! times arrive on the events.
//!
//! A key design decision made here is that all appends go through one writer thread and one
//! flusher thread ([`Appender`]): the writer deduplicates and applies each group of requests as
//! one atomic sled batch (so nothing is ever half-stored), and the flusher makes every applied
//! group durable with one flush (and, by default, one `fdatasync`) shared by all the requests
//! that arrived meanwhile. This is group commit: durability costs one flush per group, not per
//! request, and it also avoids sled 0.34's deadlock under concurrent `flush_async` calls.

mod codec;
mod error;
mod query;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use gancho_core::Event;

pub use error::StoreError;
pub use query::{EventQuery, KeyFilter};
pub use writer::{AppendReport, Appender, Rejected, Submission};

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
    db: sled::Db,
    events: sled::Tree,
    appender: Appender,
}

/// A quarantined item: something a source sent that could not be made into an event, kept with
/// the reason so an operator can see it (and, later, replay it).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Quarantined {
    pub id: u64,
    pub source: String,
    pub received: chrono::DateTime<chrono::Utc>,
    pub reason: String,
    pub item: serde_json::Value,
}

impl Store {
    /// Opens (or creates) the store in `path`. Fails with [`StoreError::Locked`] when another
    /// process has it open: sled allows one process per database.
    pub fn open(path: &Path, config: &StoreConfig) -> Result<Store, StoreError> {
        std::fs::create_dir_all(path).map_err(|source| StoreError::Io {
            what: format!("creating {}", path.display()),
            source,
        })?;
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(config.cache_capacity)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|err| StoreError::from_open(path, err))?;
        let events = db.open_tree("events").map_err(StoreError::sled)?;
        codec::check_schema(&events)?;
        let sync = if config.fsync {
            Some(writer::FileSync::open(path)?)
        } else {
            None
        };
        let appender = writer::start(db.clone(), events.clone(), sync)?;
        Ok(Store {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                db,
                events,
                appender,
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
        match self
            .inner
            .events
            .get(codec::log_key(seq))
            .map_err(StoreError::sled)?
        {
            Some(bytes) => codec::decode_event(&bytes).map(Some),
            None => Ok(None),
        }
    }

    /// The sequence number of the newest event, 0 for an empty log.
    pub fn last_seq(&self) -> Result<u64, StoreError> {
        codec::last_seq(&self.inner.events)
    }

    /// Events matching the query, in log order (oldest first), the newest `query.limit` of them.
    pub fn events(&self, query: &EventQuery) -> Result<Vec<Event>, StoreError> {
        query::run(&self.inner.events, query)
    }

    /// Quarantined items, oldest first, the newest `limit` of them.
    pub fn quarantine(&self, limit: usize) -> Result<Vec<Quarantined>, StoreError> {
        query::quarantine(&self.inner.events, limit)
    }

    /// Stops accepting appends, waits until everything submitted is durable, and flushes.
    pub fn shutdown(&self) -> Result<(), StoreError> {
        self.inner.appender.shutdown();
        self.inner.db.flush().map_err(StoreError::sled)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
