//! The applier thread (`gancho-state`): encodes each commit the engine staged, writes its
//! journal, applies it to the tree, flushes and `fdatasync`s, publishes the durable cursor, and
//! removes the journal. A failed write or sync fails the state for good (the daemon exits and
//! the restart completes the commit from its journal).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, mpsc};
use std::thread::JoinHandle;

use gancho_store::StoreError;
use gancho_store::keys::read_u64;
use gancho_store::kv::{Db, FileSync, Tree};

use crate::journal::{MARKER, journal_key, remove_journal, write_journal};
use crate::overlay::{Overlay, Slot, Staged, Writes, lock};

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
}

#[derive(Debug)]
pub(crate) struct Applier {
    pub(crate) jobs: mpsc::SyncSender<(u64, Staged)>,
    pub(crate) thread: JoinHandle<()>,
}

pub(crate) fn sync(db: &Db, shared: &Shared) -> Result<(), StoreError> {
    db.make_durable(lock(&shared.sync).as_mut())
}

/// The applier thread: applies committed writes to the tree in commit order, takes them out of
/// the overlay, and once they are durable removes the journal records that covered them.
pub(crate) fn apply_loop(
    db: &Db,
    tree: &Tree,
    shared: &Shared,
    jobs: &mpsc::Receiver<(u64, Staged)>,
) {
    let mut applied = 0;
    let mut applied_cursor = 0;
    let mut journaled: Vec<u64> = Vec::new();
    loop {
        // Block for the next job, then take whatever else is queued: one flush for them all.
        let mut batch = match jobs.recv() {
            Ok(job) => vec![job],
            Err(_) => Vec::new(),
        };
        let closing = batch.is_empty();
        batch.extend(jobs.try_iter());
        for (commit, staged) in &batch {
            let written = encode_writes(staged).and_then(|writes| {
                write_journal(tree, *commit, &writes)?;
                // Held here (`pause`), a commit is provably in flight: journaled, not applied.
                gancho_core::fail_point!("state.apply.before_writes");
                for (i, (key, value)) in writes.iter().enumerate() {
                    if i == writes.len() / 2 {
                        gancho_core::fail_point!("state.apply.halfway");
                    }
                    match value {
                        Some(v) => tree.insert(key, v.as_ref()).map(drop),
                        None => tree.remove(key).map(drop),
                    }?;
                }
                Ok(())
            });
            if let Err(err) = written {
                fail(shared, &format!("applying engine state: {err}"));
                return;
            }
            let mut overlay = lock(&shared.overlay);
            for (key, _) in staged {
                if overlay.get(key).is_some_and(|(c, _)| c == commit) {
                    overlay.remove(key);
                }
            }
            drop(overlay);
            applied = *commit;
            if let Some((_, Slot::Bytes(cursor))) = staged.last() {
                applied_cursor = read_u64(cursor).unwrap_or(applied_cursor);
            }
            journaled.push(*commit);
        }
        if !journaled.is_empty() {
            gancho_core::fail_point!("state.apply.before_sync");
            if let Err(err) = sync(db, shared) {
                fail(shared, &err.to_string());
                return;
            }
            // Durable: the journals of these commits are no longer needed. They go before the
            // durable cursor is published: the executor acts on these commits only after that
            // (it removes a delivered item's key), and sled keeps a prefix of its writes, so a
            // crash can never keep the executor's removal and lose the journal's, whose replay
            // would bring a delivered item back.
            let keys = tree
                .range(journal_key(0, 0)..=journal_key(applied, MARKER))
                .keys()
                .collect::<Result<Vec<_>, _>>()
                .and_then(|keys| remove_journal(tree, keys.into_iter()));
            if let Err(err) = keys {
                fail(shared, &format!("removing engine journal: {err}"));
                return;
            }
            shared.durable_commit.store(applied, Ordering::Release);
            shared
                .durable_cursor
                .store(applied_cursor, Ordering::Release);
            shared.durable_tx.send_replace(applied_cursor);
            journaled.clear();
        }
        if closing {
            if let Err(err) = sync(db, shared) {
                fail(shared, &err.to_string());
            }
            return;
        }
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
