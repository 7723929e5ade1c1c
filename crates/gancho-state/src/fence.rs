//! Cluster mode's fence on the engine's commits: before a batch of commits is journaled
//! locally, its records go to the partition's shared journal, where a write is refused if
//! another node has written since this owner last did (`gancho-cluster`'s `Journal`). A refused
//! write fails this state for good: the partition's engine stops, and its commits never become
//! durable here, so the actions executor never carries out what it decided. This crate only
//! calls the fence; the node (`gancho-node`) gives one built on NATS.

/// Why a batch could not be committed to the shared journal.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// Another node wrote to the partition's journal since this owner last did: it owns the
    /// partition now.
    #[error("another node owns the partition now: {0}")]
    Fenced(String),
    /// The shared journal could not be written (unreachable, a timeout).
    #[error("the partition's journal could not be written: {0}")]
    Unavailable(String),
}

/// Writes each batch of engine commits to the partition's shared journal first.
pub trait CommitFence: Send + Sync + std::fmt::Debug {
    /// Writes `records` (the batch's journal records, as the local journal file holds them),
    /// which end at event `cursor`, durably and fenced; returns once the shared journal holds
    /// them. Called from the applier thread, never from an async task.
    fn commit(&self, cursor: u64, records: &[u8]) -> Result<(), FenceError>;

    /// The last message of the shared journal this fence knows (opened at, or written): once
    /// every commit made through it is applied, the database holds every decision up to it.
    fn position(&self) -> u64;
}
