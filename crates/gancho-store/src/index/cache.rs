//! The indexes' block cache: decompressed blocks of run files that readers asked for, up to a
//! budget in bytes (its share of `[store] cache_mb`), evicted by CLOCK (a block read again since
//! the hand last passed it gets a second chance). Merges and checkpoints read past it, so a merge
//! does not wash out what lookups use.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use super::block::Block;
use crate::error::StoreError;

/// Block `.1` of run `.0`.
type Key = (u64, u32);

#[derive(Debug)]
pub(super) struct BlockCache {
    budget: usize,
    inner: Mutex<Clock>,
}

#[derive(Debug, Default)]
struct Clock {
    slots: HashMap<Key, Slot>,
    /// Keys in the order the hand visits them (some may have left `slots`).
    hand: VecDeque<Key>,
    bytes: usize,
}

#[derive(Debug)]
struct Slot {
    block: Arc<Block>,
    used: bool,
}

impl BlockCache {
    pub(super) fn new(budget: u64) -> BlockCache {
        BlockCache {
            budget: usize::try_from(budget).unwrap_or(usize::MAX),
            inner: Mutex::new(Clock::default()),
        }
    }

    /// Block `block` of run `run` if the cache holds it (counted as a use).
    pub(super) fn cached(&self, run: u64, block: usize) -> Option<Arc<Block>> {
        let key = (run, u32::try_from(block).unwrap_or(u32::MAX));
        let mut clock = self.lock();
        let slot = clock.slots.get_mut(&key)?;
        slot.used = true;
        Some(Arc::clone(&slot.block))
    }

    /// Block `block` of run `run`: from the cache, or `load`ed and kept.
    pub(super) fn get(
        &self,
        run: u64,
        block: usize,
        load: impl FnOnce() -> Result<Block, StoreError>,
    ) -> Result<Arc<Block>, StoreError> {
        let key = (run, u32::try_from(block).unwrap_or(u32::MAX));
        if let Some(slot) = self.lock().slots.get_mut(&key) {
            slot.used = true;
            return Ok(Arc::clone(&slot.block));
        }
        let loaded = Arc::new(load()?);
        let size = loaded.bytes.len();
        if size > self.budget {
            return Ok(loaded);
        }
        let mut clock = self.lock();
        if clock.slots.contains_key(&key) {
            return Ok(loaded);
        }
        clock.bytes += size;
        clock.slots.insert(
            key,
            Slot {
                block: Arc::clone(&loaded),
                used: false,
            },
        );
        clock.hand.push_back(key);
        while clock.bytes > self.budget {
            let Some(at) = clock.hand.pop_front() else {
                break;
            };
            let Some(slot) = clock.slots.get_mut(&at) else {
                continue;
            };
            if slot.used {
                slot.used = false;
                clock.hand.push_back(at);
            } else if let Some(gone) = clock.slots.remove(&at) {
                clock.bytes -= gone.block.bytes.len();
            }
        }
        Ok(loaded)
    }

    /// Drops the blocks of a run that was deleted.
    pub(super) fn forget(&self, run: u64) {
        let mut clock = self.lock();
        let Clock { slots, hand, bytes } = &mut *clock;
        slots.retain(|&(r, _), slot| {
            let keep = r != run;
            if !keep {
                *bytes -= slot.block.bytes.len();
            }
            keep
        });
        hand.retain(|(r, _)| *r != run);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Clock> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes of blocks it holds.
    #[cfg(test)]
    pub(super) fn bytes(&self) -> usize {
        self.lock().bytes
    }
}
