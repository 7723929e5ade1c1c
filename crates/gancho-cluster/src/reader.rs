//! Reading a partition's events in order, from the cursor on: what its owner runs its rules
//! on. An ordered consumer (ephemeral, flow-controlled, recreated by the client after a gap or
//! a server change) delivers the stream's messages in sequence; each is decoded back into the
//! event ingress published.

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
            partition,
            messages,
            last: cursor,
        })
    }

    /// The next event and its sequence, waiting at most `wait`; `None` if none came.
    pub async fn next_within(
        &mut self,
        wait: Duration,
    ) -> Result<Option<(u64, NewEvent)>, ClusterError> {
        let partition = self.partition;
        let read_error = |reason: String| ClusterError::Read { partition, reason };
        let deadline = tokio::time::Instant::now() + wait;
        let (message, sequence) = loop {
            let message = match tokio::time::timeout_at(deadline, self.messages.next()).await {
                Err(_) => return Ok(None),
                Ok(None) => return Err(read_error("the consumer ended".to_owned())),
                Ok(Some(message)) => message.map_err(|err| read_error(err.to_string()))?,
            };
            let sequence = message
                .info()
                .map_err(|err| read_error(err.to_string()))?
                .stream_sequence;
            if sequence > self.last {
                break (message, sequence);
            }
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
