//! The writer's front door: what a request submits (events and rejected items), encoded on
//! the caller's thread so the one writer thread only dedups and copies bytes, the job queue, and
//! what the caller gets back once the submission is durable. The writer itself is `writer.rs`.

use std::sync::mpsc;

use chrono::{DateTime, Utc};
use gancho_core::NewEvent;
use tokio::sync::oneshot;
use xxhash_rust::xxh3::xxh3_128;

use super::codec;
use super::codec::Quarantined;
use crate::error::StoreError;
use crate::keys::dedup_key;

/// What one request asks the store to keep: the events it yielded, and the items that could not
/// be made into events, which go to the quarantine. A submission is applied all or nothing.
#[derive(Debug, Default)]
pub struct Submission {
    pub events: Vec<NewEvent>,
    pub rejected: Vec<Rejected>,
}

/// An item a source sent that is not a valid event, and why.
#[derive(Debug)]
pub struct Rejected {
    pub source: String,
    pub received: DateTime<Utc>,
    pub reason: String,
    /// The item exactly as it was sent.
    pub item: Box<serde_json::value::RawValue>,
}

/// A submission encoded on the caller's thread, so the single writer thread only dedups and
/// copies bytes.
pub(crate) struct Prepared {
    pub(super) events: Vec<PreparedEvent>,
    pub(super) quarantined: Vec<Quarantined>,
}

pub(super) struct PreparedEvent {
    pub(super) dedup_key: Vec<u8>,
    /// A 128-bit hash of `dedup_key`, how `pending` knows it without keeping a copy.
    pub(super) dedup_hash: u128,
    pub(super) record: Vec<u8>,
}

impl Prepared {
    fn new(submission: Submission) -> Result<Prepared, StoreError> {
        let mut events = Vec::with_capacity(submission.events.len());
        for event in &submission.events {
            let dedup_key = dedup_key(&event.source, event.id.as_str());
            events.push(PreparedEvent {
                dedup_hash: xxh3_128(&dedup_key),
                dedup_key,
                record: codec::encode_event(event)?,
            });
        }
        let quarantined = submission
            .rejected
            .into_iter()
            .map(|r| Quarantined {
                id: 0,
                source: r.source,
                received: r.received,
                reason: r.reason,
                item: r.item,
            })
            .collect();
        Ok(Prepared {
            events,
            quarantined,
        })
    }
}

/// What became of a submission once it is durable.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AppendReport {
    /// Sequence numbers of the events stored now, in submission order.
    pub stored: Vec<u64>,
    /// Sequence numbers of the events already stored earlier, which were skipped.
    pub duplicates: Vec<u64>,
    /// The quarantine record's id, once per item put in quarantine (a request's invalid items
    /// share one record).
    pub quarantined: Vec<u64>,
}

pub(super) type ReplyTx = oneshot::Sender<Result<AppendReport, StoreError>>;

pub(crate) enum Job {
    Append(Prepared, ReplyTx),
    Shutdown,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Job::Append(sub, _) => write!(f, "Append({} events)", sub.events.len()),
            Job::Shutdown => f.write_str("Shutdown"),
        }
    }
}

/// The handle through which events are appended. Cheap to clone and to share between threads.
#[derive(Debug, Clone)]
pub struct Appender {
    // `SyncSender` is `Sync` and cheap to clone: no lock on the ingest path.
    tx: mpsc::SyncSender<Job>,
}

impl Appender {
    pub(super) fn new(tx: mpsc::SyncSender<Job>) -> Appender {
        Appender { tx }
    }

    /// Appends a submission; resolves once it is durable (or has failed). Events already in
    /// the store (same source and event id) are reported as duplicates, not stored again.
    pub fn append(
        &self,
        submission: Submission,
    ) -> impl std::future::Future<Output = Result<AppendReport, StoreError>> + use<> {
        let rx = self.submit(submission);
        async move {
            match rx {
                Ok(rx) => rx.await.unwrap_or(Err(StoreError::Closed)),
                Err(err) => Err(err),
            }
        }
    }

    /// [`Appender::append`] for code that is not async. Must not be called from an async task.
    pub fn append_blocking(&self, submission: Submission) -> Result<AppendReport, StoreError> {
        self.submit(submission)?
            .blocking_recv()
            .unwrap_or(Err(StoreError::Closed))
    }

    fn submit(
        &self,
        submission: Submission,
    ) -> Result<oneshot::Receiver<Result<AppendReport, StoreError>>, StoreError> {
        let prepared = Prepared::new(submission)?;
        let (reply_tx, reply_rx) = oneshot::channel();
        self.send(Job::Append(prepared, reply_tx))?;
        Ok(reply_rx)
    }

    /// Asks the writer to stop after what is queued, waiting for room in the queue if need be.
    pub(crate) fn send_shutdown(&self) {
        // The writer may already be gone; then there is nothing to stop.
        let _ = self.tx.send(Job::Shutdown);
    }

    /// Queues a job without waiting: a full queue means the disk cannot keep up, and the caller
    /// is told to come back later rather than made to hold its memory in a growing queue.
    pub(crate) fn send(&self, job: Job) -> Result<(), StoreError> {
        self.tx.try_send(job).map_err(|err| match err {
            mpsc::TrySendError::Full(_) => StoreError::Busy,
            mpsc::TrySendError::Disconnected(_) => StoreError::Closed,
        })
    }
}
