//! A small cache of decompressed log blocks, for reading single events (`Store::event`): the
//! engine reads the events its rules ask for (`last`, `first`, `events`), which are often in a
//! few recent blocks, and decompressing a 32 KiB block costs more than the rest of a query.
//! A block changes only when a prune empties some of its records: the prune forgets it here,
//! and reads check the pruned set first, so a copy cached meanwhile shows nothing pruned.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use super::codec::Block;
use super::segments::Log;
use crate::error::StoreError;

#[derive(Debug)]
pub(crate) struct BlockCache {
    inner: Mutex<Inner>,
    capacity: usize,
}

#[derive(Default)]
struct Inner {
    /// By the seq of the block's first event.
    blocks: BTreeMap<u64, Arc<Block>>,
    /// Insertion order, for eviction (first in, first out).
    order: VecDeque<u64>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} blocks", self.blocks.len())
    }
}

impl BlockCache {
    pub(crate) fn new(capacity: usize) -> BlockCache {
        BlockCache {
            inner: Mutex::new(Inner::default()),
            capacity,
        }
    }

    /// Drops the block whose first event has this seq (a prune changed it).
    pub(crate) fn forget(&self, first_seq: u64) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.blocks.remove(&first_seq).is_some() {
            inner.order.retain(|&seq| seq != first_seq);
        }
    }

    /// The block holding `seq`, from the cache or the tree.
    pub(crate) fn block(&self, log: &Log, seq: u64) -> Result<Option<Arc<Block>>, StoreError> {
        {
            let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((_, block)) = inner.blocks.range(..=seq).next_back()
                && block.record(seq).is_some()
            {
                return Ok(Some(Arc::clone(block)));
            }
        }
        let Some((key, value)) = log.find_block(seq)? else {
            return Ok(None);
        };
        let block = Arc::new(log.block(&key, &value)?);
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner
            .blocks
            .insert(block.first_seq, Arc::clone(&block))
            .is_none()
        {
            inner.order.push_back(block.first_seq);
        }
        while inner.order.len() > self.capacity {
            if let Some(old) = inner.order.pop_front() {
                inner.blocks.remove(&old);
            }
        }
        Ok(Some(block))
    }
}
