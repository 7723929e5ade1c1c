//! Group commit: one writer thread stages and applies, one flusher thread makes durable.
//!
//! The writer takes every submission waiting in its queue, deduplicates each event against the
//! store and against the group itself, and applies the whole group as one sled batch (atomic in
//! one tree). It then hands the group's replies to the flusher and goes on with the next group
//! while the flusher flushes: while one group reaches the disk, the next is being applied. The
//! flusher takes every group handed to it so far, flushes once, `fdatasync`s the log file once,
//! and only then answers the waiting callers. No caller is answered before its events are
//! durable.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use chrono::{DateTime, Utc};
use gancho_core::{Event, NewEvent, time_to_millis};
use tokio::sync::oneshot;
use tracing::{debug, error};

use crate::codec;
use crate::{Quarantined, StoreError};

/// At most this many submissions are applied as one group, to bound a batch's memory.
const MAX_GROUP: usize = 1024;

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
    pub item: serde_json::Value,
}

/// What became of a submission once it is durable.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AppendReport {
    /// Sequence numbers of the events stored now, in submission order.
    pub stored: Vec<u64>,
    /// Sequence numbers of the events already stored earlier, which were skipped.
    pub duplicates: Vec<u64>,
    /// Ids of the items put in quarantine.
    pub quarantined: Vec<u64>,
}

type ReplyTx = oneshot::Sender<Result<AppendReport, StoreError>>;

enum Job {
    Append(Submission, ReplyTx),
    Shutdown,
}

/// The handle through which events are appended. Cheap to clone and to share between threads.
#[derive(Debug, Clone)]
pub struct Appender {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    tx: Mutex<mpsc::Sender<Job>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Job::Append(sub, _) => write!(f, "Append({} events)", sub.events.len()),
            Job::Shutdown => f.write_str("Shutdown"),
        }
    }
}

impl Appender {
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
        let (reply_tx, reply_rx) = oneshot::channel();
        let tx = self.shared.tx.lock().map_err(|_| StoreError::Closed)?;
        tx.send(Job::Append(submission, reply_tx))
            .map_err(|_| StoreError::Closed)?;
        Ok(reply_rx)
    }

    /// Lets everything already submitted become durable, then stops both threads. Appends
    /// after this fail with [`StoreError::Closed`].
    pub fn shutdown(&self) {
        if let Ok(tx) = self.shared.tx.lock() {
            // The writer may already be gone; then there is nothing to stop.
            let _ = tx.send(Job::Shutdown);
        }
        let threads = match self.shared.threads.lock() {
            Ok(mut threads) => std::mem::take(&mut *threads),
            Err(_) => return,
        };
        for thread in threads {
            if thread.join().is_err() {
                error!("a store thread panicked");
            }
        }
    }
}

pub(crate) fn start(
    db: sled::Db,
    events: sled::Tree,
    sync: Option<FileSync>,
) -> Result<Appender, StoreError> {
    let next_seq = codec::last_seq(&events)? + 1;
    let next_qid = codec::last_id(&events, codec::QUARANTINE)? + 1;
    let (tx, rx) = mpsc::channel();
    let (flush_tx, flush_rx) = mpsc::channel();
    let spawn_err = |source| StoreError::Io {
        what: "starting a store thread".to_owned(),
        source,
    };
    let writer = Writer {
        events,
        next_seq,
        next_qid,
    };
    let writer_thread = std::thread::Builder::new()
        .name("gancho-writer".to_owned())
        .spawn(move || writer.run(rx, flush_tx))
        .map_err(spawn_err)?;
    let flusher_thread = std::thread::Builder::new()
        .name("gancho-flusher".to_owned())
        .spawn(move || run_flusher(db, sync, flush_rx))
        .map_err(spawn_err)?;
    Ok(Appender {
        shared: Arc::new(Shared {
            tx: Mutex::new(tx),
            threads: Mutex::new(vec![writer_thread, flusher_thread]),
        }),
    })
}

struct Writer {
    events: sled::Tree,
    next_seq: u64,
    next_qid: u64,
}

/// A submission staged into the group's batch, waiting for the flush.
struct Staged {
    reply: ReplyTx,
    report: AppendReport,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Job>, flush_tx: mpsc::Sender<Vec<Staged>>) {
        let mut stop = false;
        while !stop {
            let Ok(first) = rx.recv() else { break };
            let mut jobs = vec![first];
            while jobs.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            let mut batch = sled::Batch::default();
            let mut group_ids: HashMap<Vec<u8>, u64> = HashMap::new();
            let (seq_before, qid_before) = (self.next_seq, self.next_qid);
            let mut staged = Vec::with_capacity(jobs.len());
            for job in jobs {
                match job {
                    Job::Shutdown => stop = true,
                    Job::Append(submission, reply) => {
                        match self.stage(submission, &mut batch, &mut group_ids) {
                            Ok(report) => staged.push(Staged { reply, report }),
                            Err(err) => {
                                let _ = reply.send(Err(err));
                            }
                        }
                    }
                }
            }
            if staged.is_empty() {
                continue;
            }
            if let Err(err) = self.events.apply_batch(batch) {
                error!(error = %err, "applying a batch of events failed");
                (self.next_seq, self.next_qid) = (seq_before, qid_before);
                let reason = err.to_string();
                for s in staged {
                    let _ = s.reply.send(Err(StoreError::Engine(reason.clone())));
                }
                continue;
            }
            if flush_tx.send(staged).is_err() {
                error!("the flusher thread is gone; stopping the writer");
                break;
            }
        }
        debug!("store writer stopped");
    }

    /// Adds one submission to the batch. Nothing is added unless the whole submission is.
    fn stage(
        &mut self,
        submission: Submission,
        batch: &mut sled::Batch,
        group_ids: &mut HashMap<Vec<u8>, u64>,
    ) -> Result<AppendReport, StoreError> {
        let mut report = AppendReport::default();
        let mut writes: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut new_ids: Vec<(Vec<u8>, u64)> = Vec::new();
        let mut seq = self.next_seq;
        for new_event in submission.events {
            let dedup_key = codec::dedup_key(&new_event.source, &new_event.id);
            let seen = match group_ids.get(&dedup_key) {
                Some(seq) => Some(*seq),
                None => match new_ids.iter().find(|(k, _)| *k == dedup_key) {
                    Some((_, seq)) => Some(*seq),
                    None => self
                        .events
                        .get(&dedup_key)
                        .map_err(StoreError::sled)?
                        .and_then(|v| codec::read_u64(&v)),
                },
            };
            if let Some(existing) = seen {
                report.duplicates.push(existing);
                continue;
            }
            let event = Event::new(seq, new_event);
            index_writes(&event, &mut writes);
            writes.push((codec::log_key(seq).to_vec(), codec::encode_event(&event)?));
            writes.push((dedup_key.clone(), seq.to_be_bytes().to_vec()));
            new_ids.push((dedup_key, seq));
            report.stored.push(seq);
            seq += 1;
        }
        let mut qid = self.next_qid;
        for rejected in submission.rejected {
            let item = Quarantined {
                id: qid,
                source: rejected.source,
                received: rejected.received,
                reason: rejected.reason,
                item: rejected.item,
            };
            writes.push((
                codec::quarantine_key(qid).to_vec(),
                codec::encode_quarantined(&item)?,
            ));
            report.quarantined.push(qid);
            qid += 1;
        }
        for (key, value) in writes {
            batch.insert(key, value);
        }
        group_ids.extend(new_ids);
        self.next_seq = seq;
        self.next_qid = qid;
        Ok(report)
    }
}

fn index_writes(event: &Event, writes: &mut Vec<(Vec<u8>, Vec<u8>)>) {
    let time_ms = time_to_millis(event.time);
    let mut by_type = codec::type_prefix(&event.source, &event.kind);
    codec::push_time_seq(&mut by_type, time_ms, event.seq);
    writes.push((by_type, Vec::new()));
    for (name, value) in &event.keys {
        let mut by_key = codec::key_prefix(&event.source, &event.kind, name, value);
        codec::push_time_seq(&mut by_key, time_ms, event.seq);
        writes.push((by_key, Vec::new()));
    }
}

fn run_flusher(db: sled::Db, mut sync: Option<FileSync>, rx: mpsc::Receiver<Vec<Staged>>) {
    while let Ok(mut staged) = rx.recv() {
        while let Ok(more) = rx.try_recv() {
            staged.extend(more);
        }
        let durable =
            db.flush()
                .map_err(|err| format!("flush: {err}"))
                .and_then(|_| match &mut sync {
                    Some(sync) => sync.sync(),
                    None => Ok(()),
                });
        match durable {
            Ok(()) => {
                for s in staged {
                    let _ = s.reply.send(Ok(s.report));
                }
            }
            Err(reason) => {
                // The events are applied but not known to be on disk. The callers are told it
                // failed, so the providers retry; a retry finds the event by its id and is
                // answered once a later flush succeeds.
                error!(error = %reason, "making events durable failed");
                for s in staged {
                    let _ = s.reply.send(Err(StoreError::Engine(reason.clone())));
                }
            }
        }
    }
    debug!("store flusher stopped");
}

/// What must reach the disk, beyond sled's flush, for an event to survive a power loss.
///
/// sled's flush writes its log file with `sync_file_range`, which neither waits for the disk's
/// cache nor persists the file's size: `fdatasync` does both. sled also writes pages larger
/// than a quarter of a segment (128 KiB by default: a large event with its node) to files of
/// their own under `blobs/`, and never syncs them; each new blob file and the folder that names
/// it are synced too.
#[derive(Debug)]
pub(crate) struct FileSync {
    log_file: File,
    blobs_dir: PathBuf,
    /// The highest blob id (sled names blob files by log position) already synced.
    synced_blob: u64,
}

impl FileSync {
    pub(crate) fn open(path: &Path) -> Result<FileSync, StoreError> {
        let io_err = |what: String| move |source| StoreError::Io { what, source };
        let log_path = path.join("db");
        let log_file = File::open(&log_path).map_err(io_err(format!(
            "opening {} for fdatasync",
            log_path.display()
        )))?;
        // The store's files may have just been created: make their names durable too.
        File::open(path)
            .and_then(|dir| dir.sync_all())
            .map_err(io_err(format!("syncing folder {}", path.display())))?;
        let mut sync = FileSync {
            log_file,
            blobs_dir: path.join("blobs"),
            synced_blob: 0,
        };
        sync.sync().map_err(StoreError::Engine)?;
        Ok(sync)
    }

    fn sync(&mut self) -> Result<(), String> {
        self.log_file
            .sync_data()
            .map_err(|err| format!("fdatasync: {err}"))?;
        let entries = match std::fs::read_dir(&self.blobs_dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(err) => return Err(format!("listing {}: {err}", self.blobs_dir.display())),
        };
        let mut newest = self.synced_blob;
        for entry in entries.flatten() {
            let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<u64>().ok())
            else {
                continue;
            };
            if id > self.synced_blob {
                File::open(entry.path())
                    .and_then(|f| f.sync_data())
                    .map_err(|err| format!("fdatasync of blob {id}: {err}"))?;
                newest = newest.max(id);
            }
        }
        if newest > self.synced_blob {
            File::open(&self.blobs_dir)
                .and_then(|dir| dir.sync_all())
                .map_err(|err| format!("syncing {}: {err}", self.blobs_dir.display()))?;
            self.synced_blob = newest;
        }
        Ok(())
    }
}
