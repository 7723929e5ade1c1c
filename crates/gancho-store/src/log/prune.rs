//! Retention: deleting events older than the retention once the engine is done with them, and
//! quarantine records older than theirs.
//!
//! An event's seq never changes, and a block's key is the seq of its first event, so a pruned
//! event leaves an empty record in its block: the block is written again without its bytes,
//! and deleted once every event in it is gone. Before any block changes, the pruned seqs join
//! the [`Purged`] set (`Mpurged`) and it is made durable; readers pass over them from then on.
//! A crash after that point leaves records that the next prune removes (their seqs are in the
//! set already); a crash before it changes nothing.
//!
//! Finding what to prune must not read the whole log every hour: a *summary* (`S` + the seq of
//! its first block) records, for a stretch of blocks that a prune has walked, the earliest event
//! time left in it. A prune walks again only the stretches whose earliest time is older than
//! the cutoff (almost always the oldest ones, which it then empties), and the log's new part.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use super::cache::BlockCache;
use super::codec::{self, Block};
use super::segments::Log;
use super::writer::QuarantineBook;
use crate::error::StoreError;
use crate::index::Index;
use crate::keys::read_u64;
use crate::kv::{Db, FileSync, Tree};
use crate::purged::Purged;

/// The set of pruned seqs.
pub(crate) const PURGED_KEY: &[u8] = b"Mpurged";
const SUMMARY: u8 = b'S';
/// Blocks per summary: some 2 MB of compressed events, walked in one step.
const SUMMARY_BLOCKS: usize = 64;

/// What to prune.
#[derive(Debug, Clone, Default)]
pub struct PruneRequest {
    /// Events whose event time (ms) is before this go; `None` keeps every event.
    pub events_before_ms: Option<i64>,
    /// ... only those at or below this seq (the engine's durable cursor: processed events) ...
    pub processed: u64,
    /// ... and none of these (events a pending timer or expectation refers to).
    pub keep: HashSet<u64>,
    /// Quarantine records received (ms) before this go; `None` keeps them.
    pub quarantine_before_ms: Option<i64>,
}

/// What a prune removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PruneReport {
    /// Events deleted from the log (and so from the indexes).
    pub events: u64,
    /// Events past their time kept because a pending timer refers to them.
    pub kept: u64,
    /// Log blocks deleted whole, and written again without some of their events.
    pub blocks_deleted: u64,
    pub blocks_rewritten: u64,
    /// Log segment files deleted because no block is in them any more.
    pub segments_deleted: u64,
    /// Quarantine records deleted.
    pub quarantine_records: u64,
}

/// What pruning needs of the store.
#[derive(Debug)]
pub(crate) struct Pruner {
    pub(crate) db: Db,
    pub(crate) log: Log,
    pub(crate) index: Arc<Index>,
    pub(crate) blocks: Arc<BlockCache>,
    pub(crate) quarantine: Arc<Mutex<QuarantineBook>>,
    /// Its own handle on the log file, to make the pruned set durable.
    pub(crate) sync: Mutex<Option<FileSync>>,
    /// One prune at a time.
    pub(crate) running: Mutex<()>,
}

/// The pruned set the log database holds.
pub(crate) fn read_purged(tree: &Tree) -> Result<Purged, StoreError> {
    match tree.get(PURGED_KEY)? {
        None => Ok(Purged::default()),
        Some(bytes) => Purged::decode(&bytes).ok_or_else(|| StoreError::Corrupt {
            key: "Mpurged".to_owned(),
            reason: "not a set of seq ranges".to_owned(),
        }),
    }
}

fn summary_key(first: u64) -> [u8; 9] {
    let mut key = [SUMMARY; 9];
    key[1..].copy_from_slice(&first.to_be_bytes());
    key
}

/// A summary's value: the last seq of its stretch, and the earliest event time left in it
/// (`i64::MAX` for none).
fn summary_value(last: u64, earliest_ms: i64) -> [u8; 16] {
    let mut value = [0u8; 16];
    value[..8].copy_from_slice(&last.to_be_bytes());
    value[8..].copy_from_slice(&earliest_ms.to_be_bytes());
    value
}

impl Pruner {
    pub(crate) fn prune(&self, request: &PruneRequest) -> Result<PruneReport, StoreError> {
        let _one = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let mut report = PruneReport::default();
        if let Some(before) = request.events_before_ms {
            self.prune_events(request, before, &mut report)?;
            if report.blocks_deleted + report.blocks_rewritten > 0 {
                // Segments no block points into any more go, once that is durable.
                {
                    let mut sync = self.sync.lock().unwrap_or_else(|e| e.into_inner());
                    self.db.make_durable(sync.as_mut())?;
                }
                report.segments_deleted = self
                    .log
                    .segments
                    .collect_garbage(&self.log.tree, Some(request.processed.saturating_add(1)))?
                    as u64;
            }
        }
        if let Some(before) = request.quarantine_before_ms {
            report.quarantine_records = self.prune_quarantine(before)?;
        }
        Ok(report)
    }

    fn prune_events(
        &self,
        request: &PruneRequest,
        before: i64,
        report: &mut PruneReport,
    ) -> Result<(), StoreError> {
        // The stretches walked before whose earliest event is past the cutoff.
        let mut walked_to = 0u64;
        let mut again = Vec::new();
        for entry in self.log.tree.scan_prefix([SUMMARY]) {
            let (key, value) = entry?;
            let first = key.get(1..).and_then(read_u64);
            let last = value.get(..8).and_then(read_u64);
            let earliest = value.get(8..16).and_then(read_u64).map(|raw| raw as i64);
            let (Some(first), Some(last), Some(earliest)) = (first, last, earliest) else {
                return Err(StoreError::Corrupt {
                    key: format!("{key:?}"),
                    reason: "not a log summary".to_owned(),
                });
            };
            walked_to = walked_to.max(last);
            if earliest < before {
                again.push((first, last));
            }
        }
        for (first, last) in again {
            self.prune_stretch(first, last, request, before, report)?;
        }
        // The part of the log no prune has walked: whole blocks of processed events.
        loop {
            let mut blocks = Vec::new();
            for entry in self
                .log
                .tree
                .range(codec::log_key(walked_to + 1)..=codec::log_key(request.processed))
            {
                let (key, value) = entry?;
                let first = key.get(1..).and_then(read_u64).unwrap_or(u64::MAX);
                let n = codec::block_len(&value).unwrap_or(0);
                let last = first.saturating_add(n).saturating_sub(1);
                if n == 0 || last > request.processed {
                    break;
                }
                blocks.push((first, last));
                if blocks.len() == SUMMARY_BLOCKS {
                    break;
                }
            }
            let (Some(&(first, _)), Some(&(_, last))) = (blocks.first(), blocks.last()) else {
                return Ok(());
            };
            self.prune_stretch(first, last, request, before, report)?;
            walked_to = last;
        }
    }

    /// Prunes the blocks of `first..=last` and records their summary.
    fn prune_stretch(
        &self,
        first: u64,
        last: u64,
        request: &PruneRequest,
        before: i64,
        report: &mut PruneReport,
    ) -> Result<(), StoreError> {
        let purged = self.index.purged();
        let mut earliest = i64::MAX;
        let mut gone: Vec<u64> = Vec::new();
        // Blocks that change: (key, block, whether each place is left empty).
        let mut changed: Vec<(Vec<u8>, Block, Vec<bool>)> = Vec::new();
        for entry in self
            .log
            .tree
            .range(codec::log_key(first)..=codec::log_key(last))
        {
            let (key, value) = entry?;
            // A damaged block or record is kept (and said), never the end of retention.
            let block = match self.log.block(&key, &value) {
                Ok(block) => block,
                Err(err) => {
                    tracing::warn!(error = %err, "pruning: a log block that cannot be read is kept");
                    earliest = i64::MIN;
                    continue;
                }
            };
            let mut empty = vec![false; block.len()];
            let mut changes = false;
            for (i, place) in empty.iter_mut().enumerate() {
                let seq = block.first_seq + i as u64;
                let Some(record) = block.record(seq) else {
                    *place = true;
                    continue;
                };
                let time = match codec::view_record(seq, record) {
                    Ok(view) => view.time_ms,
                    Err(err) => {
                        tracing::warn!(seq, error = %err, "pruning: an event that cannot be read is kept");
                        earliest = i64::MIN;
                        continue;
                    }
                };
                let old = time < before && seq <= request.processed;
                if purged.contains(seq) || (old && !request.keep.contains(&seq)) {
                    *place = true;
                    changes = true;
                    if !purged.contains(seq) {
                        gone.push(seq);
                    }
                } else {
                    if old {
                        report.kept += 1;
                    }
                    earliest = earliest.min(time);
                }
            }
            if changes {
                changed.push((key.to_vec(), block, empty));
            }
        }
        if !gone.is_empty() {
            // The set first, durable, and published: from here the events are gone for readers.
            // Added to the set as it is now: the log writer may have added seqs to it since
            // (those its group placed no event at, all after the log's durable end).
            let _adding = self.index.lock_purged();
            let purged = Arc::new(self.index.purged().with(&gone));
            gancho_core::fail_point!("prune.before_set");
            self.log.tree.insert(PURGED_KEY, purged.encode())?;
            {
                let mut sync = self.sync.lock().unwrap_or_else(|e| e.into_inner());
                self.db.make_durable(sync.as_mut())?;
            }
            self.index.set_purged(purged);
            report.events += gone.len() as u64;
        }
        gancho_core::fail_point!("prune.before_blocks");
        for (key, block, empty) in changed {
            if empty.iter().all(|&e| e) {
                self.log.tree.remove(key)?;
                report.blocks_deleted += 1;
            } else {
                let records: Vec<Vec<u8>> = empty
                    .iter()
                    .enumerate()
                    .map(|(i, &e)| match e {
                        true => Vec::new(),
                        false => block
                            .record(block.first_seq + i as u64)
                            .map(<[u8]>::to_vec)
                            .unwrap_or_default(),
                    })
                    .collect();
                self.log.tree.insert(key, codec::encode_block(&records))?;
                report.blocks_rewritten += 1;
            }
            self.blocks.forget(block.first_seq);
        }
        match earliest {
            // Nothing left: the stretch needs no summary (a later one says how far prunes got).
            i64::MAX => drop(self.log.tree.remove(&summary_key(first)[..])?),
            _ => drop(
                self.log
                    .tree
                    .insert(summary_key(first), &summary_value(last, earliest)[..])?,
            ),
        }
        Ok(())
    }

    /// Deletes the quarantine records received before `before` (ms), oldest first.
    fn prune_quarantine(&self, before: i64) -> Result<u64, StoreError> {
        let mut removed = 0;
        loop {
            let mut book = self.quarantine.lock().unwrap_or_else(|e| e.into_inner());
            let Some(&(id, bytes)) = book.records.front() else {
                return Ok(removed);
            };
            let key = codec::quarantine_key(id);
            if let Some(value) = self.log.tree.get(&key[..])? {
                // A record that cannot be read serves no one: it goes when pruning reaches it.
                let received = match codec::decode_quarantine(id, &value) {
                    Ok(items) => items
                        .first()
                        .map_or(i64::MIN, |item| item.received.timestamp_millis()),
                    Err(err) => {
                        tracing::warn!(id, error = %err, "pruning an unreadable quarantine record");
                        i64::MIN
                    }
                };
                if received >= before {
                    return Ok(removed);
                }
                self.log.tree.remove(&key[..])?;
                removed += 1;
            }
            book.records.pop_front();
            book.bytes = book.bytes.saturating_sub(bytes);
        }
    }
}
