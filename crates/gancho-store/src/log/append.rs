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
    /// The seq the event must take ([`Appender::append_at`]); `None`: the next one.
    pub(super) at: Option<u64>,
    pub(super) dedup_key: Vec<u8>,
    /// A 128-bit hash of `dedup_key`, how `pending` knows it without keeping a copy.
    pub(super) dedup_hash: u128,
    pub(super) record: Vec<u8>,
}

fn prepare(at: Option<u64>, event: &NewEvent) -> Result<PreparedEvent, StoreError> {
    let dedup_key = dedup_key(&event.source, event.id.as_str());
    Ok(PreparedEvent {
        at,
        dedup_hash: xxh3_128(&dedup_key),
        dedup_key,
        record: codec::encode_event(event)?,
    })
}

impl Prepared {
    fn new(submission: Submission) -> Result<Prepared, StoreError> {
        let events = submission
            .events
            .iter()
            .map(|event| prepare(None, event))
            .collect::<Result<Vec<_>, _>>()?;
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

impl Prepared {
    /// Events with the seqs they must take, which must grow.
    fn placed(events: &[(u64, NewEvent)]) -> Result<Prepared, StoreError> {
        let mut prepared = Vec::with_capacity(events.len());
        let mut before = 0;
        for (at, event) in events {
            if *at <= before {
                return Err(StoreError::OutOfOrder(format!(
                    "seq {at} given after seq {before}: the seqs of a submission must grow from 1"
                )));
            }
            before = *at;
            prepared.push(prepare(Some(*at), event)?);
        }
        Ok(Prepared {
            events: prepared,
            quarantined: Vec::new(),
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
    /// [`Appender::append_at`] only: the seqs given that the log had reached already (an
    /// event stored there before, or no event), which were skipped.
    pub skipped: Vec<u64>,
}

pub(super) type ReplyTx = oneshot::Sender<Result<AppendReport, StoreError>>;
type ReplyRx = oneshot::Receiver<Result<AppendReport, StoreError>>;

/// The writer's answer to a queued submission (or why it was not queued), once it comes.
async fn answer(queued: Result<ReplyRx, StoreError>) -> Result<AppendReport, StoreError> {
    match queued {
        Ok(rx) => rx.await.unwrap_or(Err(StoreError::Closed)),
        Err(err) => Err(err),
    }
}

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
        answer(self.submit(submission))
    }

    /// Appends events at the seqs given with them, which must grow (cluster mode: a
    /// partition's events at their stream's sequence numbers, so that whatever is derived from
    /// an event's seq is the same on every node that stores them). Resolves once they are
    /// durable.
    /// - A seq the log has reached already is skipped, whatever it held (the same events read
    ///   again after a restart), and reported in [`AppendReport::skipped`].
    /// - A seq after the log's end leaves the seqs between without an event: they read as
    ///   pruned (absent to every reader, counted in [`crate::Store::pruned`]).
    /// - An event whose source and id the log holds already is not stored again; its seq is
    ///   left without an event, and the earlier seq is reported as a duplicate.
    pub fn append_at(
        &self,
        events: &[(u64, NewEvent)],
    ) -> impl std::future::Future<Output = Result<AppendReport, StoreError>> + use<> {
        answer(Prepared::placed(events).and_then(|prepared| self.queue(prepared)))
    }

    /// [`Appender::append`] for code that is not async. Must not be called from an async task.
    pub fn append_blocking(&self, submission: Submission) -> Result<AppendReport, StoreError> {
        self.submit(submission)?
            .blocking_recv()
            .unwrap_or(Err(StoreError::Closed))
    }

    fn submit(&self, submission: Submission) -> Result<ReplyRx, StoreError> {
        self.queue(Prepared::new(submission)?)
    }

    fn queue(&self, prepared: Prepared) -> Result<ReplyRx, StoreError> {
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
