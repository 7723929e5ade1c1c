//! The indexer: follows the durable log and writes the dedup index and the query indexes.
//!
//! Indexing is taken off the acknowledgement path because sled costs about 10 µs per insert and
//! a Mailjet event needs six index entries (its id, its type, four keys): done before the 200, it
//! would cap ingest near 10k events/s. Done here, a burst is acknowledged as fast as the log
//! takes it and indexed right after. Each batch of index entries commits atomically with the
//! `indexed` watermark, so after a crash the indexer resumes exactly where its last batch ended;
//! readers merge the unindexed tail of the log into their answers, so they are never stale.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::{debug, error};

use crate::StoreError;
use crate::codec;
use crate::progress::Progress;

/// Events indexed per sled batch.
const BATCH_EVENTS: u64 = 2048;

pub(crate) fn run(events: sled::Tree, progress: Arc<Progress>) {
    lower_priority();
    let mut indexed = progress.indexed.load(Ordering::Acquire);
    loop {
        progress.wait_until(
            || {
                progress.stopping.load(Ordering::Acquire)
                    || progress.durable.load(Ordering::Acquire) > indexed
            },
            Duration::from_secs(1),
        );
        if progress.stopping.load(Ordering::Acquire) {
            break;
        }
        let durable = progress.durable.load(Ordering::Acquire);
        if durable <= indexed {
            continue;
        }
        let to = durable.min(indexed + BATCH_EVENTS);
        match index_range(&events, indexed + 1, to) {
            Ok(()) => {
                indexed = to;
                progress.indexed.store(to, Ordering::Release);
                progress.notify();
            }
            Err(err) => {
                error!(error = %err, from = indexed + 1, to, "indexing failed; retrying in 1 s");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
    debug!(indexed, "indexer stopped");
}

/// Runs this thread only when a core would otherwise be idle (Linux `SCHED_IDLE`): under a
/// burst, acknowledging webhooks comes first, and indexing catches up as soon as the burst
/// ends. A provider that waits too long for its 200 retries, which only adds load.
fn lower_priority() {
    use thread_priority::unix::{
        NormalThreadSchedulePolicy, ThreadSchedulePolicy, set_thread_priority_and_policy,
        thread_native_id,
    };
    let policy = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
    if let Err(err) = set_thread_priority_and_policy(
        thread_native_id(),
        thread_priority::ThreadPriority::Min,
        policy,
    ) {
        tracing::warn!(error = ?err, "could not lower the indexer's priority; it competes with ingest");
    }
}

/// Indexes the events `from..=to`, then moves the watermark to `to`.
///
/// The entries are plain inserts, not one sled batch: a batch takes sled's global write lock
/// for as long as it applies (about 100 ms for 2048 events), which would stall the writer's
/// group commits behind it. Entries are idempotent, and the watermark is written after them
/// (sled recovers a prefix of its log), so a crash in between only means re-indexing.
fn index_range(events: &sled::Tree, from: u64, to: u64) -> Result<(), StoreError> {
    let mut n = 0u64;
    let mut failed = None;
    codec::for_each_record(events, from, to, |seq, record| {
        let view = codec::view_record(seq, record)?;
        events
            .insert(
                codec::dedup_key(view.source, view.id),
                &seq.to_be_bytes()[..],
            )
            .map_err(StoreError::sled)?;
        codec::index_keys(&view, |key| {
            if let Err(err) = events.insert(key, &[][..]) {
                failed.get_or_insert(err);
            }
        });
        if let Some(err) = failed.take() {
            return Err(StoreError::sled(err));
        }
        n += 1;
        Ok(())
    })?;
    if n != to - from + 1 {
        return Err(StoreError::Corrupt {
            key: format!("L{from}..L{to}"),
            reason: format!("{} events expected, {n} found", to - from + 1),
        });
    }
    events
        .insert(codec::INDEXED_KEY, &to.to_be_bytes()[..])
        .map_err(StoreError::sled)?;
    Ok(())
}
