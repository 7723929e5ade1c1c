//! What `gancho cluster status` shows, read from NATS on any node: the live nodes and their
//! last heartbeat, and for each partition its owner (lease holder), committed cursor, the last
//! event in its stream and how far the cursor trails it, and its last snapshot; the same for the
//! global lane.
//!
//! It only reads. Every read goes to a stream's leader, so a node that just took a partition or
//! committed is shown as such.

use async_nats::jetstream;
use async_nats::jetstream::object_store::ObjectStore;
use chrono::{DateTime, Utc};
use gancho_core::partition::{GLOBAL, Partition, lane_name};
use serde::Serialize;

use crate::error::ClusterError;
use crate::journal::Journal;
use crate::lease::{LEASE_BUCKET, partition_key};
use crate::snapshots::{SnapshotInfo, bucket, latest_in};
use crate::streams::{event_stream, live_entries, read_entry, recorded_partitions};

/// A node whose heartbeat is within the last lease.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub name: String,
    pub last_heartbeat: DateTime<Utc>,
}

/// One partition as its stream, journal and lease show it.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionStatus {
    pub partition: u16,
    /// The node holding its lease, if any.
    pub owner: Option<String>,
    /// The events up to this sequence of its stream are decided.
    pub cursor: u64,
    /// The last event in its stream.
    pub last_event: u64,
    /// Events received and not yet decided.
    pub lag: u64,
    /// The journal's last sequence (each commit is one).
    pub commits: u64,
    /// Its latest snapshot, if it has one.
    pub last_snapshot: Option<SnapshotInfo>,
}

/// The cluster as NATS holds it.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    /// The partition count it was created with; `None`: not created yet (no node has started).
    pub partitions: Option<u16>,
    pub nodes: Vec<NodeStatus>,
    pub partition_status: Vec<PartitionStatus>,
    /// The global lane (its `partition` is [`GLOBAL`]); `None` before a node created it.
    pub global: Option<PartitionStatus>,
}

fn status_error(what: &str, err: impl std::fmt::Display) -> ClusterError {
    ClusterError::Status {
        what: what.to_owned(),
        reason: err.to_string(),
    }
}

/// Reads the cluster's status.
pub async fn cluster_status(js: &jetstream::Context) -> Result<ClusterStatus, ClusterError> {
    let Some(partitions) = recorded_partitions(js).await? else {
        return Ok(ClusterStatus {
            partitions: None,
            nodes: Vec::new(),
            partition_status: Vec::new(),
            global: None,
        });
    };
    let nodes = live_nodes(js).await?;
    // The snapshots' bucket, looked up once for every partition.
    let snapshots = bucket(js, false).await?;
    let lane = |p| lane_status(js, p, nodes.is_empty(), snapshots.as_ref());
    let mut partition_status = Vec::with_capacity(usize::from(partitions));
    for p in 0..partitions {
        partition_status.push(lane(p).await?);
    }
    // A cluster created before the global lane existed has no stream of it until a node of
    // this version starts.
    let global = match js.get_stream(event_stream(GLOBAL)).await {
        Ok(_) => Some(lane(GLOBAL).await?),
        Err(_) => None,
    };
    Ok(ClusterStatus {
        partitions: Some(partitions),
        nodes,
        partition_status,
        global,
    })
}

/// Partition `p`'s status (or the global lane's).
async fn lane_status(
    js: &jetstream::Context,
    p: Partition,
    no_nodes: bool,
    snapshots: Option<&ObjectStore>,
) -> Result<PartitionStatus, ClusterError> {
    let journal = Journal::open(js, p, "status").await?;
    let mut stream = js
        .get_stream(event_stream(p))
        .await
        .map_err(|err| status_error(&event_stream(p), err))?;
    let last_event = stream
        .info()
        .await
        .map_err(|err| status_error(&event_stream(p), err))?
        .state
        .last_sequence;
    let owner = match read_entry(js, LEASE_BUCKET, &partition_key(p)).await {
        Ok(Some(entry)) if !entry.deleted => {
            Some(String::from_utf8_lossy(&entry.value).into_owned())
        }
        Ok(_) => None,
        // No node has opened the leases bucket yet: nobody owns anything.
        Err(_) if no_nodes => None,
        Err(err) => {
            return Err(status_error(
                &format!("lease of partition {}", lane_name(p)),
                err,
            ));
        }
    };
    Ok(PartitionStatus {
        partition: p,
        owner,
        cursor: journal.cursor(),
        last_event,
        lag: last_event.saturating_sub(journal.cursor()),
        commits: journal.last_sequence(),
        last_snapshot: match snapshots {
            Some(store) => latest_in(store, p).await?,
            None => None,
        },
    })
}

/// The `node.*` keys of the leases bucket, with the time of their last write.
async fn live_nodes(js: &jetstream::Context) -> Result<Vec<NodeStatus>, ClusterError> {
    if js.get_key_value(LEASE_BUCKET).await.is_err() {
        return Ok(Vec::new());
    }
    let mut nodes: Vec<NodeStatus> = live_entries(js, LEASE_BUCKET, "node.")
        .await
        .map_err(|err| status_error("the live nodes", err))?
        .into_iter()
        .filter_map(|(key, entry)| {
            Some(NodeStatus {
                name: key.strip_prefix("node.")?.to_owned(),
                last_heartbeat: entry.time,
            })
        })
        .collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(nodes)
}
