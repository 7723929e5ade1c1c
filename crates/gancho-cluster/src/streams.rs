//! What a cluster keeps in JetStream, and creating it: the cluster's own record (the partition
//! count it was created with), and per partition an event stream and a decision journal.
//!
//! Names (a stored format, like the partition hash):
//! - KV bucket `gancho_cluster`, key `partitions`: the count, as decimal text, written once by
//!   whichever node creates the cluster first (a compare-and-set create, so two nodes starting
//!   at once cannot record two counts);
//! - stream `GANCHO_EV_<p>` on subject `gancho.ev.<p>`: partition `p`'s events;
//! - stream `GANCHO_J_<p>` on subject `gancho.j.<p>`: partition `p`'s decision journal;
//! - stream `GANCHO_ALL`: the global lane's events. It sources every `GANCHO_EV_<p>` (each
//!   partition's events, in the order the sourcing delivers them: one order every owner of
//!   the lane reads), and takes the lane's own events (its timer firings and cron ticks) on
//!   subject `gancho.all`;
//! - stream `GANCHO_J_GLOBAL` on subject `gancho.j.global`: the global lane's journal.
//!
//! Every stream and the bucket are replicated [`REPLICAS`] times on file storage. A stream that
//! exists already is used as it is (creating is idempotent), so nodes may start in any order.

use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::kv;
use async_nats::jetstream::stream::{Config as StreamConfig, Source, StorageType};
use futures_util::StreamExt as _;

use crate::error::ClusterError;
use gancho_core::partition::{GLOBAL, Partition};

/// Replicas of every stream and bucket: a write is acknowledged once two of three servers
/// hold it, so one server may be lost (or restarted) at any time.
pub const REPLICAS: usize = 3;
/// The bucket of the cluster's own record.
pub const META_BUCKET: &str = "gancho_cluster";
/// The key of the partition count in [`META_BUCKET`].
pub const PARTITIONS_KEY: &str = "partitions";
/// How long JetStream remembers a message id to drop a repeat of it. A provider's retry that
/// comes later is still stored once: the partition's owner deduplicates by event id as a
/// single node does.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(10 * 60);

/// Partition `p`'s event stream ([`GLOBAL`]: the global lane's).
pub fn event_stream(p: Partition) -> String {
    if p == GLOBAL {
        "GANCHO_ALL".to_owned()
    } else {
        format!("GANCHO_EV_{p}")
    }
}

/// The subject partition `p`'s events are published on ([`GLOBAL`]: the global lane's own
/// events; the partitions' come to it by sourcing).
pub fn event_subject(p: Partition) -> String {
    if p == GLOBAL {
        "gancho.all".to_owned()
    } else {
        format!("gancho.ev.{p}")
    }
}

/// Partition `p`'s decision journal ([`GLOBAL`]: the global lane's).
pub fn journal_stream(p: Partition) -> String {
    if p == GLOBAL {
        "GANCHO_J_GLOBAL".to_owned()
    } else {
        format!("GANCHO_J_{p}")
    }
}

/// The subject partition `p`'s decisions are journaled on.
pub fn journal_subject(p: Partition) -> String {
    if p == GLOBAL {
        "gancho.j.global".to_owned()
    } else {
        format!("gancho.j.{p}")
    }
}

pub(crate) fn provision_error(
    what: impl Into<String>,
    err: impl std::fmt::Display,
) -> ClusterError {
    ClusterError::Provision {
        what: what.into(),
        reason: err.to_string(),
    }
}

/// A key's last entry in a KV bucket, as the bucket's stream leader has it.
#[derive(Debug)]
pub(crate) struct KeyEntry {
    pub(crate) value: bytes::Bytes,
    /// Its revision (the stream sequence of the entry), which a compare-and-set names.
    pub(crate) revision: u64,
    /// A delete or purge marker, not a value.
    pub(crate) deleted: bool,
    /// When it was written.
    pub(crate) time: chrono::DateTime<chrono::Utc>,
}

/// A key's last entry in a KV bucket as the bucket's stream leader has it (`None`: no entry, or
/// it expired). The KV client's own reads may be answered by any replica (JetStream's direct
/// get), which can lag behind a write just acknowledged: a lease holder or a deletion read from
/// a lagging replica would be wrong.
pub(crate) async fn read_entry(
    js: &jetstream::Context,
    bucket: &str,
    key: &str,
) -> Result<Option<KeyEntry>, String> {
    let stream = js
        .get_stream(format!("KV_{bucket}"))
        .await
        .map_err(|err| err.to_string())?;
    match stream
        .get_last_raw_message_by_subject(&format!("$KV.{bucket}.{key}"))
        .await
    {
        Ok(message) => Ok(Some(KeyEntry {
            deleted: message
                .headers
                .get("KV-Operation")
                .is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE")),
            revision: message.sequence,
            time: message.time,
            value: message.payload,
        })),
        Err(err) if err.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
            Ok(None)
        }
        Err(err) => Err(err.to_string()),
    }
}

/// The keys under `prefix` (say `node.`) of a KV bucket that hold a value, with their last
/// entries, sorted by key; expired keys are gone and deleted ones are skipped. Read from the
/// stream leader (the stream's subject list, then each key's last entry), not through the KV
/// client's key listing: that one starts a consumer, which on a bucket created moments ago can
/// wait for a leader election past any deadline.
pub(crate) async fn live_entries(
    js: &jetstream::Context,
    bucket: &str,
    prefix: &str,
) -> Result<Vec<(String, KeyEntry)>, String> {
    let stream = js
        .get_stream(format!("KV_{bucket}"))
        .await
        .map_err(|err| err.to_string())?;
    let subject_prefix = format!("$KV.{bucket}.");
    let mut subjects = stream
        .info_with_subjects(format!("{subject_prefix}{prefix}>"))
        .await
        .map_err(|err| err.to_string())?;
    let mut keys = Vec::new();
    while let Some(subject) = subjects.next().await {
        let (subject, _count) = subject.map_err(|err| err.to_string())?;
        if let Some(key) = subject.strip_prefix(&subject_prefix) {
            keys.push(key.to_owned());
        }
    }
    keys.sort();
    let mut live = Vec::with_capacity(keys.len());
    for key in keys {
        if let Some(entry) = read_entry(js, bucket, &key).await?
            && !entry.deleted
        {
            live.push((key, entry));
        }
    }
    Ok(live)
}

/// A key's value as the stream leader has it (`None`: absent, expired or deleted).
pub(crate) async fn read_key(
    js: &jetstream::Context,
    bucket: &str,
    key: &str,
) -> Result<Option<bytes::Bytes>, String> {
    let entry = read_entry(js, bucket, key).await?;
    Ok(entry.filter(|e| !e.deleted).map(|e| e.value))
}

/// The partition count the cluster was created with, if it has been.
pub async fn recorded_partitions(js: &jetstream::Context) -> Result<Option<u16>, ClusterError> {
    // A bucket is the stream `KV_<bucket>`: not found means the cluster was never created.
    match js.get_stream(format!("KV_{META_BUCKET}")).await {
        Ok(_) => {}
        Err(err)
            if matches!(err.kind(), jetstream::context::GetStreamErrorKind::JetStream(e)
                if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            return Ok(None);
        }
        Err(err) => return Err(provision_error(format!("bucket {META_BUCKET}"), err)),
    }
    let value = read_key(js, META_BUCKET, PARTITIONS_KEY)
        .await
        .map_err(|err| provision_error(format!("{META_BUCKET}.{PARTITIONS_KEY}"), err))?;
    value.map(|bytes| parse_count(&bytes)).transpose()
}

fn parse_count(bytes: &[u8]) -> Result<u16, ClusterError> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| {
            provision_error(
                format!("{META_BUCKET}.{PARTITIONS_KEY}"),
                format!(
                    "{:?} is not a partition count",
                    String::from_utf8_lossy(bytes)
                ),
            )
        })
}

/// How long creating the cluster's buckets and streams (and a reader's consumer) is retried:
/// right after one is created, or a server restarts, a leader may not be elected yet, and
/// JetStream times out or answers "no responders".
const SETTLE: Duration = Duration::from_secs(15);

/// Runs `step` until it succeeds, fails for good (the cluster was made with another partition count or lease), or
/// [`SETTLE`] has passed. Every step is idempotent (a create that did happen is found the next
/// time), so repeating one is safe.
pub(crate) async fn settled<T, F, Fut>(mut step: F) -> Result<T, ClusterError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClusterError>>,
{
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        match step().await {
            Ok(value) => return Ok(value),
            Err(
                err @ (ClusterError::PartitionsChanged { .. }
                | ClusterError::LeaseChanged { .. }
                | ClusterError::NotDurable { .. }),
            ) => {
                return Err(err);
            }
            Err(err) if tokio::time::Instant::now() >= deadline => return Err(err),
            Err(err) => {
                tracing::debug!(error = %err, "JetStream not settled yet; trying again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Records `partitions` as the cluster's count if none is recorded yet, and refuses a count
/// other than the recorded one: the partition of every stored event depends on it.
pub async fn fix_partitions(js: &jetstream::Context, partitions: u16) -> Result<(), ClusterError> {
    settled(|| fix_partitions_once(js, partitions)).await
}

async fn fix_partitions_once(js: &jetstream::Context, partitions: u16) -> Result<(), ClusterError> {
    let store = match js.get_key_value(META_BUCKET).await {
        Ok(store) => store,
        Err(_) => js
            .create_key_value(kv::Config {
                bucket: META_BUCKET.to_owned(),
                description: "gancho: the cluster's own record".to_owned(),
                history: 1,
                num_replicas: REPLICAS,
                storage: StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|err| provision_error(format!("bucket {META_BUCKET}"), err))?,
    };
    check_durable(js, &format!("KV_{META_BUCKET}")).await?;
    match store
        .create(PARTITIONS_KEY, partitions.to_string().into())
        .await
    {
        Ok(_) => Ok(()),
        Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => {
            let value = read_key(js, META_BUCKET, PARTITIONS_KEY)
                .await
                .map_err(|err| provision_error(format!("{META_BUCKET}.{PARTITIONS_KEY}"), err))?
                .ok_or_else(|| {
                    provision_error(
                        format!("{META_BUCKET}.{PARTITIONS_KEY}"),
                        "exists but has no value",
                    )
                })?;
            let recorded = parse_count(&value)?;
            if recorded == partitions {
                Ok(())
            } else {
                Err(ClusterError::PartitionsChanged {
                    configured: partitions,
                    recorded,
                })
            }
        }
        Err(err) => Err(provision_error(
            format!("{META_BUCKET}.{PARTITIONS_KEY}"),
            err,
        )),
    }
}

/// Creates (or finds) every partition's event stream and journal.
pub async fn create_streams(js: &jetstream::Context, partitions: u16) -> Result<(), ClusterError> {
    settled(|| create_streams_once(js, partitions)).await
}

async fn create_streams_once(js: &jetstream::Context, partitions: u16) -> Result<(), ClusterError> {
    // The partitions' streams first: the global lane's sources them.
    for p in (0..partitions).chain([GLOBAL]) {
        let (events, decisions) = if p == GLOBAL {
            (
                "gancho: the global lane's events",
                "gancho: the global lane's decisions",
            )
        } else {
            (
                "gancho: a partition's events",
                "gancho: a partition's decisions",
            )
        };
        let sources = (p == GLOBAL).then(|| {
            (0..partitions)
                .map(|source| Source {
                    name: event_stream(source),
                    ..Default::default()
                })
                .collect::<Vec<_>>()
        });
        for (name, subject, description, sources) in [
            (event_stream(p), event_subject(p), events, sources),
            (journal_stream(p), journal_subject(p), decisions, None),
        ] {
            let stream = js
                .get_or_create_stream(StreamConfig {
                    name: name.clone(),
                    description: Some(description.to_owned()),
                    subjects: vec![subject],
                    num_replicas: REPLICAS,
                    storage: StorageType::File,
                    duplicate_window: DUPLICATE_WINDOW,
                    sources,
                    ..Default::default()
                })
                .await
                .map_err(|err| provision_error(format!("stream {name}"), err))?;
            let info = stream.cached_info();
            durable_enough(&name, info.config.num_replicas, info.config.storage)?;
            // A stream without a leader yet takes no publish ("no stream found for given
            // subject"): not created until it has one (`settled` asks again).
            if info
                .cluster
                .as_ref()
                .and_then(|c| c.leader.as_ref())
                .is_none()
            {
                return Err(provision_error(
                    format!("stream {name}"),
                    "no leader elected yet",
                ));
            }
        }
    }
    Ok(())
}

/// A stream or bucket made before (by hand, or by another tool) is used as it is only if it
/// keeps what gancho acknowledges: [`REPLICAS`] replicas on file storage.
fn durable_enough(name: &str, replicas: usize, storage: StorageType) -> Result<(), ClusterError> {
    if replicas == REPLICAS && storage == StorageType::File {
        Ok(())
    } else {
        Err(ClusterError::NotDurable {
            name: name.to_owned(),
            replicas,
            storage: format!("{storage:?}").to_lowercase(),
        })
    }
}

/// [`durable_enough`] for the stream `name`, read from the server.
pub(crate) async fn check_durable(js: &jetstream::Context, name: &str) -> Result<(), ClusterError> {
    let mut stream = js
        .get_stream(name)
        .await
        .map_err(|err| provision_error(name, err))?;
    let info = stream
        .info()
        .await
        .map_err(|err| provision_error(name, err))?;
    durable_enough(name, info.config.num_replicas, info.config.storage)
}
