//! The indexer: follows the durable log and writes the dedup index and the query indexes.
//!
//! Indexing is taken off the acknowledgement path so that a burst is acknowledged as fast as the
//! log takes it and indexed right after. The indexes are sorted runs (see `index/mod.rs`): each batch
//! of events becomes a memory run that readers see at once, and a checkpoint writes the memory
//! runs out as one disk run in a sled database of the indexes' own (so these writes neither
//! lengthen the log's group-commit flushes nor take sled's locks from the log's writer). When it
//! has caught up, the indexer merges runs of one size tier.
//!
//! Two watermarks: the in-memory one moves after each batch (the writer then drops those ids from
//! its `pending` map, since the dedup index holds them); the persisted one moves at each
//! checkpoint, with the disk run, and a restart resumes from it. Readers merge the unindexed tail
//! of the log into their answers, so they are never stale.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::{debug, error};

use super::memory::Batch;
use super::policy::Pacing;
use super::writer::IndexWriter;
use crate::error::StoreError;
use crate::keys::{BY_KEY, BY_TYPE, DEDUP, push_time_seq, write_key};
use crate::log::codec::{self, RecordView};
use crate::log::segments::Log;
use crate::progress::Progress;

/// Entries merged between two batches: a slice takes some tens of milliseconds.
const MERGE_SLICE: usize = 100_000;
/// After a failed merge, the next one waits this long.
const MERGE_BACKOFF: Duration = Duration::from_secs(10);
/// After a failed checkpoint, the next one waits this long.
const CHECKPOINT_BACKOFF: Duration = Duration::from_secs(5);

pub(crate) struct Indexer {
    /// The log tree, read.
    pub(crate) log: Log,
    pub(crate) index: IndexWriter,
    pub(crate) progress: Arc<Progress>,
    pub(crate) pacing: Pacing,
}

impl Indexer {
    pub(crate) fn run(mut self) {
        let pacing = self.pacing;
        let mut idle_priority = set_priority(true);
        // Leaving SCHED_IDLE needs RLIMIT_NICE room an unprivileged service may lack: if that
        // is refused once, it is not tried again.
        let mut can_boost = true;
        let progress = Arc::clone(&self.progress);
        let mut indexed = progress.indexed.load(Ordering::Acquire);
        let mut checkpointed = indexed;
        let mut last_checkpoint = Instant::now();
        let mut merge_after = Instant::now();
        let mut checkpoint_after = Instant::now();
        // When the oldest event not indexed yet was first seen.
        let mut waiting_since: Option<Instant> = None;
        // Since when the indexer has been behind the log (not caught up once): how long the
        // oldest unindexed event has waited, at most.
        let mut behind_since: Option<Instant> = None;
        // The incoming rate: events indexed since `rate_since`, and the rate of the last second.
        let (mut rate_since, mut rate_events, mut busy) = (Instant::now(), 0u64, false);
        // Whether gancho itself is taking events in fast (the log's durable seq over the last
        // second): then the indexer waiting is the point of its idle priority.
        let (mut durable_at, mut ingesting) = (progress.durable.load(Ordering::Acquire), false);
        let heartbeat = gancho_core::heartbeat::Heartbeat::register("indexer");
        loop {
            let merging = self.index.merge_pending() && Instant::now() >= merge_after;
            progress.wait_until(
                || {
                    progress.stopping.load(Ordering::Acquire)
                        || progress.durable.load(Ordering::Acquire) > indexed
                },
                if merging {
                    Duration::ZERO
                } else {
                    pacing.checkpoint_every
                },
            );
            // At idle priority a busy host may starve the indexer for long: that is the point
            // of the priority, not a stuck thread (readiness watches its lag instead).
            let _working = (!idle_priority).then(|| heartbeat.working());
            let stopping = progress.stopping.load(Ordering::Acquire);
            let durable = progress.durable.load(Ordering::Acquire);
            // At idle priority the indexer yields to every busy process on the host, not only to
            // gancho's ingest; past a large lag, or once events have waited a few seconds, it
            // competes normally until it has caught up.
            let lag = durable.saturating_sub(indexed);
            if lag == 0 {
                behind_since = None;
            } else if behind_since.is_none() {
                behind_since = Some(Instant::now());
            }
            let waited = behind_since.map_or(Duration::ZERO, |since| since.elapsed());
            match pacing.priority(idle_priority, can_boost, lag, waited, ingesting) {
                Some(false) => {
                    idle_priority = !set_priority(false);
                    can_boost = !idle_priority;
                }
                Some(true) => idle_priority = set_priority(true),
                None => {}
            }
            if rate_since.elapsed() >= Duration::from_secs(1) {
                busy = pacing.busy(rate_events, rate_since.elapsed());
                ingesting = pacing.busy(durable.saturating_sub(durable_at), rate_since.elapsed());
                (rate_since, rate_events, durable_at) = (Instant::now(), 0, durable);
            }
            if pacing.gather(busy, lag, stopping) {
                let since = *waiting_since.get_or_insert_with(Instant::now);
                let left = pacing.batch_wait.saturating_sub(since.elapsed());
                if !left.is_zero() {
                    progress.wait_until(
                        || {
                            progress.stopping.load(Ordering::Acquire)
                                || progress.durable.load(Ordering::Acquire)
                                    >= indexed + pacing.batch_events
                        },
                        left,
                    );
                }
            }
            let durable = progress.durable.load(Ordering::Acquire);
            let full = pacing.memory_full(self.index.memory_bytes());
            if !stopping && durable > indexed && !full {
                waiting_since = None;
                // A run of seqs without an event (where `Appender::append_at` jumped) is passed
                // over in one step, however long.
                let to = match self.index.purged().last_of(indexed + 1) {
                    Some(last) => durable.min(last.max(indexed + pacing.batch_events)),
                    None => durable.min(indexed + pacing.batch_events),
                };
                match self.index_range(indexed + 1, to) {
                    Ok(()) => {
                        rate_events += to - indexed;
                        indexed = to;
                        progress.indexed.store(to, Ordering::Release);
                        progress.notify();
                    }
                    Err(err) => {
                        error!(error = %err, from = indexed + 1, to, "indexing failed; retrying in 1 s");
                        std::thread::sleep(Duration::from_secs(1));
                        continue;
                    }
                }
            }
            let due = pacing.checkpoint_due(
                last_checkpoint.elapsed(),
                self.index.memory_bytes(),
                stopping,
            );
            if indexed > checkpointed && due && (Instant::now() >= checkpoint_after || stopping) {
                match self.index.checkpoint(indexed) {
                    Ok(()) => {
                        checkpointed = indexed;
                        debug!(indexed, runs = self.index.disk_runs(), "index checkpoint");
                    }
                    Err(err) => {
                        error!(error = %err, "index checkpoint failed; retrying in 5 s");
                        checkpoint_after = Instant::now() + CHECKPOINT_BACKOFF;
                    }
                }
                last_checkpoint = Instant::now();
            } else if full {
                // Waiting for the next try of a failed checkpoint: nothing else to do.
                progress.wait_until(
                    || progress.stopping.load(Ordering::Acquire),
                    checkpoint_after.saturating_duration_since(Instant::now()),
                );
            }
            if stopping {
                self.index.abandon_merge();
                break;
            }
            let lag = progress
                .durable
                .load(Ordering::Acquire)
                .saturating_sub(indexed);
            if merging && pacing.may_merge(lag, self.index.disk_runs()) {
                match self.index.merge_step(MERGE_SLICE) {
                    Ok(true) => debug!(runs = self.index.disk_runs(), "index runs merged"),
                    Ok(false) => {}
                    Err(err @ StoreError::Corrupt { .. }) => {
                        // Marked for a rebuild (see `index/mod.rs`): stop, the restart rebuilds.
                        progress.fail(&format!("the indexes are damaged: {err}"));
                        merge_after = Instant::now() + MERGE_BACKOFF;
                    }
                    Err(err) => {
                        error!(error = %err, "merging index runs failed; retrying in 10 s");
                        merge_after = Instant::now() + MERGE_BACKOFF;
                    }
                }
            }
            if let Err(err) = self.index.collect_garbage() {
                error!(error = %err, "deleting merged index runs failed");
            }
        }
        debug!(indexed, checkpointed, "indexer stopped");
    }

    /// Adds the entries of the events `from..=to` to the indexes, as one memory run.
    fn index_range(&mut self, from: u64, to: u64) -> Result<(), StoreError> {
        let mut batch = Batch::default();
        let mut scratch = Vec::with_capacity(256);
        let mut n = 0u64;
        let purged = self.index.purged();
        self.log.for_each_record(from, to, |seq, record| {
            if purged.contains(seq) {
                return Ok(());
            }
            let view = codec::view_record(seq, record)?;
            index_entries(&view, &mut scratch, |key, value| batch.push(key, value));
            n += 1;
            Ok(())
        })?;
        // Pruned events have no record any more (a rebuild, or a restart that indexes again
        // what a prune reached after the last checkpoint).
        let expected = (to - from + 1) - purged.count_in(from, to);
        if n != expected {
            return Err(StoreError::Corrupt {
                key: format!("L{from}..L{to}"),
                reason: format!("{expected} events expected, {n} found"),
            });
        }
        // Tests hold a batch here (`pause`): read from the log, not yet seen by readers.
        gancho_core::fail_point!("index.batch.before_publish");
        self.index.add(batch);
        Ok(())
    }
}

/// The index entries of one event, each built in `scratch` and handed to `push` as (key,
/// value): its dedup entry (value: its seq), its by-type entry and one by-key entry per key.
pub(crate) fn index_entries(
    view: &RecordView<'_>,
    scratch: &mut Vec<u8>,
    mut push: impl FnMut(&[u8], &[u8]),
) {
    write_key(scratch, DEDUP, &[view.source, view.id]);
    push(scratch, &view.seq.to_be_bytes());
    write_key(scratch, BY_TYPE, &[view.source, view.kind]);
    push_time_seq(scratch, view.time_ms, view.seq);
    push(scratch, &[]);
    for (name, value) in &view.keys {
        write_key(scratch, BY_KEY, &[view.source, view.kind, name, value]);
        push_time_seq(scratch, view.time_ms, view.seq);
        push(scratch, &[]);
    }
}

/// With `idle`, runs this thread only when a core would otherwise be idle (Linux `SCHED_IDLE`):
/// under a burst, acknowledging webhooks comes first, and indexing catches up as soon as the
/// burst ends (a provider that waits too long for its 200 retries, which only adds load).
/// Without, back to the normal policy. Returns whether the policy was set.
fn set_priority(idle: bool) -> bool {
    use thread_priority::unix::{
        NormalThreadSchedulePolicy, ThreadSchedulePolicy, set_thread_priority_and_policy,
        thread_native_id,
    };
    let (policy, priority) = if idle {
        (
            NormalThreadSchedulePolicy::Idle,
            thread_priority::ThreadPriority::Min,
        )
    } else {
        // Nice 0, like the other threads. `Min` would be nice 19 under SCHED_OTHER, which busy
        // processes starve almost as much as SCHED_IDLE. The crate maps 0..=99 onto nice 19..-20:
        // 46 to 48 are nice 0 (a test below reads it back).
        let nice_0 = thread_priority::ThreadPriorityValue::try_from(47u8)
            .map(thread_priority::ThreadPriority::Crossplatform)
            .unwrap_or(thread_priority::ThreadPriority::Min);
        (NormalThreadSchedulePolicy::Other, nice_0)
    };
    match set_thread_priority_and_policy(
        thread_native_id(),
        priority,
        ThreadSchedulePolicy::Normal(policy),
    ) {
        Ok(()) => {
            debug!(idle, "indexer priority set");
            true
        }
        Err(err) => {
            tracing::warn!(error = ?err, idle, "could not change the indexer's priority");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::keys::{dedup_key, key_prefix, type_prefix};
    use crate::log::codec::tests::withdrawal;
    use crate::log::codec::{encode_event, view_record};

    #[test]
    fn index_entries_have_the_prefixes_queries_scan() {
        let bytes = encode_event(&withdrawal()).unwrap();
        let view = view_record(7, &bytes).unwrap();
        let mut got = Vec::new();
        index_entries(&view, &mut Vec::new(), |k, v| {
            got.push((k.to_vec(), v.to_vec()))
        });
        let mut by_type = type_prefix(view.source, view.kind);
        push_time_seq(&mut by_type, view.time_ms, 7);
        let mut want = vec![
            (dedup_key(view.source, view.id), 7u64.to_be_bytes().to_vec()),
            (by_type, vec![]),
        ];
        for (name, value) in &view.keys {
            let mut key = key_prefix(view.source, view.kind, name, value);
            push_time_seq(&mut key, view.time_ms, 7);
            want.push((key, vec![]));
        }
        assert_eq!(view.keys.len(), 2);
        assert_eq!(got, want);
    }

    /// This thread's scheduling policy and nice value, as the kernel sees them.
    fn policy_and_nice() -> (u64, i64) {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        // Fields after the command (which may hold spaces) start after its closing ')'.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        // Field 19 (nice) and 41 (policy) of proc(5), counted from 3 here.
        (fields[38].parse().unwrap(), fields[16].parse().unwrap())
    }

    #[test]
    fn the_indexer_leaves_idle_priority_for_nice_0_not_19() {
        std::thread::spawn(|| {
            assert!(super::set_priority(true));
            assert_eq!(policy_and_nice().0, 5, "SCHED_IDLE");
            if super::set_priority(false) {
                assert_eq!(policy_and_nice(), (0, 0), "SCHED_OTHER at nice 0");
            } else {
                assert!(
                    std::env::var("GANCHO_REQUIRE_NICE").as_deref() != Ok("1"),
                    "this process may not leave SCHED_IDLE and GANCHO_REQUIRE_NICE=1"
                );
                eprintln!("skipped: this process may not leave SCHED_IDLE (RLIMIT_NICE too low)");
            }
        })
        .join()
        .unwrap();
    }
}
