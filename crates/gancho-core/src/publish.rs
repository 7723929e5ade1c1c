//! Where a request's events go in cluster mode: not to the node's own log, but to the shared
//! one (NATS JetStream, `gancho-cluster`). Ingress holds an [`EventPublisher`] and answers 200
//! only once it resolved with success; the binary gives it one built on the cluster's client.
//! The trait is here, with the vocabulary, so that ingress and the cluster client need not know
//! each other.

use std::future::Future;
use std::pin::Pin;

use crate::NewEvent;

/// What became of a request's events once every one of them is durable in the shared log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublishedCounts {
    /// Events stored now.
    pub stored: usize,
    /// Events the shared log held already (a provider's retry), not stored again.
    pub duplicates: usize,
}

/// Why a request's events could not all be made durable: the request must not be acknowledged,
/// and the sender should try again.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Too many publishes are waiting for their acknowledgements on this node.
    #[error("too many events are waiting for the cluster; retry later")]
    Busy,
    /// The shared log did not acknowledge every event (unreachable, a timeout, a refusal).
    #[error("the cluster did not store the events: {0}")]
    Unavailable(String),
}

/// The future [`EventPublisher::publish`] returns.
pub type PublishFuture =
    Pin<Box<dyn Future<Output = Result<PublishedCounts, PublishError>> + Send + 'static>>;

/// Where the engine's own events (timer firings, cron ticks) go in cluster mode: its
/// partition's stream, from which they come back into the partition's log like any event. The
/// engine's thread is not async, so this blocks until every event is acknowledged.
pub trait BlockingPublisher: Send + Sync + std::fmt::Debug {
    /// Publishes `events`; returns once every one is acknowledged as stored, or why one was not.
    fn publish_blocking(&self, events: Vec<NewEvent>) -> Result<PublishedCounts, PublishError>;
}

/// Makes a request's events durable in the shared log.
pub trait EventPublisher: Send + Sync + std::fmt::Debug {
    /// Publishes `events` (all of one source, `events[i].source`); resolves once every one is
    /// acknowledged as stored, or with the reason one was not.
    fn publish(&self, events: Vec<NewEvent>) -> PublishFuture;
}
