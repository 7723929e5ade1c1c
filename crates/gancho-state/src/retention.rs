//! What retention asks of the engine's database: which events pending timers still refer to
//! (the store keeps those past their time), and the deletion of what has outlived its use:
//! rule state (and `throttle` marks) long expired, and old dead letters.

use std::collections::HashSet;

use gancho_store::StoreError;

use crate::overlay::{Slot, lock};
use crate::schema::{STATE, StateValue, TIMER, Timer};
use crate::{EngineState, Outbox};

impl EngineState {
    /// The seqs of the events pending timers refer to: the event whose processing set each
    /// one, and an expectation's origin (`data.seq`), which its callback reads from the log.
    /// Committed timers not yet applied count, and so do timers a staged commit removes.
    pub fn referenced_seqs(&self) -> Result<HashSet<u64>, StoreError> {
        let mut seqs = HashSet::new();
        let mut add = |timer: &Timer| {
            seqs.insert(timer.origin_seq);
            if let Some(seq) = timer.data.get("seq").and_then(serde_json::Value::as_u64) {
                seqs.insert(seq);
            }
        };
        {
            let overlay = lock(&self.shared.overlay);
            for (_, (_, slot)) in overlay.range(vec![TIMER]..vec![TIMER + 1]) {
                if let Slot::Timer(timer) = slot {
                    add(timer);
                }
            }
        }
        for value in self.tree.scan_prefix([TIMER]).values() {
            match serde_json::from_slice::<Timer>(&value?) {
                Ok(timer) => add(&timer),
                // Kept whatever it refers to; the engine reports the timer when it is due.
                Err(err) => tracing::warn!(error = %err, "an unreadable timer"),
            }
        }
        Ok(seqs)
    }

    /// Deletes rule state (values set with a time to live, `throttle` marks) that expired
    /// before `before_ms` (event time). A value a commit has staged is left alone: the check
    /// and the removal hold the overlay's lock, under which every commit is staged, so no
    /// newer value can be removed. Returns how many went.
    pub fn drop_expired_state(&self, before_ms: i64) -> Result<usize, StoreError> {
        let mut dropped = 0;
        for entry in self.tree.scan_prefix([STATE]) {
            let (key, value) = entry?;
            let expired = serde_json::from_slice::<StateValue>(&value)
                .ok()
                .and_then(|state| state.expires_ms)
                .is_some_and(|expires| expires < before_ms);
            if !expired {
                continue;
            }
            let overlay = lock(&self.shared.overlay);
            if overlay.contains_key(&key[..]) {
                continue;
            }
            // Still the value read (an applied commit may have replaced it since).
            if self.tree.get(&key)?.is_some_and(|now| now == value) {
                self.tree.remove(&key)?;
                dropped += 1;
            }
            drop(overlay);
        }
        Ok(dropped)
    }
}

impl Outbox {
    /// Deletes the dead letters that died before `before_ms`. Returns how many went.
    pub fn prune_dead(&self, before_ms: i64) -> Result<usize, StoreError> {
        let _outbox = lock(&self.lock);
        let mut pruned = 0;
        for entry in self.tree().scan_prefix([crate::schema::DEAD]) {
            let (key, value) = entry?;
            // An unreadable letter stays, for an operator to look at.
            let dead_ms = serde_json::from_slice::<crate::DeadLetter>(&value)
                .map(|dead| dead.dead_ms)
                .unwrap_or(i64::MAX);
            if dead_ms < before_ms {
                self.tree().remove(&key)?;
                pruned += 1;
            }
        }
        Ok(pruned)
    }
}
