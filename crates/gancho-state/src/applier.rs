//! The applier thread (`gancho-state`): encodes the commits the engine staged, appends them to
//! the journal file and syncs it, applies them to the tree, flushes and `fdatasync`s, empties
//! the journal, and publishes the durable cursor. A failed write or sync fails the state for good (the daemon exits and
//! the restart completes the commit from its journal).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, mpsc};
use std::thread::JoinHandle;

use gancho_store::StoreError;
use gancho_store::keys::read_u64;
use gancho_store::kv::{Db, FileSync, Tree};

use crate::fence::CommitFence;
use crate::journal::{Journal, apply, encode_records};
use crate::overlay::{Overlay, Slot, Staged, Writes, lock};
use crate::schema::CURSOR_KEY;

/// Commits queued for the applier, at most.
pub(crate) const APPLY_QUEUE: usize = 4;

/// What the engine thread and the applier thread share.
#[derive(Debug)]
pub(crate) struct Shared {
    /// `fdatasync` after each flush, when the store is configured so. The lock also keeps
    /// flushes from running concurrently.
    pub(crate) sync: Mutex<Option<FileSync>>,
    /// Writes committed (handed to the applier, which writes their journal, then applies
    /// them) but not yet applied to the tree, by key, with the number of the commit that made
    /// them. Reads look here first.
    pub(crate) overlay: Mutex<Overlay>,
    /// Why applying failed, if it did: commits are refused from then on.
    pub(crate) failure: Mutex<Option<String>>,
    /// The number and cursor of the last commit applied and durable.
    pub(crate) durable_commit: AtomicU64,
    pub(crate) durable_cursor: AtomicU64,
    /// Tells waiters (the actions executor) that the durable cursor moved.
    pub(crate) durable_tx: tokio::sync::watch::Sender<u64>,
    /// Cluster mode: the partition's shared journal, written before the local one.
    pub(crate) fence: Option<std::sync::Arc<dyn CommitFence>>,
}

#[derive(Debug)]
pub(crate) struct Applier {
    pub(crate) jobs: mpsc::SyncSender<(u64, Staged)>,
    pub(crate) thread: JoinHandle<()>,
}

/// Numbers `staged` with the next commit number and queues it for the applier, both under the
/// applier's lock: the engine's commits and, in cluster mode, the outbox's take their numbers
/// from one counter, and the applier must get them in order. `numbered` sees the number before
/// the commit is queued (the engine's commit goes into the overlay with it). Returns it.
pub(crate) fn queue(
    applier: &Mutex<Option<Applier>>,
    commits: &AtomicU64,
    staged: Staged,
    numbered: impl FnOnce(u64, &Staged),
) -> Result<u64, StoreError> {
    let applier = lock(applier);
    let commit = commits.fetch_add(1, Ordering::Relaxed);
    numbered(commit, &staged);
    match applier.as_ref().map(|a| a.jobs.send((commit, staged))) {
        Some(Ok(())) => Ok(commit),
        _ => Err(StoreError::Closed),
    }
}

/// Waits until commit `commit` is durable, or fails with why the state failed first.
pub(crate) fn wait_durable(shared: &Shared, commit: u64) -> Result<(), StoreError> {
    while shared.durable_commit.load(Ordering::Acquire) < commit {
        if let Some(reason) = lock(&shared.failure).clone() {
            return Err(StoreError::Failed(reason));
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    Ok(())
}

pub(crate) fn sync(db: &Db, shared: &Shared) -> Result<(), StoreError> {
    db.make_durable(lock(&shared.sync).as_mut())
}

/// The applier thread: journals each batch of commits, applies it to the tree in commit
/// order, takes it out of the overlay, and once it is durable empties the journal.
pub(crate) fn apply_loop(
    db: &Db,
    tree: &Tree,
    mut journal: Journal,
    shared: &Shared,
    jobs: &mpsc::Receiver<(u64, Staged)>,
) {
    loop {
        // Block for the next job, then take whatever else is queued: one sync for them all.
        let mut batch = match jobs.recv() {
            Ok(job) => vec![job],
            Err(_) => Vec::new(),
        };
        let closing = batch.is_empty();
        batch.extend(jobs.try_iter());
        if !batch.is_empty()
            && let Err(err) = apply_batch(db, tree, &mut journal, shared, &batch)
        {
            fail(shared, &err);
            return;
        }
        if closing {
            if let Err(err) = sync(db, shared) {
                fail(shared, &err.to_string());
            }
            return;
        }
    }
}

fn apply_batch(
    db: &Db,
    tree: &Tree,
    journal: &mut Journal,
    shared: &Shared,
    batch: &[(u64, Staged)],
) -> Result<(), String> {
    let encoded = batch
        .iter()
        .map(|(commit, staged)| encode_writes(staged).map(|writes| (*commit, writes)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("encoding engine state: {err}"))?;
    let records = encode_records(&encoded);
    if let Some(fence) = &shared.fence {
        // The cursor of the batch's last engine commit (the outbox's commits have none).
        let cursor = batch
            .iter()
            .rev()
            .find_map(|(_, staged)| cursor_of(staged))
            .unwrap_or_else(|| shared.durable_cursor.load(Ordering::Acquire));
        fence
            .commit(cursor, &records)
            .map_err(|err| format!("committing to the partition's journal: {err}"))?;
    }
    journal
        .append_encoded(&records)
        .map_err(|err| format!("journaling engine state: {err}"))?;
    // Held here (`pause`), a commit is provably in flight: journaled, not applied.
    gancho_core::fail_point!("state.apply.before_writes");
    let mut applied_cursor = None;
    for ((commit, staged), (_, writes)) in batch.iter().zip(&encoded) {
        let entries = writes.iter().map(|(k, v)| (*k, v.as_deref()));
        apply(tree, *commit, entries).map_err(|err| format!("applying engine state: {err}"))?;
        let mut overlay = lock(&shared.overlay);
        for (key, _) in staged {
            if overlay.get(key).is_some_and(|(c, _)| c == commit) {
                overlay.remove(key);
            }
        }
        drop(overlay);
        if let Some(cursor) = cursor_of(staged) {
            applied_cursor = Some(cursor);
        }
    }
    gancho_core::fail_point!("state.apply.before_sync");
    sync(db, shared).map_err(|err| err.to_string())?;
    // Durable: the journal's records are no longer needed (records that come back after a
    // crash are skipped by their commit number, so the executor, which acts on these commits
    // only once the cursor below is published, can never see a delivered item brought back).
    journal
        .applied()
        .map_err(|err| format!("emptying the engine journal: {err}"))?;
    if let Some((last, _)) = batch.last() {
        shared.durable_commit.store(*last, Ordering::Release);
    }
    if let Some(cursor) = applied_cursor {
        shared.durable_cursor.store(cursor, Ordering::Release);
        shared.durable_tx.send_replace(cursor);
    }
    Ok(())
}

/// The cursor an engine commit ends at: its last write. An outbox update (cluster mode) has
/// none.
fn cursor_of(staged: &Staged) -> Option<u64> {
    match staged.last() {
        Some((key, Slot::Bytes(cursor))) if key.as_slice() == CURSOR_KEY => read_u64(cursor),
        _ => None,
    }
}

/// A staged commit's writes, encoded.
pub(crate) fn encode_writes(staged: &Staged) -> Result<Writes<'_>, StoreError> {
    staged
        .iter()
        .map(|(key, slot)| Ok((key.as_slice(), slot.encode()?)))
        .collect()
}

pub(crate) fn fail(shared: &Shared, reason: &str) {
    tracing::error!(reason, "the engine state store failed");
    *lock(&shared.failure) = Some(reason.to_owned());
}
