//! Cluster mode on NATS JetStream: the `[cluster]` section, how events are spread over
//! partitions, and the checks a NATS deployment must pass before a node runs on it.
//!
//! It owns everything a node says to NATS. It must not decide anything about events (the engine
//! does) nor touch the local store: the log, the engine's state and the outbox stay in their
//! crates, and single-node mode (no `[cluster]`) never loads this crate's client at all. This
//! is the first step of issue 17; `docs/cluster.md` says what works today and what is to come.

mod config;
mod error;
mod gate;
mod journal;
mod lease;
mod membership;
mod publish;
mod reader;
mod secret;
mod snapshots;
mod status;
mod streams;

pub use config::{
    ClusterConfig, ClusterSection, DEFAULT_LEASE, DEFAULT_MONITOR_PORT, DEFAULT_PARTITIONS,
    MAX_PARTITIONS, NatsAuth,
};
pub use error::ClusterError;
pub use gancho_core::partition::{GLOBAL, Partition, lane_name, partition_of};
pub use gate::{
    MIN_SERVER, ServerReport, check_servers, connect, parse_cluster_size, parse_varz,
    version_meets_floor,
};
pub use journal::{CURSOR_HEADER, Journal, NODE_HEADER, read_journal};
pub use lease::{LEASE_BUCKET, Lease, Leases, rendezvous_owner};
pub use membership::{Changes, Membership, TickError};
pub use publish::{
    ClusterPublisher, FORMAT_HEADER, FORMAT_JSON_V1, Published, confirm_duplicate, ingress_context,
    message_id, partition_for, publish_counted, publish_events,
};
pub use reader::PartitionReader;
pub use secret::{SECRET_KEY, cluster_secret, partition_secret};
pub use snapshots::{
    SNAPSHOT_BUCKET, SnapshotInfo, fetch_snapshot, latest_snapshot, purge_events, put_snapshot,
    trim_journal,
};
pub use status::{ClusterStatus, NodeStatus, PartitionStatus, cluster_status};
pub use streams::{
    DUPLICATE_WINDOW, META_BUCKET, PARTITIONS_KEY, REPLICAS, create_streams, event_stream,
    event_subject, fix_partitions, journal_stream, journal_subject, recorded_partitions,
};
