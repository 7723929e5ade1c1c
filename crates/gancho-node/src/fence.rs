//! A partition's shared journal (`gancho_cluster::Journal`) as the fence of its engine state's
//! commits (`gancho_state::CommitFence`): the state's applier thread writes each batch's records
//! there, fenced, before its local journal, and a refusal stops the partition's engine.

use std::sync::Mutex;

use gancho_cluster::{ClusterError, Journal};
use gancho_state::{CommitFence, FenceError};

/// The fence of one partition's engine state.
#[derive(Debug)]
pub struct JournalFence {
    journal: Mutex<Journal>,
    /// The runtime the NATS client runs on: the applier thread is not one of its tasks.
    runtime: tokio::runtime::Handle,
}

impl JournalFence {
    /// `journal` opened by this node as it took the partition; `runtime` the NATS client's.
    pub fn new(journal: Journal, runtime: tokio::runtime::Handle) -> JournalFence {
        JournalFence {
            journal: Mutex::new(journal),
            runtime,
        }
    }
}

impl CommitFence for JournalFence {
    fn commit(&self, cursor: u64, records: &[u8]) -> Result<(), FenceError> {
        let mut journal = self
            .journal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match self
            .runtime
            .block_on(journal.commit(cursor, records.to_vec()))
        {
            Ok(_) => Ok(()),
            Err(err @ ClusterError::Fenced { .. }) => Err(FenceError::Fenced(err.to_string())),
            Err(err) => Err(FenceError::Unavailable(err.to_string())),
        }
    }
}
