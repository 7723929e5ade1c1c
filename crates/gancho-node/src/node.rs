//! A node's loop: its membership of the cluster (heartbeat, leases, rendezvous hashing) and the
//! partitions it runs. Each tick (a third of the lease) it stops the partitions that must stop
//! (a refused commit, a store failure: given up so they can be taken again), those whose lease
//! was lost (at once), hands over those a joining node should own (the owner's stop makes its
//! final commit, then the lease is released so the new owner need not wait), and starts those
//! it gained. A graceful stop hands every partition over the same way.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use gancho_cluster::{ClusterError, GLOBAL, Membership, Partition, lane_name};
use gancho_core::Clock;
use tokio::sync::watch;

use crate::{OwnerConfig, PartitionOwner, RunningStores};

/// How a node runs.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's name, unique in the cluster.
    pub node: String,
    pub partitions: u16,
    pub lease: Duration,
    /// Where the partitions' stores go: `dir/p<N>`, and the global lane's `dir/global`.
    pub dir: PathBuf,
    pub owner: OwnerConfig,
}

/// What the node runs now, for status and readiness.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeStatus {
    /// The partitions this node runs.
    pub running: Vec<Partition>,
    /// Whether the last tick reached NATS.
    pub connected: bool,
}

/// The partitions a node runs, and their stores as the operator's commands see them.
struct Owners {
    owners: BTreeMap<Partition, PartitionOwner>,
    running: RunningStores,
}

impl Owners {
    fn insert(&mut self, p: Partition, owner: PartitionOwner) {
        self.running.insert(owner.lane_stores());
        self.owners.insert(p, owner);
    }

    /// Takes partition `p` off (first off the commands' list), for the caller to stop it.
    fn remove(&mut self, p: Partition) -> Option<PartitionOwner> {
        self.running.remove(p);
        self.owners.remove(&p)
    }
}

/// Runs the node until `stop` holds `true`, then hands its partitions over. Each change of
/// `reload` (a SIGHUP) has every partition it runs read its rules folder again. `status` and
/// `running` (the partitions' stores, for the operator's commands) are kept current. Fails
/// only if it cannot join (the leases bucket unreachable or refused).
pub async fn run_node(
    js: &jetstream::Context,
    config: NodeConfig,
    clock: Arc<dyn Clock>,
    mut stop: watch::Receiver<bool>,
    mut reload: watch::Receiver<u64>,
    status: watch::Sender<NodeStatus>,
    running: RunningStores,
) -> Result<(), ClusterError> {
    let mut membership =
        Membership::join(js, &config.node, config.partitions, config.lease).await?;
    let mut owners = Owners {
        owners: BTreeMap::new(),
        running,
    };
    let mut tick = tokio::time::interval(membership.interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => break,
            _ = tick.tick() => {}
            Ok(()) = reload.changed() => {
                for owner in owners.owners.values() {
                    owner.reload();
                }
                continue;
            }
        }
        let failed: Vec<(Partition, String)> = owners
            .owners
            .iter()
            .filter_map(|(p, owner)| owner.failure().map(|reason| (*p, reason)))
            .collect();
        let mut lost = Vec::new();
        for (p, reason) in failed {
            tracing::warn!(partition = %lane_name(p), %reason, "the partition stops here");
            changed(p, "stopped");
            if let Some(owner) = owners.remove(p) {
                lost.extend(while_renewing(&mut membership, owner.stop()).await.1);
            }
            give_up(&mut membership, p).await;
        }
        // A tick that failed part way still took or lost leases: those are acted on below
        // (a lease taken and not run would keep its partition from every node).
        let (changes, connected) = match membership.tick().await {
            Ok(changes) => (changes, true),
            Err(err) => {
                tracing::warn!(error = %err, "cluster membership: the tick failed");
                (err.done, false)
            }
        };
        lost.extend(changes.lost);
        for p in changes.hand_over {
            tracing::info!(partition = %lane_name(p), "handing the partition over");
            changed(p, "handed_over");
            if let Some(owner) = owners.remove(p) {
                lost.extend(while_renewing(&mut membership, owner.stop()).await.1);
            }
            give_up(&mut membership, p).await;
        }
        // Lost partitions stop before gained ones start: one lost and taken again (its lease
        // ran out while the node was paused, and nobody took it) starts on a closed store.
        stop_lost(&mut membership, &mut owners, &mut lost).await;
        for p in changes.gained {
            // Its lease lost while an earlier one started: not started at all.
            if lost.contains(&p) || !membership.holds(p) {
                continue;
            }
            if let Some(stale) = owners.remove(p) {
                // Not expected (a partition gained is one not held); stopped all the same
                // rather than left running beside its new start.
                lost.extend(while_renewing(&mut membership, stale.stop()).await.1);
            }
            let dir = config.dir.join(lane_dir(p));
            let start = PartitionOwner::start(
                js,
                p,
                &config.node,
                &dir,
                config.owner.clone(),
                clock.clone(),
            );
            let (started, lost_meanwhile) = while_renewing(&mut membership, start).await;
            lost.extend(lost_meanwhile);
            match started {
                Ok(owner) => {
                    changed(p, "gained");
                    owners.insert(p, owner);
                }
                Err(err) => {
                    tracing::error!(partition = %lane_name(p), error = %err, "could not run the partition");
                    give_up(&mut membership, p).await;
                }
            }
        }
        stop_lost(&mut membership, &mut owners, &mut lost).await;
        status.send_replace(NodeStatus {
            running: owners.owners.keys().copied().collect(),
            connected,
        });
    }
    let held: Vec<Partition> = owners.owners.keys().copied().collect();
    for (p, owner) in held
        .into_iter()
        .filter_map(|p| Some((p, owners.remove(p)?)))
    {
        // The partitions still to stop keep their leases meanwhile: a lease that ran out
        // would let another node take a partition whose sends are still finishing here.
        while_renewing(&mut membership, owner.stop()).await;
        give_up(&mut membership, p).await;
    }
    status.send_replace(NodeStatus::default());
    Ok(())
}

/// Stops the partitions whose lease was lost (`lost`, emptied), at once. The other leases are
/// renewed while a partition stops (its sends finishing): a slow stop must not cost the node
/// every other partition; a lease lost meanwhile is stopped too.
async fn stop_lost(membership: &mut Membership, owners: &mut Owners, lost: &mut Vec<Partition>) {
    while let Some(p) = lost.pop() {
        tracing::warn!(partition = %lane_name(p), "the partition's lease was lost: stopping it");
        changed(p, "lost");
        if let Some(owner) = owners.remove(p) {
            lost.extend(while_renewing(membership, owner.stop()).await.1);
        }
    }
}

/// Runs `work` (a partition's start or stop, which can take a while: a takeover replays the
/// journal, a stop lets sends finish) while renewing this node's leases every tick interval;
/// returns its result and the partitions whose lease was lost meanwhile.
async fn while_renewing<T>(
    membership: &mut Membership,
    work: impl std::future::Future<Output = T>,
) -> (T, Vec<Partition>) {
    let interval = membership.interval();
    let mut work = std::pin::pin!(work);
    let mut lost = Vec::new();
    loop {
        tokio::select! {
            done = &mut work => return (done, lost),
            _ = tokio::time::sleep(interval) => lost.extend(renew(membership).await),
        }
    }
}

/// Renews the leases this node holds; returns those lost.
async fn renew(membership: &mut Membership) -> Vec<Partition> {
    match membership.renew().await {
        Ok(lost) => lost,
        Err(err) => {
            tracing::warn!(error = %err, "cluster membership: renewing the leases failed");
            err.done.lost
        }
    }
}

/// Releases partition `p`'s lease so that its next owner need not wait for it to run out (if
/// the release fails, it runs out by itself).
async fn give_up(membership: &mut Membership, p: Partition) {
    if let Err(err) = membership.release(p).await {
        tracing::warn!(partition = %lane_name(p), error = %err, "releasing the partition's lease");
    }
}

/// The folder of partition `p`'s store under the node's cluster folder.
pub fn lane_dir(p: Partition) -> String {
    if p == GLOBAL {
        "global".to_owned()
    } else {
        format!("p{p}")
    }
}

/// Counts an ownership change of partition `p` on this node
/// (`gancho_cluster_ownership_changes_total`): `gained`, `handed_over`, `lost`, `stopped`.
fn changed(p: Partition, change: &'static str) {
    metrics::counter!(
        "gancho_cluster_ownership_changes_total",
        "partition" => lane_name(p),
        "change" => change
    )
    .increment(1);
}
