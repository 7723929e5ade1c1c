//! Snapshots of partitions' engine databases in the JetStream object store, and each journal
//! trimmed below them, so that a node new to a partition restores a snapshot and replays the
//! journal's tail instead of the whole journal.
//!
//! The bucket `gancho_snapshots` (replicated [`REPLICAS`] times on file storage) holds one object
//! per partition, named as `gancho cluster status` names the partition (`0`, `1`…, `global`),
//! replaced by each new snapshot. Its metadata says which journal message the snapshot is up to
//! (`journal_seq`) and the cursor it leaves the engine at (`cursor`). The file itself is the
//! engine state's own format (`gancho_state::restore_snapshot` checks it whole).
//!
//! Trimming keeps the journal from the message after the *previous* snapshot: a node that read
//! the previous snapshot's description just before it was replaced can still replay from it.

use std::path::Path;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::object_store::{self, ObjectMetadata, ObjectStore};
use async_nats::jetstream::stream::StorageType;
use chrono::{DateTime, Utc};
use gancho_core::partition::{Partition, lane_name};
use serde::Serialize;
use tokio::io::AsyncWriteExt as _;

use crate::error::ClusterError;
use crate::streams::{REPLICAS, check_durable, journal_stream, settled};

/// The object store bucket of the partitions' snapshots.
pub const SNAPSHOT_BUCKET: &str = "gancho_snapshots";
const JOURNAL_SEQ: &str = "journal_seq";
const CURSOR: &str = "cursor";
/// How long reading or writing a snapshot may take before it is given up (and tried again).
const TRANSFER: Duration = Duration::from_secs(300);

/// A partition's snapshot, as the object store describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotInfo {
    /// The journal message it is up to: the partition's decisions in the journal up to this
    /// message are in it.
    pub journal_seq: u64,
    /// The cursor it leaves the engine at.
    pub cursor: u64,
    /// Its size in bytes.
    pub size: u64,
    /// When it was written.
    pub time: Option<DateTime<Utc>>,
}

fn snapshot_error(partition: Partition, reason: impl std::fmt::Display) -> ClusterError {
    ClusterError::Snapshot {
        partition,
        reason: reason.to_string(),
    }
}

impl SnapshotInfo {
    fn of(partition: Partition, info: &object_store::ObjectInfo) -> Result<Self, ClusterError> {
        let number = |key: &str| {
            info.metadata
                .get(key)
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| snapshot_error(partition, format!("its metadata lacks {key}")))
        };
        Ok(SnapshotInfo {
            journal_seq: number(JOURNAL_SEQ)?,
            cursor: number(CURSOR)?,
            size: info.size as u64,
            time: info.modified.map(|t| t.with_timezone(&Utc)),
        })
    }
}

/// The snapshots' bucket; created if `create` and missing (`None` if missing otherwise).
pub(crate) async fn bucket(
    js: &jetstream::Context,
    create: bool,
) -> Result<Option<ObjectStore>, ClusterError> {
    let provision = |err: &dyn std::fmt::Display| ClusterError::Provision {
        what: format!("bucket {SNAPSHOT_BUCKET}"),
        reason: err.to_string(),
    };
    let stream = format!("OBJ_{SNAPSHOT_BUCKET}");
    if let Ok(store) = js.get_object_store(SNAPSHOT_BUCKET).await {
        check_durable(js, &stream).await?;
        return Ok(Some(store));
    }
    if !create {
        return Ok(None);
    }
    let store = settled(|| async {
        js.create_object_store(object_store::Config {
            bucket: SNAPSHOT_BUCKET.to_owned(),
            description: Some("gancho: the partitions' engine snapshots".to_owned()),
            num_replicas: REPLICAS,
            storage: StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|err| provision(&err))
    })
    .await?;
    check_durable(js, &stream).await?;
    Ok(Some(store))
}

/// Stores the snapshot in `file` as partition `partition`'s, replacing the one before.
pub async fn put_snapshot(
    js: &jetstream::Context,
    partition: Partition,
    file: &Path,
    journal_seq: u64,
    cursor: u64,
) -> Result<SnapshotInfo, ClusterError> {
    let error = |reason: &dyn std::fmt::Display| snapshot_error(partition, reason);
    let Some(store) = bucket(js, true).await? else {
        return Err(error(&"no bucket"));
    };
    let mut input = tokio::fs::File::open(file).await.map_err(|e| error(&e))?;
    let meta = ObjectMetadata {
        name: lane_name(partition),
        description: Some(format!("partition {}'s engine", lane_name(partition))),
        metadata: [
            (JOURNAL_SEQ.to_owned(), journal_seq.to_string()),
            (CURSOR.to_owned(), cursor.to_string()),
        ]
        .into(),
        ..Default::default()
    };
    let info = tokio::time::timeout(TRANSFER, store.put(meta, &mut input))
        .await
        .map_err(|_| error(&"storing it timed out"))?
        .map_err(|e| error(&e))?;
    SnapshotInfo::of(partition, &info)
}

/// Partition `partition`'s latest snapshot, if it has one.
pub async fn latest_snapshot(
    js: &jetstream::Context,
    partition: Partition,
) -> Result<Option<SnapshotInfo>, ClusterError> {
    match bucket(js, false).await? {
        Some(store) => latest_in(&store, partition).await,
        None => Ok(None),
    }
}

/// [`latest_snapshot`] in the bucket `store`.
pub(crate) async fn latest_in(
    store: &ObjectStore,
    partition: Partition,
) -> Result<Option<SnapshotInfo>, ClusterError> {
    match store.info(lane_name(partition)).await {
        Ok(info) if !info.deleted => SnapshotInfo::of(partition, &info).map(Some),
        Ok(_) => Ok(None),
        Err(err) if err.kind() == object_store::InfoErrorKind::NotFound => Ok(None),
        Err(err) => Err(snapshot_error(partition, err)),
    }
}

/// Writes partition `partition`'s latest snapshot to the file `to`; its description, or
/// `None` if it has none. The object store checks the content's SHA-256 as it reads.
pub async fn fetch_snapshot(
    js: &jetstream::Context,
    partition: Partition,
    to: &Path,
) -> Result<Option<SnapshotInfo>, ClusterError> {
    let error = |reason: &dyn std::fmt::Display| snapshot_error(partition, reason);
    let Some(store) = bucket(js, false).await? else {
        return Ok(None);
    };
    let mut object = match store.get(lane_name(partition)).await {
        Ok(object) => object,
        Err(err) if err.kind() == object_store::GetErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(error(&err)),
    };
    let info = SnapshotInfo::of(partition, &object.info)?;
    let mut output = tokio::fs::File::create(to).await.map_err(|e| error(&e))?;
    tokio::time::timeout(TRANSFER, tokio::io::copy(&mut object, &mut output))
        .await
        .map_err(|_| error(&"reading it timed out"))?
        .map_err(|e| error(&e))?;
    output.flush().await.map_err(|e| error(&e))?;
    Ok(Some(info))
}

/// Removes partition `partition`'s events below `keep_from` from its stream (the global
/// lane's: from `GANCHO_ALL`), once its owner's log has pruned them past their retention.
/// Returns how many went.
pub async fn purge_events(
    js: &jetstream::Context,
    partition: Partition,
    keep_from: u64,
) -> Result<u64, ClusterError> {
    purge_below(js, &crate::streams::event_stream(partition), keep_from)
        .await
        .map_err(|reason| ClusterError::Read {
            partition,
            reason: format!("purging its stream below {keep_from}: {reason}"),
        })
}

/// Removes partition `partition`'s journal messages below `keep_from` (decisions a snapshot
/// holds). Returns how many went.
pub async fn trim_journal(
    js: &jetstream::Context,
    partition: Partition,
    keep_from: u64,
) -> Result<u64, ClusterError> {
    purge_below(js, &journal_stream(partition), keep_from)
        .await
        .map_err(|reason| ClusterError::Journal {
            partition,
            reason: format!("trimming it: {reason}"),
        })
}

/// Removes stream `name`'s messages below `keep_from`; returns how many went.
async fn purge_below(js: &jetstream::Context, name: &str, keep_from: u64) -> Result<u64, String> {
    let stream = js.get_stream(name).await.map_err(|e| e.to_string())?;
    let purged = stream
        .purge()
        .sequence(keep_from)
        .await
        .map_err(|e| e.to_string())?;
    Ok(purged.purged)
}
