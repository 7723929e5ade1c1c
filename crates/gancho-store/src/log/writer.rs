//! Group commit: one writer thread stages and applies, one flusher thread makes durable.
//!
//! The writer takes every submission waiting in its queue, deduplicates each event, and writes
//! the whole group: its quarantined items and its events as one or a few log blocks (those
//! over 1 KiB appended to a segment file, `segments.rs`). It then hands the group to the
//! flusher and goes on with the next group while the flusher flushes: while one group reaches
//! the disk, the next is being applied. The flusher takes every group handed to it so far,
//! syncs the segments they wrote, writes their commit record (see `Writer::write_group` for
//! why that, and not a sled batch, makes a group atomic), flushes once, `fdatasync`s once, and
//! only then answers the waiting callers. No caller is answered before its events are durable,
//! and no commit record is written before the bytes it makes count are on disk (sled's own
//! thread and the kernel may make any sled write durable at any time).
//!
//! Deduplication is exact. An event id is either in the dedup index (written by the indexer) or,
//! if its event is not indexed yet, in the writer's own `pending` map (or, for an event the
//! indexer had not reached when the store opened, in its `backlog`, confirmed against the log).
//! The writer looks there first and in the index second; the indexer writes an id to the index
//! before the writer drops it (it only drops ids at or below the indexer's published
//! watermark), so an id is always in at least one of the places the writer looks.
//!
//! Backpressure: `pending` holds one id per event the indexer trails by. Past `max_lag` of them
//! (not counting those unindexed when the store opened) the writer takes no new group until the
//! indexer is back under it, so memory stays bounded under a sustained burst: requests wait in
//! the queue (and, once it is full, are answered 503), and ingest goes at the indexer's pace, a
//! batch of the indexer's at a time. An indexer that does not move for [`STALLED`] is not waited
//! for: the log's durability comes first, and the indexer's own errors are in the log.

use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use tracing::{debug, error, warn};
use xxhash_rust::xxh3::xxh3_128;

use super::append::{AppendReport, Appender, Job, Prepared, PreparedEvent, ReplyTx};
use super::codec;
use super::pending::{Backlog, Pending};
use super::segments::{Log, SegmentWriter};
use crate::error::StoreError;
use crate::index::Index;
use crate::keys::{dedup_key, read_u64};
use crate::kv::{Db, FileSync, Tree};
use crate::progress::Progress;

/// Submissions waiting for the writer, at most; more are refused with [`StoreError::Busy`].
const QUEUE_CAPACITY: usize = 8192;
/// At most this many submissions are applied as one group.
const MAX_GROUP: usize = 1024;
/// A group stops taking submissions once it holds this many events, to bound its memory.
const MAX_GROUP_EVENTS: usize = 20_000;
/// A writer waiting for the indexer stops waiting (and says so) once the indexer has not moved
/// for this long (in unit tests, less).
const STALLED: std::time::Duration =
    std::time::Duration::from_secs(if cfg!(test) { 3 } else { 30 });
/// A log block is closed once its records pass this size (before compression). Larger blocks
/// compress better and cost sled fewer inserts; reading one event decompresses its block.
const BLOCK_TARGET_BYTES: usize = 32 * 1024;
/// Seqs [`Appender::append_at`] leaves without an event between two events of a group: up to
/// this many, they take empty records in the block (a provider's retry leaves one); more start
/// a new block at the next event, so a large jump (a new owner reading a stream from where its
/// snapshot was taken) costs nothing per seq.
const FILL_AT_MOST: u64 = 64;

/// The running writer and flusher.
#[derive(Debug)]
pub(crate) struct Started {
    pub(crate) appender: Appender,
    pub(crate) writer: std::thread::JoinHandle<()>,
    pub(crate) flusher: std::thread::JoinHandle<()>,
    /// The quarantine's records, shared with pruning.
    pub(crate) quarantine: Arc<Mutex<QuarantineBook>>,
}

/// The quarantine's records (id, bytes), oldest first, and their total: the writer adds to it
/// and keeps it under its cap by dropping the oldest; pruning drops those past their retention.
#[derive(Debug, Default)]
pub(crate) struct QuarantineBook {
    pub(crate) records: std::collections::VecDeque<(u64, u64)>,
    pub(crate) bytes: u64,
}

pub(crate) fn start(
    db: Db,
    log: Log,
    index: Arc<Index>,
    sync: Option<FileSync>,
    progress: Arc<Progress>,
    quarantine_max: u64,
    max_lag: u64,
) -> Result<Started, StoreError> {
    let events = log.tree.clone();
    let tree = log.tree.clone();
    let (last_seq, last_qid) = codec::log_end(&events)?;
    // The quarantine's records, oldest first, with their sizes (one pass at open).
    let mut book = QuarantineBook::default();
    for entry in events.scan_prefix([codec::QUARANTINE]) {
        let (key, value) = entry?;
        if let Some(id) = key.get(1..).and_then(crate::keys::read_u64) {
            book.records.push_back((id, value.len() as u64));
            book.bytes += value.len() as u64;
        }
    }
    let quarantine = Arc::new(Mutex::new(book));
    let mut writer = Writer {
        events,
        segments: SegmentWriter::new(Arc::clone(&log.segments), sync.is_some()),
        log,
        index,
        next_seq: last_seq + 1,
        next_qid: last_qid + 1,
        pending: Pending::new(last_seq + 1),
        backlog: Backlog::default(),
        progress: Arc::clone(&progress),
        quarantine: Arc::clone(&quarantine),
        quarantine_max,
        max_lag,
        open_end: last_seq,
        stalled_at: None,
    };
    writer.load_pending(last_seq)?;
    let (tx, rx) = mpsc::sync_channel(QUEUE_CAPACITY);
    let (flush_tx, flush_rx) = mpsc::channel();
    let spawn_err = |source| StoreError::Io {
        what: "starting a store thread".to_owned(),
        source,
    };
    let writer = std::thread::Builder::new()
        .name("gancho-writer".to_owned())
        .spawn(move || writer.run(rx, flush_tx))
        .map_err(spawn_err)?;
    let flusher = std::thread::Builder::new()
        .name("gancho-flusher".to_owned())
        .spawn(move || super::flusher::run_flusher(db, tree, sync, flush_rx, progress))
        .map_err(spawn_err)?;
    Ok(Started {
        appender: Appender::new(tx),
        writer,
        flusher,
        quarantine,
    })
}

struct Writer {
    events: Tree,
    /// The same tree, for reading blocks wherever they are.
    log: Log,
    /// Where the group's larger blocks go.
    segments: SegmentWriter,
    /// Read for the dedup index only.
    index: Arc<Index>,
    next_seq: u64,
    next_qid: u64,
    /// Dedup keys (as 128-bit hashes) of events in the log but not yet in the dedup index, with
    /// their seq: those appended since the store opened ...
    pending: Pending,
    /// ... and those the indexer had not reached when it opened.
    backlog: Backlog,
    progress: Arc<Progress>,
    /// The quarantine's records, kept under `quarantine_max` by dropping the oldest.
    quarantine: Arc<Mutex<QuarantineBook>>,
    quarantine_max: u64,
    /// Past this many unindexed events, the writer waits for the indexer ...
    max_lag: u64,
    /// ... counted from this seq (the log's end at open) or the indexed one, whichever is later.
    open_end: u64,
    /// The indexed seq at which the writer found the indexer stalled and stopped waiting: it
    /// does not wait again until the indexer has moved from it.
    stalled_at: Option<u64>,
}

/// A submission staged into the group's batch, waiting for the flush.
pub(super) struct Staged {
    pub(super) reply: ReplyTx,
    pub(super) report: AppendReport,
}

/// A group applied to the tree, on its way to the disk.
pub(super) struct Applied {
    pub(super) staged: Vec<Staged>,
    pub(super) last_seq: u64,
    pub(super) last_qid: u64,
    /// The segment files the group appended blocks to: the flusher syncs them before it writes
    /// the group's commit record.
    pub(super) segments: Vec<Arc<std::fs::File>>,
}

impl Writer {
    /// Fills the backlog with the ids of the events the indexer has not reached (after a
    /// restart; after a rebuild of the indexes, every event). Pruned events have none.
    fn load_pending(&mut self, last_seq: u64) -> Result<(), StoreError> {
        let indexed = self.progress.indexed.load(Ordering::Acquire);
        let purged = self.index.purged();
        let each_id = |f: &mut dyn FnMut(u64, u128)| {
            self.log
                .for_each_record(indexed + 1, last_seq, |seq, record| {
                    if !purged.contains(seq) {
                        let view = codec::view_record(seq, record)?;
                        f(seq, xxh3_128(&dedup_key(view.source, view.id)));
                    }
                    Ok(())
                })
        };
        match Backlog::spanning(indexed + 1, last_seq) {
            Some(mut backlog) => {
                each_id(&mut |seq, id| backlog.push(seq, id))?;
                self.backlog = backlog.finish();
            }
            None => {
                // Over 4 billion seqs: the whole ids, in `pending` (in seq order; it notes where
                // seqs without an event are skipped).
                let pending = &mut self.pending;
                each_id(&mut |seq, id| pending.push(seq, id))?;
            }
        }
        debug!(
            backlog = self.backlog.len(),
            pending = self.pending.len(),
            "events waiting for the indexer"
        );
        Ok(())
    }

    /// Whether event `seq` of the log (one of the backlog's candidates) is stored under
    /// `dedup_key`. A pruned event is not.
    fn stored_under(&self, seq: u64, dedup_key_of: &[u8]) -> Result<bool, StoreError> {
        if self.index.purged().contains(seq) {
            return Ok(false);
        }
        let mut found = false;
        self.log.for_each_record(seq, seq, |seq, record| {
            let view = codec::view_record(seq, record)?;
            found = dedup_key(view.source, view.id) == dedup_key_of;
            Ok(())
        })?;
        Ok(found)
    }

    /// Past `max_lag` unindexed events, waits until the indexer is back under it, the store
    /// fails or closes, or the indexer has not moved for [`STALLED`]. Not work, for the
    /// watchdog: the indexer's heartbeat says whether it is moving.
    fn wait_for_indexer(&mut self) {
        let last = self.next_seq - 1;
        let progress = Arc::clone(&self.progress);
        let indexed = || progress.indexed.load(Ordering::Acquire);
        let behind = || last.saturating_sub(indexed().max(self.open_end));
        if behind() <= self.max_lag {
            return;
        }
        match self.stalled_at {
            Some(at) if at == indexed() => return,
            Some(_) => self.stalled_at = None,
            None => {}
        }
        let started = std::time::Instant::now();
        debug!(behind = behind(), "ingest waits for the indexer");
        let (mut seen, mut moved) = (indexed(), std::time::Instant::now());
        loop {
            let done = progress.wait_until(
                || {
                    behind() <= self.max_lag
                        || progress.failure().is_some()
                        || progress.closing.load(Ordering::Acquire)
                },
                std::time::Duration::from_secs(10),
            );
            if done {
                break;
            }
            if indexed() != seen {
                (seen, moved) = (indexed(), std::time::Instant::now());
            } else if moved.elapsed() >= STALLED {
                error!(
                    behind = behind(),
                    stalled = ?moved.elapsed(),
                    "the indexer has not moved: ingest goes on without waiting for it until it does"
                );
                self.stalled_at = Some(seen);
                break;
            }
            warn!(
                behind = behind(),
                max_lag = self.max_lag,
                waited = ?started.elapsed(),
                "ingest is waiting for the indexer to catch up"
            );
        }
        debug!(waited = ?started.elapsed(), "ingest goes on");
    }

    /// Drops from `pending` the ids the indexer has written to the dedup index.
    fn prune_pending(&mut self) {
        let indexed = self.progress.indexed.load(Ordering::Acquire);
        self.pending.drop_through(indexed);
        self.backlog.drop_through(indexed);
    }

    fn run(mut self, rx: mpsc::Receiver<Job>, flush_tx: mpsc::Sender<Applied>) {
        let heartbeat = gancho_core::heartbeat::Heartbeat::register("log writer");
        let mut stop = false;
        while !stop {
            let Ok(first) = rx.recv() else { break };
            if matches!(first, Job::Append(..)) {
                self.wait_for_indexer();
            }
            let _working = heartbeat.working();
            let mut jobs = vec![first];
            let mut n_events = 0;
            while jobs.len() < MAX_GROUP && n_events < MAX_GROUP_EVENTS {
                match rx.try_recv() {
                    Ok(job) => {
                        if let Job::Append(sub, _) = &job {
                            n_events += sub.events.len() + sub.quarantined.len();
                        }
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
            if self.progress.failure().is_some() {
                // The store failed: nothing more is written (what the failed flush left may or
                // may not be on disk; a later group must not be).
                for job in jobs {
                    if let Job::Append(_, reply) = job {
                        let _ = reply.send(Err(StoreError::Failed(
                            self.progress.failure().unwrap_or_default(),
                        )));
                    }
                }
                break;
            }
            self.prune_pending();
            let (seq_before, qid_before, pending_before) =
                (self.next_seq, self.next_qid, self.pending.len());
            let mut writes = Vec::new();
            let mut records = Vec::new();
            let mut gaps = Vec::new();
            let mut staged = Vec::with_capacity(jobs.len());
            for job in jobs {
                match job {
                    Job::Shutdown => stop = true,
                    Job::Append(submission, reply) => {
                        match self.stage(submission, &mut records, &mut writes, &mut gaps) {
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
            let mark = self.segments.mark();
            let placed = add_blocks(&mut writes, records, &mut self.segments);
            let written = placed
                .and_then(|()| self.write_group(&writes))
                .and_then(|()| self.record_gaps(&gaps));
            if let Err(err) = written {
                error!(error = %err, "writing a group of events failed");
                (self.next_seq, self.next_qid) = (seq_before, qid_before);
                self.pending.truncate(pending_before);
                let reason = err.to_string();
                // Undone before the callers hear of it: they may append again at once.
                let undone = self
                    .undo_group(&writes)
                    .and_then(|()| self.segments.rewind(mark))
                    .and_then(|()| self.unrecord_gaps(&gaps));
                for s in staged {
                    let _ = s.reply.send(Err(StoreError::Engine(reason.clone())));
                }
                if let Err(err) = undone {
                    // Keys of a failed group might remain; refuse further writes rather than
                    // reuse their sequence numbers. A restart discards everything after the
                    // last commit record.
                    error!(error = %err, "could not undo a failed group; the store stops");
                    self.progress
                        .fail(&format!("undoing a failed group: {err}"));
                    break;
                }
                continue;
            }
            {
                let mut book = self.quarantine.lock().unwrap_or_else(|e| e.into_inner());
                for (key, value) in &writes {
                    if key.first() == Some(&codec::QUARANTINE)
                        && let Some(id) = key.get(1..).and_then(crate::keys::read_u64)
                    {
                        book.records.push_back((id, value.len() as u64));
                        book.bytes += value.len() as u64;
                    }
                }
            }
            self.cap_quarantine();
            let applied = Applied {
                staged,
                last_seq: self.next_seq - 1,
                last_qid: self.next_qid - 1,
                segments: self.segments.take_written(),
            };
            if flush_tx.send(applied).is_err() {
                error!("the flusher thread is gone; stopping the writer");
                break;
            }
        }
        // Whoever is still waiting is told; later appends fail on the closed channel.
        let reason = self
            .progress
            .failure()
            .unwrap_or_else(|| "stopped".to_owned());
        while let Ok(job) = rx.try_recv() {
            if let Job::Append(_, reply) = job {
                let _ = reply.send(Err(StoreError::Failed(reason.clone())));
            }
        }
        debug!("store writer stopped");
    }

    /// Drops the oldest quarantine records while the quarantine holds more than its cap, and
    /// counts them (`Mqdropped`). Best effort: a record left by a failed removal goes later.
    fn cap_quarantine(&mut self) {
        let mut dropped = 0u64;
        let mut book = self.quarantine.lock().unwrap_or_else(|e| e.into_inner());
        while book.bytes > self.quarantine_max && book.records.len() > 1 {
            let Some((id, bytes)) = book.records.pop_front() else {
                break;
            };
            if let Err(err) = self.events.remove(&codec::quarantine_key(id)[..]) {
                warn!(error = %err, "dropping an old quarantine record");
                book.records.push_front((id, bytes));
                break;
            }
            book.bytes -= bytes;
            dropped += 1;
        }
        drop(book);
        if dropped > 0 {
            let total = self
                .events
                .get(codec::QUARANTINE_DROPPED_KEY)
                .ok()
                .flatten()
                .and_then(|v| crate::keys::read_u64(&v))
                .unwrap_or(0)
                + dropped;
            let _ = self
                .events
                .insert(codec::QUARANTINE_DROPPED_KEY, &total.to_be_bytes()[..]);
            warn!(
                dropped,
                total,
                "the quarantine is full ([store] quarantine_max_mb): its oldest records were dropped"
            );
        }
    }

    /// Writes a group's keys in order; the flusher writes its commit record.
    ///
    /// Plain inserts, not a sled batch: the first `apply_batch` in a process switches every
    /// later sled operation, in every database, to a global read-write lock, which the indexer
    /// would then hold against this thread. Atomicity comes from the commit record instead:
    /// sled recovers a prefix of its writes, and `Store::open` discards whatever follows the
    /// last commit record, so a group is either all there after a crash or not at all.
    fn write_group(&mut self, writes: &[(Vec<u8>, Vec<u8>)]) -> Result<(), StoreError> {
        // A group that fails once its blocks are placed (a full disk, a sled error).
        gancho_core::fail_point!(
            "log.group.write",
            StoreError::Engine("fail point log.group.write".to_owned())
        );
        for (key, value) in writes {
            self.events.insert(&key[..], &value[..])?;
        }
        Ok(())
    }

    /// Removes what a failed group may have written (its commit record is the flusher's, and
    /// never written for it).
    fn undo_group(&self, writes: &[(Vec<u8>, Vec<u8>)]) -> Result<(), StoreError> {
        for (key, _) in writes {
            self.events.remove(&key[..])?;
        }
        Ok(())
    }

    /// Adds the seqs the group left without an event to the pruned set, and publishes it (none
    /// of them is durable yet, so no reader asks for them). The set is written with the group's
    /// keys, before its commit record: a crash that loses the group may keep the set, and the
    /// next open drops from it the seqs past the log's end.
    fn record_gaps(&self, gaps: &[(u64, u64)]) -> Result<(), StoreError> {
        if gaps.is_empty() {
            return Ok(());
        }
        let _adding = self.index.lock_purged();
        let purged = std::sync::Arc::new(self.index.purged().with_ranges(gaps));
        self.events
            .insert(super::prune::PURGED_KEY, &purged.encode()[..])?;
        self.index.set_purged(purged);
        Ok(())
    }

    /// Puts back the pruned set as published, after a group that failed before publishing its
    /// own.
    fn unrecord_gaps(&self, gaps: &[(u64, u64)]) -> Result<(), StoreError> {
        if gaps.is_empty() {
            return Ok(());
        }
        let _adding = self.index.lock_purged();
        let purged = self.index.purged();
        self.events
            .insert(super::prune::PURGED_KEY, &purged.encode()[..])?;
        Ok(())
    }

    /// Adds one submission to the group. Nothing is added unless the whole submission is.
    /// Events given with their seqs ([`Appender::append_at`]) take them; the seqs they leave
    /// without an event go to `gaps`, as ranges.
    fn stage(
        &mut self,
        submission: Prepared,
        records: &mut Vec<(u64, Vec<u8>)>,
        writes: &mut Vec<(Vec<u8>, Vec<u8>)>,
        gaps: &mut Vec<(u64, u64)>,
    ) -> Result<AppendReport, StoreError> {
        let mut report = AppendReport::default();
        let mut new_records = Vec::with_capacity(submission.events.len());
        let mut new_ids: Vec<(u128, u64)> = Vec::new();
        let mut new_gaps = Vec::new();
        let mut seq = self.next_seq;
        for event in submission.events {
            if let Some(at) = event.at {
                if at < seq {
                    self.check_skipped(at, &event)?;
                    report.skipped.push(at);
                    continue;
                }
                if at > seq {
                    new_gaps.push((seq, at - 1));
                }
                seq = at;
            }
            if let Some(existing) = self.seen(&event, &new_ids)? {
                report.duplicates.push(existing);
                if event.at.is_some() {
                    new_gaps.push((seq, seq));
                    seq += 1;
                }
                continue;
            }
            new_records.push((seq, event.record));
            new_ids.push((event.dedup_hash, seq));
            report.stored.push(seq);
            seq += 1;
        }
        let mut qid = self.next_qid;
        let mut quarantined = Vec::with_capacity(1);
        if !submission.quarantined.is_empty() {
            // One record for the request's invalid items, under one id.
            quarantined.push((
                codec::quarantine_key(qid),
                codec::encode_quarantine_record(&submission.quarantined)?,
            ));
            report.quarantined = vec![qid; submission.quarantined.len()];
            qid += 1;
        }
        // Nothing can fail from here on: commit the submission to the group.
        records.extend(new_records);
        gaps.extend(new_gaps);
        for (key, value) in quarantined {
            writes.push((key.to_vec(), value));
        }
        for (key, seq) in new_ids {
            self.pending.push(seq, key);
        }
        self.next_seq = seq;
        self.next_qid = qid;
        Ok(report)
    }

    /// A seq given again that the log has reached must hold the same event, or none (a seq
    /// left empty, or pruned since): anything else is a caller placing two events at one seq,
    /// which would silently drop one.
    fn check_skipped(&self, at: u64, event: &PreparedEvent) -> Result<(), StoreError> {
        if self.pending.get(event.dedup_hash) == Some(at) || self.index.purged().contains(at) {
            return Ok(());
        }
        let mut other = false;
        self.log.for_each_record(at, at, |seq, record| {
            let view = codec::view_record(seq, record)?;
            other = dedup_key(view.source, view.id) != event.dedup_key;
            Ok(())
        })?;
        match other {
            true => Err(StoreError::OutOfOrder(format!(
                "seq {at} holds another event than the one given for it"
            ))),
            false => Ok(()),
        }
    }

    /// The seq of the event already stored (or staged) under this dedup key, if any.
    fn seen(
        &self,
        event: &PreparedEvent,
        staged: &[(u128, u64)],
    ) -> Result<Option<u64>, StoreError> {
        if let Some((_, seq)) = staged.iter().find(|(k, _)| *k == event.dedup_hash) {
            return Ok(Some(*seq));
        }
        if let Some(seq) = self.pending.get(event.dedup_hash) {
            return Ok(Some(seq));
        }
        for seq in self.backlog.candidates(event.dedup_hash) {
            if self.stored_under(seq, &event.dedup_key)? {
                return Ok(Some(seq));
            }
        }
        match self.index.get(&event.dedup_key) {
            Ok(found) => Ok(found.and_then(|v| read_u64(&v))),
            Err(err @ StoreError::Corrupt { .. }) => {
                // Dedup cannot be exact any more: stop, and the restart rebuilds the indexes
                // (`Index::get` marked them).
                self.progress
                    .fail(&format!("the dedup index is damaged: {err}"));
                Err(err)
            }
            Err(err) => Err(err),
        }
    }
}

/// Cuts the group's records (events with their seqs, in order) into blocks, and places each
/// (in sled, or appended to a segment with a pointer in sled). A block holds consecutive seqs:
/// up to [`FILL_AT_MOST`] seqs without an event between two records take empty records, more
/// start a new block.
fn add_blocks(
    writes: &mut Vec<(Vec<u8>, Vec<u8>)>,
    records: Vec<(u64, Vec<u8>)>,
    segments: &mut SegmentWriter,
) -> Result<(), StoreError> {
    let mut block: Vec<Vec<u8>> = Vec::new();
    let mut first = 0;
    let mut bytes = 0;
    let mut place = |block: &mut Vec<Vec<u8>>, first: u64| -> Result<(), StoreError> {
        if !block.is_empty() {
            let value = segments.place(first, codec::encode_block(block))?;
            writes.push((codec::log_key(first).to_vec(), value));
            block.clear();
        }
        Ok(())
    };
    for (seq, record) in records {
        let next = first + block.len() as u64;
        if !block.is_empty() && seq - next > FILL_AT_MOST {
            place(&mut block, first)?;
            bytes = 0;
        }
        if block.is_empty() {
            first = seq;
        }
        block.resize(
            block.len() + (seq - first - block.len() as u64) as usize,
            Vec::new(),
        );
        bytes += record.len();
        block.push(record);
        if bytes >= BLOCK_TARGET_BYTES {
            place(&mut block, first)?;
            bytes = 0;
        }
    }
    place(&mut block, first)
}
