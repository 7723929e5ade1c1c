//! Cluster mode's path for a request: its events to the shared log through the
//! [`EventPublisher`] the binary gives, its refused items to this node's quarantine.

use gancho_core::publish::{EventPublisher, PublishError, PublishedCounts};
use gancho_store::{Appender, StoreError, Submission};

/// What one request stored.
pub(crate) struct Counts {
    pub(crate) stored: usize,
    pub(crate) duplicates: usize,
    pub(crate) quarantined: usize,
}

/// Why a request was not stored in cluster mode.
pub(crate) enum Refused {
    Cluster(PublishError),
    Store(StoreError),
}

/// Cluster mode: the request's events go to the shared log, then its refused items to this
/// node's quarantine. Events first: if the quarantine then fails, the sender's retry finds the
/// events already there (duplicates) and quarantines the items again.
pub(crate) async fn publish(
    publisher: &dyn EventPublisher,
    appender: &Appender,
    submission: Submission,
) -> Result<Counts, Refused> {
    let Submission { events, rejected } = submission;
    let published = match events.is_empty() {
        true => PublishedCounts::default(),
        false => publisher.publish(events).await.map_err(Refused::Cluster)?,
    };
    let quarantined = match rejected.is_empty() {
        true => 0,
        false => {
            let refused = Submission {
                events: Vec::new(),
                rejected,
            };
            let report = appender.append(refused).await.map_err(Refused::Store)?;
            report.quarantined.len()
        }
    };
    Ok(Counts {
        stored: published.stored,
        duplicates: published.duplicates,
        quarantined,
    })
}
