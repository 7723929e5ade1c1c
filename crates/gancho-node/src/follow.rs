//! A partition's local log kept equal to its stream. Events are appended at their stream's
//! sequence numbers (`Appender::append_at`), so that what is derived from an event's seq
//! (action ids, `code()`) comes out the same on every node that stores them, and a restart
//! reads on from the local log's end: the same events read again are skipped, never stored
//! twice.

use std::time::Duration;

use async_nats::jetstream;
use gancho_cluster::{ClusterError, Partition, PartitionReader};
use gancho_core::NewEvent;
use gancho_store::{Store, StoreError};
use tokio::sync::watch;

/// Events appended as one submission, at most.
const BATCH: usize = 1024;
/// How long a read waits for the first event of a batch before it looks whether to stop.
const POLL: Duration = Duration::from_millis(200);

/// Why following a partition stopped.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error("reading partition {partition}: {source}")]
    Read {
        partition: Partition,
        #[source]
        source: ClusterError,
    },
    #[error("storing partition {partition}'s events: {source}")]
    Store {
        partition: Partition,
        #[source]
        source: StoreError,
    },
}

/// Appends partition `partition`'s events to `store` as they arrive, from the local log's end,
/// until `stop` holds `true`. Returns the last seq the local log holds.
pub async fn follow(
    js: &jetstream::Context,
    partition: Partition,
    store: &Store,
    mut stop: watch::Receiver<bool>,
) -> Result<u64, FollowError> {
    let stored = |source| FollowError::Store { partition, source };
    let read = |source| FollowError::Read { partition, source };
    let mut end = store.last_seq().map_err(stored)?;
    let mut reader = PartitionReader::open(js, partition, end)
        .await
        .map_err(read)?;
    let appender = store.appender();
    tracing::debug!(
        partition,
        from = end + 1,
        "following the partition's stream"
    );
    loop {
        let first = tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return Ok(end),
            first = reader.next_within(POLL) => first.map_err(read)?,
        };
        let Some(first) = first else {
            continue;
        };
        let mut batch: Vec<(u64, NewEvent)> = vec![first];
        while batch.len() < BATCH {
            match reader.next_within(Duration::ZERO).await.map_err(read)? {
                Some(next) => batch.push(next),
                None => break,
            }
        }
        appender.append_at(&batch).await.map_err(stored)?;
        end = batch.last().map_or(end, |(seq, _)| *seq);
    }
}
