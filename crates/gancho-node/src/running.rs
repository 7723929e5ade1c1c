//! What the operator's commands read on a node: the stores of the partitions it runs now.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use gancho_cluster::Partition;
use gancho_state::EngineState;
use gancho_store::Store;

/// One running partition's stores, as the commands read them.
#[derive(Debug, Clone)]
pub struct LaneStores {
    pub partition: Partition,
    /// Its local log (its events at their stream seqs).
    pub store: Store,
    /// Its engine state: cursor, rule state, outbox. In cluster mode the outbox's updates are
    /// fenced commits, so an operator's change (a dead letter put back) is journaled like the
    /// engine's decisions and moves with the partition.
    pub state: EngineState,
}

/// The partitions a node runs, kept current by [`crate::run_node`]: a partition is listed once
/// it runs and taken off before it stops. A reader that took a partition's stores just before
/// reads what they held when it stopped (a write fails: the state is closed), and keeps its
/// databases open until it lets them go (the partition cannot start again on this node
/// meanwhile): take one partition's at a time ([`RunningStores::lane`]) and drop it after.
#[derive(Debug, Clone, Default)]
pub struct RunningStores(Arc<Mutex<BTreeMap<Partition, LaneStores>>>);

impl RunningStores {
    /// The partitions running now, in order (the global lane last).
    pub fn lanes(&self) -> Vec<LaneStores> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// The partitions running now, in order.
    pub fn partitions(&self) -> Vec<Partition> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .copied()
            .collect()
    }

    /// Partition `p`'s stores, if it runs here now.
    pub fn lane(&self, p: Partition) -> Option<LaneStores> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&p)
            .cloned()
    }

    pub(crate) fn insert(&self, lane: LaneStores) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(lane.partition, lane);
    }

    pub(crate) fn remove(&self, p: Partition) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&p);
    }
}
