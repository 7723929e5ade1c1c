//! Who should own what: node heartbeats and partition leases in a JetStream KV bucket, and
//! rendezvous hashing over the live nodes.
//!
//! The bucket `gancho_leases` keeps its entries for `lease` after their last write (its
//! `max_age`). A node writes `node.<name>` every third of a lease while it runs, so the live
//! nodes are the `node.*` keys present. A partition's lease is `part.<p>` (the global lane's
//! `part.global`), holding its owner's
//! name: taken with a compare-and-set create, renewed with a compare-and-set update on the
//! revision the holder last wrote, released by a delete on that revision. A node that stops
//! renewing (killed, paused, cut off) loses it after `lease`, and another may take it.
//!
//! Leases decide liveness only. Two nodes can both believe they own a partition for a while
//! (a paused one wakes up and has not looked yet); the journal's fence (`journal.rs`) is what
//! keeps the stale one from committing.
//!
//! Which partitions a node should take: rendezvous hashing. Each partition goes to the live
//! node with the highest `xxh3_64(node, partition)`. When a node leaves, only its partitions
//! move; when one joins, it takes about its share from each of the others.

use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::kv;
use xxhash_rust::xxh3::xxh3_64;

use crate::error::ClusterError;
use crate::streams::REPLICAS;
use gancho_core::partition::Partition;

/// The bucket of node heartbeats and partition leases.
pub const LEASE_BUCKET: &str = "gancho_leases";

fn node_key(node: &str) -> String {
    format!("node.{node}")
}

/// The key of partition `p`'s lease (the global lane's: `part.global`).
pub(crate) fn partition_key(p: Partition) -> String {
    format!("part.{}", gancho_core::partition::lane_name(p))
}

/// Whether `err` (or an error under it) is a compare-and-set the server refused because
/// another write of the same key was in flight: a clustered stream answers "wrong last
/// sequence" without a sequence (code 10164), or that it cannot check yet (10163). async-nats
/// 0.51 maps only code 10071 to its "wrong last revision" kinds, so these arrive as other
/// errors. Either way nothing was written. For a node taking a free lease that means another
/// node is taking it (`acquire`); a renewal or a release so refused is an error and is tried
/// again (the key still names this node).
fn lost_to_concurrent_write(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(err) = next {
        if let Some(refusal) = err.downcast_ref::<jetstream::Error>() {
            let code = refusal.error_code();
            if code == jetstream::ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT
                || code == jetstream::ErrorCode::STREAM_EXPECTED_LAST_SEQ_PER_SUBJECT_NOT_READY
            {
                return true;
            }
        }
        next = err.source();
    }
    false
}

/// The live node that should own partition `p`, among `nodes` (`None` if there are none).
pub fn rendezvous_owner(p: Partition, nodes: &[String]) -> Option<&str> {
    nodes
        .iter()
        .max_by_key(|node| {
            let mut key = Vec::with_capacity(node.len() + 3);
            key.extend_from_slice(node.as_bytes());
            key.push(0);
            key.extend_from_slice(&p.to_be_bytes());
            (xxh3_64(&key), node.as_str())
        })
        .map(String::as_str)
}

/// A lease this node holds: the revision it last wrote, which its renewal must name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub partition: Partition,
    pub revision: u64,
}

/// The leases bucket, as one node uses it.
#[derive(Debug, Clone)]
pub struct Leases {
    js: jetstream::Context,
    store: kv::Store,
    node: String,
}

fn lease_error(what: impl Into<String>, err: impl std::fmt::Display) -> ClusterError {
    ClusterError::Lease {
        what: what.into(),
        reason: err.to_string(),
    }
}

impl Leases {
    /// Opens the bucket, creating it with `lease` as its entries' lifetime if it is not there.
    /// A bucket made with another lease is refused: nodes must agree on when a lease ends.
    pub async fn open(
        js: &jetstream::Context,
        node: &str,
        lease: Duration,
    ) -> Result<Leases, ClusterError> {
        crate::streams::settled(|| Leases::open_once(js, node, lease)).await
    }

    async fn open_once(
        js: &jetstream::Context,
        node: &str,
        lease: Duration,
    ) -> Result<Leases, ClusterError> {
        // An existing bucket is used as it is (its lease checked below); creating one with a
        // config other than the existing one's would fail with a less useful message.
        let store = match js.get_key_value(LEASE_BUCKET).await {
            Ok(store) => store,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: LEASE_BUCKET.to_owned(),
                    description: "gancho: node heartbeats and partition leases".to_owned(),
                    history: 1,
                    max_age: lease,
                    num_replicas: REPLICAS,
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|err| lease_error(format!("bucket {LEASE_BUCKET}"), err))?,
        };
        let status = store
            .status()
            .await
            .map_err(|err| lease_error(format!("bucket {LEASE_BUCKET}"), err))?;
        crate::streams::check_durable(js, &format!("KV_{LEASE_BUCKET}")).await?;
        let recorded = status.info.config.max_age;
        if recorded != lease {
            return Err(ClusterError::LeaseChanged {
                configured: lease,
                recorded,
            });
        }
        Ok(Leases {
            js: js.clone(),
            store,
            node: node.to_owned(),
        })
    }

    /// Says this node is alive, for another `lease`.
    pub async fn heartbeat(&self) -> Result<(), ClusterError> {
        self.store
            .put(node_key(&self.node), self.node.clone().into())
            .await
            .map(drop)
            .map_err(|err| lease_error(format!("heartbeat of {}", self.node), err))
    }

    /// The nodes whose heartbeat is within the last `lease`, sorted.
    pub async fn live_nodes(&self) -> Result<Vec<String>, ClusterError> {
        let entries = crate::streams::live_entries(&self.js, LEASE_BUCKET, "node.")
            .await
            .map_err(|err| lease_error("the live nodes", err))?;
        Ok(entries
            .into_iter()
            .filter_map(|(key, _)| key.strip_prefix("node.").map(str::to_owned))
            .collect())
    }

    /// Takes partition `p`'s lease if nobody holds it; `None` if somebody does (or took it
    /// at the same moment). The key is read from the bucket's leader: absent (never taken, or
    /// expired) it is created, released (a delete marker) it is written on the marker's
    /// revision; both are compare-and-set, so of two nodes trying at once one gets it.
    pub async fn acquire(&self, p: Partition) -> Result<Option<Lease>, ClusterError> {
        let key = partition_key(p);
        let what = || format!("lease of partition {p}");
        let entry = crate::streams::read_entry(&self.js, LEASE_BUCKET, &key)
            .await
            .map_err(|err| lease_error(what(), err))?;
        let written = match entry {
            // Ours already: an earlier attempt was written, but its answer was lost.
            Some(entry) if !entry.deleted && entry.value == self.node.as_bytes() => {
                return Ok(Some(Lease {
                    partition: p,
                    revision: entry.revision,
                }));
            }
            Some(entry) if !entry.deleted => return Ok(None),
            Some(marker) => self
                .store
                .update(&key, self.node.clone().into(), marker.revision)
                .await
                .map_err(|err| match err.kind() {
                    kv::UpdateErrorKind::WrongLastRevision => None,
                    _ if lost_to_concurrent_write(&err) => None,
                    _ => Some(lease_error(what(), err)),
                }),
            None => self
                .store
                .create(&key, self.node.clone().into())
                .await
                .map_err(|err| match err.kind() {
                    kv::CreateErrorKind::AlreadyExists => None,
                    _ if lost_to_concurrent_write(&err) => None,
                    _ => Some(lease_error(what(), err)),
                }),
        };
        match written {
            Ok(revision) => Ok(Some(Lease {
                partition: p,
                revision,
            })),
            Err(None) => Ok(None),
            Err(Some(err)) => Err(err),
        }
    }

    /// Renews `lease` for another `lease` duration; `false` if it was lost (it expired and
    /// another node took it, or it was released).
    pub async fn renew(&self, lease: &mut Lease) -> Result<bool, ClusterError> {
        match self
            .store
            .update(
                partition_key(lease.partition),
                self.node.clone().into(),
                lease.revision,
            )
            .await
        {
            Ok(revision) => {
                lease.revision = revision;
                Ok(true)
            }
            // A refusal for a write in flight (10164) or a check not ready (10163) wrote
            // nothing, and the key still names this node: an error for this tick, not a loss
            // (were the lease another's, the next renewal hears "wrong last revision").
            Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
            Err(err) => Err(lease_error(
                format!("renewal of partition {}", lease.partition),
                err,
            )),
        }
    }

    /// Gives `lease` up (a graceful handover, after the final commit); nothing if it was lost.
    pub async fn release(&self, lease: Lease) -> Result<(), ClusterError> {
        match self
            .store
            .delete_expect_revision(partition_key(lease.partition), Some(lease.revision))
            .await
        {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == kv::DeleteErrorKind::WrongLastRevision => Ok(()),
            Err(err) => Err(lease_error(
                format!("release of partition {}", lease.partition),
                err,
            )),
        }
    }

    /// The node holding partition `p`'s lease, if any.
    pub async fn holder(&self, p: Partition) -> Result<Option<String>, ClusterError> {
        let value = crate::streams::read_key(&self.js, LEASE_BUCKET, &partition_key(p))
            .await
            .map_err(|err| lease_error(format!("lease of partition {p}"), err))?;
        Ok(value.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn every_partition_has_one_owner_and_the_share_is_fair() {
        let three = nodes(&["a", "b", "c"]);
        let mut counts = std::collections::BTreeMap::new();
        for p in 0..3000u16 {
            *counts
                .entry(rendezvous_owner(p, &three).unwrap())
                .or_insert(0) += 1;
        }
        for (node, n) in &counts {
            assert!((850..1150).contains(n), "{node}: {n} of 3000");
        }
        assert_eq!(rendezvous_owner(0, &[]), None);
    }

    #[test]
    fn a_node_leaving_moves_only_its_partitions_and_one_joining_takes_a_share() {
        let three = nodes(&["a", "b", "c"]);
        let two = nodes(&["a", "c"]);
        let four = nodes(&["a", "b", "c", "d"]);
        let mut taken_by_d = 0;
        for p in 0..1000u16 {
            let before = rendezvous_owner(p, &three).unwrap();
            let after = rendezvous_owner(p, &two).unwrap();
            if before != "b" {
                assert_eq!(before, after, "partition {p} moved though its owner stayed");
            }
            let joined = rendezvous_owner(p, &four).unwrap();
            if joined == "d" {
                taken_by_d += 1;
            } else {
                assert_eq!(joined, before, "partition {p} moved between staying nodes");
            }
        }
        assert!(
            (180..320).contains(&taken_by_d),
            "d took {taken_by_d} of 1000"
        );
    }
}
