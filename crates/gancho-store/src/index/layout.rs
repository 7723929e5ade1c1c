//! The index database's layout: one tree, `index`, keyed by first byte:
//!
//! | key                                  | value                                          |
//! |--------------------------------------|------------------------------------------------|
//! | `Mformat`                            | u32 BE: the format version (`migrate.rs`)        |
//! | `Mindexed`                           | u64 BE: the runs hold every event up to it     |
//! | `Mrebuild`                           | why the indexes are to be rebuilt at next open |
//! | `R`, run id u64 BE                   | the run's record: sizes, last seq, time span   |
//! | `F`, run id u64 BE, chunk u32 BE     | 64 KiB of the run's Bloom filter               |
//! | `B`, run id u64 BE, block's last key | a block of the run's entries                   |

use std::ops::Bound;

use crate::error::StoreError;
use crate::kv::Tree;

pub(super) const RUN: u8 = b'R';
pub(super) const BLOCK: u8 = b'B';
pub(super) const FILTER: u8 = b'F';

/// The watermark of the last checkpoint: the disk runs hold every event up to it.
pub(crate) const INDEXED_KEY: &[u8] = b"Mindexed";
/// The indexes were found damaged; the next open rebuilds them.
pub(crate) const REBUILD_KEY: &[u8] = b"Mrebuild";

/// Marks the indexes for a rebuild at the next open, when a read found them damaged (they are
/// derived from the log, so nothing is lost). Best effort: the error is reported anyway.
pub(super) fn condemn(tree: &Tree, err: &StoreError) {
    if !matches!(err, StoreError::Corrupt { .. }) {
        return;
    }
    tracing::error!(error = %err, "the indexes are damaged; they are rebuilt at the next start");
    let marked = tree
        .insert(REBUILD_KEY, err.to_string().as_bytes())
        .and_then(|()| tree.flush());
    if let Err(err) = marked {
        tracing::error!(error = %err, "could not mark the indexes for a rebuild");
    }
}

pub(super) fn corrupt(run: u64, reason: &str) -> StoreError {
    StoreError::Corrupt {
        key: format!("index run {run}"),
        reason: reason.to_owned(),
    }
}

pub(super) fn run_key(id: u64) -> [u8; 9] {
    let mut key = [RUN; 9];
    key[1..].copy_from_slice(&id.to_be_bytes());
    key
}

pub(super) fn filter_key(id: u64, chunk: u32) -> [u8; 13] {
    let mut key = [FILTER; 13];
    key[1..9].copy_from_slice(&id.to_be_bytes());
    key[9..].copy_from_slice(&chunk.to_be_bytes());
    key
}

pub(super) fn block_key(id: u64, last: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(9 + last.len());
    key.push(BLOCK);
    key.extend_from_slice(&id.to_be_bytes());
    key.extend_from_slice(last);
    key
}

/// The bounds of all of a run's keys under one prefix (`BLOCK` or `FILTER`).
pub(super) fn run_range(prefix: u8, id: u64) -> (Vec<u8>, Bound<Vec<u8>>) {
    let mut start = vec![prefix];
    start.extend_from_slice(&id.to_be_bytes());
    let end = match id.checked_add(1) {
        Some(next) => {
            let mut end = vec![prefix];
            end.extend_from_slice(&next.to_be_bytes());
            Bound::Excluded(end)
        }
        None => Bound::Excluded(vec![prefix + 1]),
    };
    (start, end)
}
