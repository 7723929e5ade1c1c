//! Reading a partition's events in order, from the cursor on: what its owner runs its rules
//! on. An ordered consumer (ephemeral, flow-controlled, recreated by the client after a gap or
//! a server change) delivers the stream's messages in sequence; each is decoded back into the
//! event ingress published.
//!
//! The server deletes an idle ephemeral consumer (one whose node was stopped or frozen longer
//! than its inactivity threshold) and loses one whose server died; the client does not recreate
//! it then, and every pull fails with "consumer not found". So the reader makes a new consumer
//! from the last sequence it handed out and reads on, instead of failing the partition.

use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::{Ordered, OrderedConfig};
use futures_util::StreamExt as _;
use gancho_core::NewEvent;

use crate::error::ClusterError;
use crate::publish::{FORMAT_HEADER, FORMAT_JSON_V1};
use crate::streams::event_stream;
use gancho_core::partition::Partition;

/// A partition's events after a cursor, in stream order.
pub struct PartitionReader {
    js: jetstream::Context,
    partition: Partition,
    messages: Ordered,
    /// The last sequence handed out. The client recreates an ordered consumer after missed
    /// heartbeats or a server restart; one recreated before its first message starts over at
    /// sequence 1 (async-nats 0.51), so anything at or below this is a replay and dropped.
    last: u64,
}

impl std::fmt::Debug for PartitionReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionReader")
            .field("partition", &self.partition)
            .finish_non_exhaustive()
    }
}

impl PartitionReader {
    /// Reads partition `p`'s events whose sequence is above `cursor`.
    /// Creating the consumer is tried again for a while: right after a server restarts or a
    /// leader changes, JetStream can time out or have no responders.
    pub async fn open(
        js: &jetstream::Context,
        partition: Partition,
        cursor: u64,
    ) -> Result<PartitionReader, ClusterError> {
        crate::streams::settled(|| PartitionReader::open_once(js, partition, cursor)).await
    }

    async fn open_once(
        js: &jetstream::Context,
        partition: Partition,
        cursor: u64,
    ) -> Result<PartitionReader, ClusterError> {
        let read_error = |reason: String| ClusterError::Read { partition, reason };
        let stream = js
            .get_stream(event_stream(partition))
            .await
            .map_err(|err| read_error(err.to_string()))?;
        let consumer = stream
            .create_consumer(OrderedConfig {
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: cursor + 1,
                },
                ..Default::default()
            })
            .await
            .map_err(|err| read_error(err.to_string()))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|err| read_error(err.to_string()))?;
        Ok(PartitionReader {
            js: js.clone(),
            partition,
            messages,
            last: cursor,
        })
    }

    /// Replaces the consumer with a new one that starts after the last sequence handed out.
    async fn reopen(&mut self, reason: &str) -> Result<(), ClusterError> {
        tracing::warn!(
            partition = self.partition,
            after = self.last,
            reason,
            "the partition's consumer failed; reading on from a new one"
        );
        let fresh = PartitionReader::open(&self.js, self.partition, self.last).await?;
        self.messages = fresh.messages;
        Ok(())
    }

    /// The next event and its sequence, waiting at most `wait`; `None` if none came.
    pub async fn next_within(
        &mut self,
        wait: Duration,
    ) -> Result<Option<(u64, NewEvent)>, ClusterError> {
        let partition = self.partition;
        let read_error = |reason: String| ClusterError::Read { partition, reason };
        let deadline = tokio::time::Instant::now() + wait;
        // One new consumer a call: if that one fails too, the caller hears of it.
        let mut reopened = false;
        let (message, sequence) = loop {
            let failure = match tokio::time::timeout_at(deadline, self.messages.next()).await {
                Err(_) => return Ok(None),
                Ok(None) => "the consumer ended".to_owned(),
                Ok(Some(Err(err))) => err.to_string(),
                Ok(Some(Ok(message))) => {
                    let sequence = message
                        .info()
                        .map_err(|err| read_error(err.to_string()))?
                        .stream_sequence;
                    if sequence > self.last {
                        break (message, sequence);
                    }
                    continue;
                }
            };
            if reopened {
                return Err(read_error(failure));
            }
            self.reopen(&failure).await?;
            reopened = true;
        };
        self.last = sequence;
        let format = message
            .headers
            .as_ref()
            .and_then(|h| h.get(FORMAT_HEADER))
            .map(|v| v.as_str().to_owned());
        if format.as_deref() != Some(FORMAT_JSON_V1) {
            return Err(ClusterError::Undecodable {
                partition,
                sequence,
                reason: format!("its {FORMAT_HEADER} is {format:?}, not {FORMAT_JSON_V1:?}"),
            });
        }
        let event =
            serde_json::from_slice(&message.payload).map_err(|err| ClusterError::Undecodable {
                partition,
                sequence,
                reason: err.to_string(),
            })?;
        Ok(Some((sequence, event)))
    }
}
