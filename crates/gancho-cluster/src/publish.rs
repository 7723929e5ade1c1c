//! Ingress's half of cluster mode: an accepted request's events go to their partitions'
//! streams, and the request is answered 200 only once every one of them is acknowledged.
//!
//! Each event is one message: its JSON (`gancho_core::NewEvent`, the `Gancho-Format` header
//! says which encoding) on its partition's subject, with `Nats-Msg-Id` the hex of the 128-bit
//! xxh3 of its source and event id (a provider's id may hold bytes a header cannot). A repeat
//! within the stream's duplicate window is acknowledged as a duplicate and not stored twice.
//!
//! A "duplicate" is only believed when the stream holds the message it names: servers before
//! 2.11 could answer "duplicate" with sequence 0 across a leader change for a message they had
//! not stored. So a duplicate's sequence is read back and its id compared, and anything else
//! fails the request (the sender retries; nothing is acknowledged that is not stored).

use std::collections::HashMap;
use std::sync::Arc;

use async_nats::jetstream;
use async_nats::jetstream::message::PublishMessage;
use gancho_core::NewEvent;
use gancho_core::publish::{EventPublisher, PublishError, PublishFuture, PublishedCounts};
use xxhash_rust::xxh3::xxh3_128;

use crate::error::ClusterError;
use crate::streams::{event_stream, event_subject};
use gancho_core::partition::{Partition, partition_of};

/// The header naming the payload's encoding.
pub const FORMAT_HEADER: &str = "Gancho-Format";
/// The payload's encoding today: the event as JSON.
pub const FORMAT_JSON_V1: &str = "event-json-1";

/// Where one event went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub partition: Partition,
    /// Its sequence in its partition's stream (the first one, for a duplicate).
    pub sequence: u64,
    /// It was there already: this publish stored nothing.
    pub duplicate: bool,
}

/// The message id of an event: the same for a provider's retry of it, whichever node takes it.
pub fn message_id(event: &NewEvent) -> String {
    let mut key = Vec::with_capacity(event.source.len() + 1 + event.id.as_str().len());
    key.extend_from_slice(event.source.as_bytes());
    key.push(0);
    key.extend_from_slice(event.id.as_str().as_bytes());
    format!("{:032x}", xxh3_128(&key))
}

/// The partition of `event`: that of its partition key's value, or of its message id when it
/// has no value for that key (it then correlates with nothing, and any partition will do, as
/// long as every node picks the same one).
pub fn partition_for(event: &NewEvent, partition_key: &str, partitions: u16) -> Partition {
    match event.keys.get(partition_key) {
        Some(value) => partition_of(value, partitions),
        None => partition_of(&message_id(event), partitions),
    }
}

/// The JetStream context ingress publishes through: when every in-flight permit is taken, a
/// publish fails at once (`MaxAckPending`, answered 503 so the sender retries) instead of
/// waiting for a permit that requests in the middle of sending may all be holding. Journal
/// commits and leases use a context of their own, so a burst of webhooks never delays a lease
/// renewal.
pub fn ingress_context(client: async_nats::Client) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .backpressure_on_inflight(false)
        .max_ack_inflight(INGRESS_IN_FLIGHT)
        .build(client)
}

/// Publishes in flight at once through [`ingress_context`], at most.
const INGRESS_IN_FLIGHT: usize = 16_384;

/// Publishes `events`, each to the partition `partition` gives it, and waits for every
/// acknowledgement. Either every event is stored (or was already) and this returns where, or
/// it returns an error and the caller must not acknowledge the request. `js` should come from
/// [`ingress_context`].
pub async fn publish_events(
    js: &jetstream::Context,
    events: &[NewEvent],
    partition: impl Fn(&NewEvent) -> Partition,
) -> Result<Vec<Published>, ClusterError> {
    let mut published = Vec::with_capacity(events.len());
    for chunk in events.chunks(CHUNK) {
        publish_chunk(js, chunk, &partition, &mut published).await?;
    }
    Ok(published)
}

/// Events of a request sent before their acknowledgements are awaited. Each publish in flight
/// holds one of the context's in-flight permits until its acknowledgement is awaited, so a
/// request never holds more than this many: a large request, or many at once, cannot take all
/// of them and wait for one of their own.
const CHUNK: usize = 256;

async fn publish_chunk(
    js: &jetstream::Context,
    events: &[NewEvent],
    partition: &impl Fn(&NewEvent) -> Partition,
    published: &mut Vec<Published>,
) -> Result<(), ClusterError> {
    let publish_error = |reason: String| ClusterError::Publish { reason };
    // Send them all first, then wait: one round trip for the chunk, not one per event.
    let mut pending = Vec::with_capacity(events.len());
    for event in events {
        let p = partition(event);
        let payload = serde_json::to_vec(event).map_err(|err| publish_error(err.to_string()))?;
        let id = message_id(event);
        let message = PublishMessage::build()
            .payload(payload.into())
            .header(FORMAT_HEADER, FORMAT_JSON_V1)
            .message_id(&id);
        let ack = js
            .send_publish(event_subject(p), message)
            .await
            .map_err(|err| publish_error(err.to_string()))?;
        pending.push((p, id, ack));
    }
    for (p, id, ack) in pending {
        let ack = ack.await.map_err(|err| publish_error(err.to_string()))?;
        if ack.duplicate {
            confirm_duplicate(js, p, &id, ack.sequence).await?;
        }
        published.push(Published {
            partition: p,
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        });
    }
    Ok(())
}

/// A duplicate is only a success if the stream holds a message with its id at the sequence it
/// names (public for its tests: a 2.14 server does not give a false duplicate on demand).
pub async fn confirm_duplicate(
    js: &jetstream::Context,
    p: Partition,
    id: &str,
    sequence: u64,
) -> Result<(), ClusterError> {
    let not_stored = || ClusterError::DuplicateNotStored {
        partition: p,
        message_id: id.to_owned(),
        sequence,
    };
    if sequence == 0 {
        return Err(not_stored());
    }
    let stream = js
        .get_stream(event_stream(p))
        .await
        .map_err(|err| ClusterError::Publish {
            reason: err.to_string(),
        })?;
    let message = match stream.get_raw_message(sequence).await {
        Ok(message) => message,
        Err(err) if err.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => {
            return Err(not_stored());
        }
        Err(err) => {
            return Err(ClusterError::Publish {
                reason: format!("checking a duplicate at sequence {sequence}: {err}"),
            });
        }
    };
    let stored_id = message
        .headers
        .get(async_nats::header::NATS_MESSAGE_ID)
        .map(|v| v.as_str().to_owned());
    if stored_id.as_deref() == Some(id) {
        Ok(())
    } else {
        Err(not_stored())
    }
}

/// Ingress's [`EventPublisher`] in cluster mode: each event to the partition of its source's
/// partition key's value.
#[derive(Debug, Clone)]
pub struct ClusterPublisher {
    js: jetstream::Context,
    partitions: u16,
    /// Each source's partition key (cluster mode's config refuses a source without one).
    partition_keys: Arc<HashMap<String, String>>,
}

impl ClusterPublisher {
    /// `js` should come from [`ingress_context`]; `partition_keys` maps each source's name to
    /// its partition key.
    pub fn new(
        js: jetstream::Context,
        partitions: u16,
        partition_keys: HashMap<String, String>,
    ) -> ClusterPublisher {
        ClusterPublisher {
            js,
            partitions,
            partition_keys: Arc::new(partition_keys),
        }
    }
}

impl EventPublisher for ClusterPublisher {
    fn publish(&self, events: Vec<NewEvent>) -> PublishFuture {
        let this = self.clone();
        Box::pin(async move {
            let partition = |event: &NewEvent| {
                let key = this
                    .partition_keys
                    .get(&event.source)
                    .map_or("", String::as_str);
                partition_for(event, key, this.partitions)
            };
            publish_counted(&this.js, &events, partition).await
        })
    }
}

/// [`publish_events`], answered as ingress and the engine count it: how many were stored
/// now, how many were there already; any failure is the shared log's unavailability.
pub async fn publish_counted(
    js: &jetstream::Context,
    events: &[NewEvent],
    partition: impl Fn(&NewEvent) -> Partition,
) -> Result<PublishedCounts, PublishError> {
    let published = publish_events(js, events, partition)
        .await
        .map_err(|err| PublishError::Unavailable(err.to_string()))?;
    let duplicates = published.iter().filter(|p| p.duplicate).count();
    Ok(PublishedCounts {
        stored: published.len() - duplicates,
        duplicates,
    })
}
