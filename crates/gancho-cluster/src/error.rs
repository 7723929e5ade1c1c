//! What can keep a node from running in a cluster.

/// Why cluster mode cannot start or go on. Each message names the server or key at fault and
/// what to change.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "nats-server {server} is version {version}; gancho needs 2.14.0 or later (earlier servers \
         acknowledge before fsync, get KV compare-and-set wrong under concurrent writers, or \
         answer \"duplicate\" for a message a stream does not hold after a leader change)"
    )]
    TooOld { server: String, version: String },
    #[error("nats-server {server} does not run JetStream: add a jetstream block to its config")]
    NoJetStream { server: String },
    #[error(
        "nats-server {server} has no file storage for JetStream: give its jetstream block a \
         store_dir and a max_file_store above 0"
    )]
    NoFileStorage { server: String },
    #[error(
        "nats-server {server} acknowledges writes before syncing them to disk: set \
         `sync_interval: always` in its jetstream block (a power loss would otherwise lose \
         acknowledged events)"
    )]
    NotSyncAlways { server: String },
    #[error(
        "the JetStream cluster has {cluster_size} servers, but [cluster] monitor reaches \
         {checked}: list every server's monitoring endpoint, so that each one's version and sync \
         setting is checked (any of them may hold replicas)"
    )]
    UncheckedServers { checked: usize, cluster_size: usize },
    #[error(
        "cannot read the monitoring endpoint {endpoint}: {reason} (gancho reads each server's \
         version and JetStream settings from /varz at start; list the servers' monitoring \
         endpoints in [cluster] monitor and let the gancho nodes reach them)"
    )]
    Monitor { endpoint: String, reason: String },
    #[error("cannot connect to NATS at {servers}: {reason}")]
    Connect { servers: String, reason: String },
    #[error("the NATS account has no JetStream: {reason}")]
    NoJetStreamAccount { reason: String },
    #[error("cannot create {what} in JetStream: {reason}")]
    Provision { what: String, reason: String },
    #[error(
        "[cluster] partitions = {configured}, but the cluster was created with {recorded}: every \
         stored event's partition depends on the count, so it cannot change (set partitions = \
         {recorded})"
    )]
    PartitionsChanged { configured: u16, recorded: u16 },
    #[error(
        "partition {partition}: node {node}'s journal write was refused (the journal moved past \
         sequence {expected}): another node owns the partition now, and this one drops it"
    )]
    Fenced {
        partition: u16,
        node: String,
        expected: u64,
    },
    #[error("the journal of partition {partition}: {reason}")]
    Journal { partition: u16, reason: String },
    #[error("{what}: {reason}")]
    Lease { what: String, reason: String },
    #[error("reading the cluster's status ({what}): {reason}")]
    Status { what: String, reason: String },
    #[error("reading partition {partition}'s events: {reason}")]
    Read { partition: u16, reason: String },
    #[error("partition {partition}'s message {sequence} is not an event gancho can read: {reason}")]
    Undecodable {
        partition: u16,
        sequence: u64,
        reason: String,
    },
    #[error(
        "[cluster] lease = {configured:?}, but the cluster's leases last {recorded:?}: every \
         node must agree on when a lease ends (set lease to the cluster's)"
    )]
    LeaseChanged {
        configured: std::time::Duration,
        recorded: std::time::Duration,
    },
    #[error(
        "{name} exists with {replicas} replica(s) on {storage} storage; gancho needs 3 replicas \
         on file storage, or it could lose acknowledged events: delete it or fix it"
    )]
    NotDurable {
        name: String,
        replicas: usize,
        storage: String,
    },
    #[error("the snapshot of partition {partition}: {reason}")]
    Snapshot { partition: u16, reason: String },
    /// The journal no longer holds the messages after a database's position: they were trimmed
    /// below a snapshot, which must be restored first.
    #[error(
        "the journal of partition {partition} starts at message {first}, after this database's \
         position {position}: restore the partition's snapshot first"
    )]
    Trimmed {
        partition: u16,
        first: u64,
        position: u64,
    },
    #[error("publishing to JetStream failed: {reason}")]
    Publish { reason: String },
    #[error(
        "JetStream answered \"duplicate\" (sequence {sequence}) for message {message_id} of \
         partition {partition}, but the stream does not hold it there: not acknowledged"
    )]
    DuplicateNotStored {
        partition: u16,
        message_id: String,
        sequence: u64,
    },
}
