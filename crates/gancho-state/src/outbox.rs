//! The outbox as the actions executor sees it ([`Outbox`]): decided actions waiting to be
//! delivered, their delivery records (attempts, next attempt time), and dead letters. Same tree
//! as the engine state (`schema.rs`), other prefixes:
//!
//! | prefix | key                                      | value                                 |
//! |--------|------------------------------------------|---------------------------------------|
//! | `O`    | channel, event seq, rule, position       | [`ActionRequest`], JSON (the engine)  |
//! | `P`    | the `O` key's suffix                     | [`Delivery`], JSON: tried, not done   |
//! | `N`    | channel, next attempt time, suffix       | empty (items to retry, by time)       |
//! | `Z`    | the `O` key's suffix                     | [`DeadLetter`], JSON                  |
//!
//! The engine only inserts `O` keys (in its commits); the executor only reads `O` keys at or
//! below the durable cursor, which are applied and durable, and removes them once delivered.
//! Updates of several keys hold one lock (lanes and `gancho dead retry` run on different
//! threads) and are ordered so that a crash between two writes errs towards delivering again
//! (with the same id), never towards losing an item: a delivered item's `O` key goes first; a
//! dead letter is written before its `O` key goes; a new retry-index key is written before the
//! delivery record that names it; a revived item gets its delivery record before its `O` key.
//! The executor flushes them in small groups (every 20 ms while deliveries are recorded), not
//! fsynced: a crash of the process repeats at most the sends in flight and those recorded in
//! the last 20 ms; a power loss, those since sled's own background flush.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use gancho_core::{ActionRequest, Channel};
use gancho_store::StoreError;
use gancho_store::keys::{read_time, read_u64, time_key};
use gancho_store::kv::Tree;
use serde::{Deserialize, Serialize};

use crate::applier::Shared;
use crate::overlay::lock;
use crate::schema::{DEAD, DELIVERY, NEXT, OUTBOX, channel_byte, corrupt, to_json};

/// One failed (or deferred) try at delivering.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// When it ended, ms since the epoch.
    pub at_ms: i64,
    /// What went wrong, as the peer said it.
    pub error: String,
    /// The peer refused for good (no retry).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub permanent: bool,
}

/// What is known of an item's delivery after it was first tried or deferred.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// When it was first tried or deferred, ms.
    pub first_ms: i64,
    /// When it is due next, ms.
    pub next_ms: i64,
    /// Failed tries, oldest first (deferrals, when the channel or destination was busy, are not
    /// tries).
    #[serde(default)]
    pub attempts: Vec<Attempt>,
}

/// An item that failed for good or too often: kept until an operator puts it back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub action: ActionRequest,
    pub attempts: Vec<Attempt>,
    pub dead_ms: i64,
}

/// An action waiting in the outbox, with its delivery record if it was tried.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxItem {
    /// The `O` key's suffix: channel, seq, rule, position. Sorts in decision order per channel.
    pub key: Vec<u8>,
    pub action: ActionRequest,
    pub delivery: Option<Delivery>,
}

pub(crate) fn prefixed(prefix: u8, suffix: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + suffix.len());
    key.push(prefix);
    key.extend_from_slice(suffix);
    key
}

fn next_key(channel_byte: u8, next_ms: i64, suffix: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(10 + suffix.len());
    key.push(NEXT);
    key.push(channel_byte);
    key.extend_from_slice(&time_key(next_ms));
    key.extend_from_slice(suffix);
    key
}

fn seq_of(suffix: &[u8]) -> Option<u64> {
    read_u64(suffix.get(1..9)?)
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    what: &str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|err| corrupt(what, &err.to_string()))
}

/// Cluster mode: a dead-letter retry commits once its update holds this much (a journal
/// message is at most 1 MiB and holds whole commits).
pub(crate) const SETTLE_BYTES: usize = 256 * 1024;

/// The outbox, as the actions executor and operators work it: what is due, what was
/// delivered, rescheduled or buried, and dead letters put back. It can neither commit a decision
/// nor move the engine's cursor: a crate given an `Outbox` decides nothing.
#[derive(Debug, Clone)]
pub struct Outbox {
    pub(crate) tree: Tree,
    pub(crate) shared: Arc<Shared>,
    /// Serializes the outbox's multi-key updates (executor lanes, `gancho dead retry`).
    pub(crate) lock: Arc<Mutex<()>>,
    /// The traces' database, where deliveries are recorded (`traces.rs`, `D`).
    pub(crate) traces: Tree,
    /// Cluster mode: the outbox's updates are commits of their own, fenced like the engine's,
    /// so that the partition's next owner knows what was delivered; `None`: written directly.
    pub(crate) fenced: Option<Fenced>,
}

/// How the outbox commits its updates in cluster mode: each update (its few keys, gathered in
/// `staged` under the outbox's lock) takes the next commit number and goes through the applier
/// (and so the partition's journal) like an engine commit, and the update returns once it is
/// durable, so no read of the tree after it sees the item as it was.
#[derive(Debug, Clone)]
pub(crate) struct Fenced {
    pub(crate) commits: Arc<std::sync::atomic::AtomicU64>,
    pub(crate) applier: Arc<Mutex<Option<crate::applier::Applier>>>,
    pub(crate) staged: Arc<Mutex<crate::overlay::Staged>>,
}

impl Outbox {
    pub(crate) fn tree(&self) -> &Tree {
        &self.tree
    }

    /// The cursor of the engine's last durable commit: only actions decided at or below it
    /// may be carried out.
    pub fn durable_cursor(&self) -> u64 {
        self.shared.durable_cursor.load(Ordering::Acquire)
    }

    /// Notified with the durable cursor each time it moves.
    pub fn durable_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.durable_tx.subscribe()
    }

    /// Items of `channel` never tried, decided at or below the durable cursor, after the item
    /// `after` (a key suffix) in decision order, at most `limit`; and the key of the last item
    /// looked at (tried items are looked at and skipped), to read on from. Reads the tree only:
    /// what is durable is applied.
    pub fn fresh_actions(
        &self,
        channel: Channel,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<OutboxItem>, Option<Vec<u8>>), StoreError> {
        // Counted by tests: proof that a lane looked.
        match channel {
            Channel::Email => {
                gancho_core::fail_point!("outbox.fresh_actions.email");
            }
            Channel::Sms => {
                gancho_core::fail_point!("outbox.fresh_actions.sms");
            }
            Channel::Http => {
                gancho_core::fail_point!("outbox.fresh_actions.http");
            }
        }
        let durable = self.durable_cursor();
        let ch = channel_byte(channel);
        let start = match after {
            Some(suffix) => {
                let mut key = prefixed(OUTBOX, suffix);
                key.push(0);
                key
            }
            None => vec![OUTBOX, ch],
        };
        let mut out = Vec::new();
        let mut last = None;
        for entry in self.tree().range(start..) {
            let (key, value) = entry?;
            if key.get(..2) != Some(&[OUTBOX, ch][..]) {
                break;
            }
            let suffix = &key[1..];
            if seq_of(suffix).is_none_or(|seq| seq > durable) {
                break;
            }
            last = Some(suffix.to_vec());
            if self.tree().contains_key(prefixed(DELIVERY, suffix))? {
                continue;
            }
            match decode("outbox item", &value) {
                Ok(action) => out.push(OutboxItem {
                    key: suffix.to_vec(),
                    action,
                    delivery: None,
                }),
                // Left where it is (an operator can still read it), never in the way of the
                // items behind it.
                Err(err) => {
                    tracing::error!(error = %err, "skipping an outbox item that cannot be read")
                }
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok((out, last))
    }

    /// Items of `channel` tried or deferred before and due at `now_ms` or earlier, soonest
    /// first, at most `limit`. Drops index entries a crash left stale.
    pub fn due_actions(
        &self,
        channel: Channel,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        let ch = channel_byte(channel);
        let end = next_key(ch, now_ms.saturating_add(1), &[]);
        let _outbox = lock(&self.lock);
        let mut out = Vec::new();
        for entry in self.tree().range(vec![NEXT, ch]..end) {
            let (key, _) = entry?;
            let suffix = key.get(10..).unwrap_or_default();
            let delivery: Option<Delivery> = match self
                .tree()
                .get(prefixed(DELIVERY, suffix))?
                .map(|v| decode("delivery record", &v))
                .transpose()
            {
                Ok(delivery) => delivery,
                Err(err) => {
                    // Its tries are lost; the item itself is tried afresh after a restart.
                    tracing::error!(error = %err, "dropping a delivery record that cannot be read");
                    self.remove(&prefixed(DELIVERY, suffix))?;
                    self.remove(&key)?;
                    continue;
                }
            };
            let action = self.tree().get(prefixed(OUTBOX, suffix))?;
            let current = delivery
                .as_ref()
                .is_some_and(|d| next_key(ch, d.next_ms, suffix) == key.as_ref());
            match (action, delivery) {
                (Some(action), Some(delivery)) if current => {
                    match decode::<ActionRequest>("outbox item", &action) {
                        Ok(action) => out.push(OutboxItem {
                            key: suffix.to_vec(),
                            action,
                            delivery: Some(delivery),
                        }),
                        Err(err) => {
                            // Out of the retry index, so it is not due again and again.
                            tracing::error!(error = %err, "setting aside an outbox item that cannot be read");
                            self.remove(&key)?;
                        }
                    }
                }
                (None, delivery) => {
                    // Delivered or buried, and a crash came before the rest was removed.
                    self.remove(&key)?;
                    if delivery.is_some() {
                        self.remove(&prefixed(DELIVERY, suffix))?;
                    }
                }
                _ => self.remove(&key)?,
            }
            if out.len() >= limit {
                break;
            }
        }
        self.settle()?;
        Ok(out)
    }

    /// Why the engine's state failed, if it did (cluster mode: a commit refused because another
    /// node owns the partition now): nothing more may be sent from this outbox.
    pub fn failure(&self) -> Option<String> {
        lock(&self.shared.failure).clone()
    }

    /// The item of this key (an [`OutboxItem::key`]) as it is now, with its delivery record;
    /// `None` once it left the outbox.
    pub fn action_item(&self, key: &[u8]) -> Result<Option<OutboxItem>, StoreError> {
        let Some(action) = self.tree().get(prefixed(OUTBOX, key))? else {
            return Ok(None);
        };
        let delivery = self
            .tree()
            .get(prefixed(DELIVERY, key))?
            .map(|v| decode("delivery record", &v))
            .transpose()?;
        Ok(Some(OutboxItem {
            key: key.to_vec(),
            action: decode("outbox item", &action)?,
            delivery,
        }))
    }

    /// When the soonest retry of `channel` is due, ms.
    pub fn next_action_due(&self, channel: Channel) -> Result<Option<i64>, StoreError> {
        let ch = channel_byte(channel);
        match self
            .tree()
            .scan_prefix([NEXT, ch])
            .keys()
            .next()
            .transpose()?
        {
            None => Ok(None),
            Some(key) => {
                let time = key
                    .get(2..10)
                    .and_then(read_time)
                    .ok_or_else(|| corrupt("outbox retry index", "a key without a time"))?;
                Ok(Some(time))
            }
        }
    }

    /// Writes the outbox's updates so far to the database's file (sled's flush: they then
    /// survive a crash of the process; the engine's commits alone are `fdatasync`ed).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.tree().flush()
    }

    /// The item was delivered at `now_ms`, the peer answering `answer`: it leaves the outbox
    /// (and dead letters, should a crash have left it in both), and joins the delivery
    /// history (`sent.rs`; a failure to record it there is logged, not returned).
    pub fn action_delivered(
        &self,
        item: &OutboxItem,
        now_ms: i64,
        answer: &str,
    ) -> Result<(), StoreError> {
        {
            let _outbox = lock(&self.lock);
            self.settled(|| {
                self.remove(&prefixed(OUTBOX, &item.key))?;
                gancho_core::fail_point!("outbox.delivered.after_item");
                self.clear_delivery(item)?;
                self.remove(&prefixed(DEAD, &item.key))
            })?;
        }
        let sent = crate::sent::Sent::of(item, now_ms, answer);
        if let Err(err) = crate::sent::record(&self.traces, &sent) {
            tracing::warn!(id = %item.action.id, error = %err, "recording a delivery in the history");
        }
        Ok(())
    }

    /// The item is to be tried again at `delivery.next_ms`.
    pub fn action_rescheduled(
        &self,
        item: &OutboxItem,
        delivery: &Delivery,
    ) -> Result<(), StoreError> {
        let _outbox = lock(&self.lock);
        self.settled(|| self.reschedule(item, delivery))
    }

    fn reschedule(&self, item: &OutboxItem, delivery: &Delivery) -> Result<(), StoreError> {
        let ch = item.key.first().copied().unwrap_or_default();
        // The index key first: a crash before the record leaves it stale (dropped), never a
        // record naming a key that is not there.
        self.insert(&next_key(ch, delivery.next_ms, &item.key), &[])?;
        gancho_core::fail_point!("outbox.reschedule.after_index");
        self.insert(&prefixed(DELIVERY, &item.key), &to_json(delivery)?)?;
        gancho_core::fail_point!("outbox.reschedule.after_record");
        if let Some(old) = &item.delivery
            && old.next_ms != delivery.next_ms
        {
            self.remove(&next_key(ch, old.next_ms, &item.key))?;
        }
        Ok(())
    }

    /// The item goes to dead letters with its attempts.
    pub fn action_dead(
        &self,
        item: &OutboxItem,
        attempts: Vec<Attempt>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let dead = DeadLetter {
            action: item.action.clone(),
            attempts,
            dead_ms: now_ms,
        };
        let _outbox = lock(&self.lock);
        self.settled(|| {
            self.insert(&prefixed(DEAD, &item.key), &to_json(&dead)?)?;
            gancho_core::fail_point!("outbox.dead.after_letter");
            self.remove(&prefixed(OUTBOX, &item.key))?;
            gancho_core::fail_point!("outbox.dead.after_item");
            self.clear_delivery(item)
        })
    }

    fn clear_delivery(&self, item: &OutboxItem) -> Result<(), StoreError> {
        if let Some(delivery) = &item.delivery {
            let ch = item.key.first().copied().unwrap_or_default();
            self.remove(&prefixed(DELIVERY, &item.key))?;
            gancho_core::fail_point!("outbox.clear.after_record");
            self.remove(&next_key(ch, delivery.next_ms, &item.key))?;
        }
        Ok(())
    }

    /// Items waiting in the outbox, not yet durable ones included, in decision order
    /// (event seq, rule, position), the oldest `limit` (0: all), with their delivery records.
    pub fn pending_actions(&self, limit: usize) -> Result<Vec<OutboxItem>, StoreError> {
        let mut out = Vec::new();
        self.each_pending(limit, |item| {
            out.push(item);
            Ok(())
        })?;
        Ok(out)
    }

    /// Dead letters, oldest decision first, at most `limit` (0: all).
    pub fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        let mut out = Vec::new();
        self.each_dead(limit, |dead| {
            out.push(dead);
            Ok(())
        })?;
        Ok(out)
    }

    /// Puts dead letters back in the outbox, due at once, with a fresh count of attempts (the
    /// earlier ones are logged as it happens): the one whose action id is `id`, or all of them
    /// when `id` is `None`. Returns how many.
    ///
    /// In cluster mode the letters go back in commits of at most about [`SETTLE_BYTES`] (a
    /// journal message holds whole commits, and the servers take at most 1 MiB); on an error
    /// the letters put back before it stay back, and the rest stay dead.
    pub fn retry_dead(&self, id: Option<&str>, now_ms: i64) -> Result<usize, StoreError> {
        let _outbox = lock(&self.lock);
        self.settled(|| self.revive(id, now_ms))
    }

    /// [`Outbox::retry_dead`]'s work, under the outbox's lock.
    fn revive(&self, id: Option<&str>, now_ms: i64) -> Result<usize, StoreError> {
        let mut revived = 0;
        for entry in self.tree().scan_prefix([DEAD]) {
            let (key, value) = entry?;
            let dead: DeadLetter = match decode("dead letter", &value) {
                Ok(dead) => dead,
                Err(err) => {
                    tracing::error!(error = %err, "skipping a dead letter that cannot be read");
                    continue;
                }
            };
            if id.is_some_and(|id| id != dead.action.id) {
                continue;
            }
            // A commit holds whole letters: one that would take it past the size goes in the
            // next (a letter alone is no larger than the decision that made it).
            let staged = self.staged_bytes();
            if staged > 0 && staged + value.len() + 256 >= SETTLE_BYTES {
                self.settle()?;
            }
            let suffix = key.get(1..).unwrap_or_default();
            let item = OutboxItem {
                key: suffix.to_vec(),
                action: dead.action.clone(),
                delivery: None,
            };
            // Due now through the retry index: the executor's scan of new items is past it.
            let delivery = Delivery {
                first_ms: now_ms,
                next_ms: now_ms,
                attempts: Vec::new(),
            };
            tracing::info!(
                id = %item.action.id,
                rule = %item.action.rule,
                earlier_tries = dead.attempts.len(),
                "a dead letter is put back in the outbox"
            );
            // Its record first: an `O` key without one would look new to a lane reading the
            // outbox from its start.
            self.reschedule(&item, &delivery)?;
            self.insert(&prefixed(OUTBOX, suffix), &to_json(&item.action)?)?;
            gancho_core::fail_point!("outbox.revive.after_item");
            self.remove(&key)?;
            revived += 1;
        }
        Ok(revived)
    }

    /// Runs an update (the caller holds the outbox's lock) and commits it. In cluster mode, an
    /// update that fails drops what it staged, so that the next one does not commit half of it
    /// (a dead letter written without its item's removal).
    fn settled<T>(&self, update: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
        let done = update().and_then(|value| self.settle().map(|()| value));
        if done.is_err()
            && let Some(fenced) = &self.fenced
        {
            lock(&fenced.staged).clear();
        }
        done
    }

    /// Cluster mode: the bytes of the update gathered so far (0 on a single node).
    fn staged_bytes(&self) -> usize {
        self.fenced.as_ref().map_or(0, |fenced| {
            lock(&fenced.staged)
                .iter()
                .map(|(key, slot)| match slot {
                    crate::overlay::Slot::Bytes(value) => key.len() + value.len(),
                    _ => key.len(),
                })
                .sum()
        })
    }

    fn insert(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        match &self.fenced {
            Some(fenced) => {
                let slot = crate::overlay::Slot::Bytes(value.to_vec());
                lock(&fenced.staged).push((key.to_vec(), slot));
                Ok(())
            }
            None => self.tree().insert(key, value),
        }
    }

    fn remove(&self, key: &[u8]) -> Result<(), StoreError> {
        match &self.fenced {
            Some(fenced) => {
                lock(&fenced.staged).push((key.to_vec(), crate::overlay::Slot::Removed));
                Ok(())
            }
            None => self.tree().remove(key),
        }
    }

    /// Cluster mode: commits the update gathered since the last one, and waits until it is
    /// durable (or the state failed). Called under the outbox's lock, at the end of each update.
    fn settle(&self) -> Result<(), StoreError> {
        let Some(fenced) = &self.fenced else {
            return Ok(());
        };
        let staged = std::mem::take(&mut *lock(&fenced.staged));
        if staged.is_empty() {
            return Ok(());
        }
        let commit = crate::applier::queue(&fenced.applier, &fenced.commits, staged, |_, _| {})?;
        crate::applier::wait_durable(&self.shared, commit)
    }
}

#[cfg(test)]
#[path = "outbox_tests.rs"]
mod tests;
