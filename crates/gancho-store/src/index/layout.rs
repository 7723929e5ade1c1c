//! The index database's layout: one tree, `index`, keyed by first byte, and a folder `runs/` of
//! run files (`file.rs`), one per run:
//!
//! | key                                  | value                                          |
//! |--------------------------------------|------------------------------------------------|
//! | `Mformat`                            | u32 BE: the format version (`migrate.rs`)      |
//! | `Mindexed`                           | u64 BE: the runs hold every event up to it     |
//! | `Mrebuild`                           | why the indexes are to be rebuilt at next open |
//! | `R`, run id u64 BE                   | the run's record: sizes, last seq, time span   |

use crate::error::StoreError;
use crate::kv::Tree;

pub(super) const RUN: u8 = b'R';

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

/// The run id of an `R` record's key.
pub(super) fn run_of_key(key: &[u8]) -> Result<u64, StoreError> {
    key.get(1..)
        .and_then(crate::keys::read_u64)
        .ok_or_else(|| corrupt(0, "run record with a bad key"))
}

pub(super) fn run_key(id: u64) -> [u8; 9] {
    let mut key = [RUN; 9];
    key[1..].copy_from_slice(&id.to_be_bytes());
    key
}
