//! A node's side of ownership: every tick it says it is alive, renews the leases it holds,
//! takes the partitions rendezvous hashing gives it once they are free, and names those it
//! should hand over to a node that joined.
//!
//! The caller runs the partitions. It runs [`Membership::tick`] every [`Membership::interval`]
//! (a third of the lease, so a lease is renewed twice before it could expire), starts
//! partitions in [`Changes::gained`], stops those in [`Changes::lost`] at once (their lease
//! expired: another node may own them already, and the journal's fence refuses this one's
//! commits anyway), and for each in [`Changes::hand_over`] makes its final commit, then calls
//! [`Membership::release`] so the new owner can take it without waiting for the lease to run
//! out. A graceful stop does the same for every partition ([`Membership::held`]), after its
//! final commits.
//!
//! The global lane ([`GLOBAL`]) is one more partition here: leased, placed and handed over the
//! same way.
//!
//! After a node dies, its heartbeat and leases end within a lease; the surviving nodes'
//! rendezvous hashing then gives its partitions to them, and they take them at their next
//! tick: owned again within about a lease and a tick.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream;

use crate::error::ClusterError;
use crate::lease::{Lease, Leases, rendezvous_owner};
use gancho_core::partition::{GLOBAL, Partition};

/// What a tick changed, for the caller to act on.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// Taken now: start them (from their journal's cursor).
    pub gained: Vec<Partition>,
    /// Their lease was lost: stop them now, without a final commit.
    pub lost: Vec<Partition>,
    /// Another live node should own them: make a final commit, then release them.
    pub hand_over: Vec<Partition>,
}

/// A tick (or a renewal) that failed part way: what it did is still to be acted on.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct TickError {
    /// What the tick did before and after the failure: leases taken (they are held: run
    /// them) and lost (stop them).
    pub done: Changes,
    /// The first failure.
    #[source]
    pub error: ClusterError,
}

/// One node's membership of the cluster.
#[derive(Debug)]
pub struct Membership {
    leases: Leases,
    node: String,
    partitions: u16,
    lease: Duration,
    held: BTreeMap<Partition, Lease>,
    /// Counts rounds: each starts its renewals and claims at a different partition, so that a
    /// failure that ends a round does not always leave the same leases for later.
    round: usize,
}

impl Membership {
    /// Joins as `node` (the leases bucket is created if need be, and must have `lease`).
    pub async fn join(
        js: &jetstream::Context,
        node: &str,
        partitions: u16,
        lease: Duration,
    ) -> Result<Membership, ClusterError> {
        Ok(Membership {
            leases: Leases::open(js, node, lease).await?,
            node: node.to_owned(),
            partitions,
            lease,
            held: BTreeMap::new(),
            round: 0,
        })
    }

    /// How often to tick: a third of the lease.
    pub fn interval(&self) -> Duration {
        self.lease / 3
    }

    /// The partitions this node holds the lease of.
    pub fn held(&self) -> Vec<Partition> {
        self.held.keys().copied().collect()
    }

    /// Whether this node holds partition `p`'s lease.
    pub fn holds(&self, p: Partition) -> bool {
        self.held.contains_key(&p)
    }

    /// Heartbeat, renewals, then takes what is free and should be this node's. A step that
    /// fails ends the tick without undoing the steps before it: the error carries what was
    /// done ([`TickError::done`]), for the caller to act on as on a tick that succeeded (a
    /// lease taken must be run, a lease lost must stop); the next tick tries the rest again.
    pub async fn tick(&mut self) -> Result<Changes, TickError> {
        let mut changes = Changes::default();
        // Renewals failing (a server busy or gone) end the tick there: taking more leases
        // through the same servers would only hold up the next renewal.
        if let Err(error) = self.renew_into(&mut changes.lost).await {
            return Err(TickError {
                done: changes,
                error,
            });
        }
        let mut live = match self.leases.live_nodes().await {
            Ok(live) => live,
            Err(error) => {
                return Err(TickError {
                    done: changes,
                    error,
                });
            }
        };
        if !live.contains(&self.node) {
            live.push(self.node.clone());
            live.sort();
        }
        changes.hand_over = self
            .held
            .keys()
            .copied()
            .filter(|&p| rendezvous_owner(p, &live) != Some(self.node.as_str()))
            .collect();
        let mut lanes: Vec<Partition> = (0..self.partitions).chain([GLOBAL]).collect();
        let turn = self.round % lanes.len();
        lanes.rotate_left(turn);
        for p in lanes {
            if self.held.contains_key(&p) || rendezvous_owner(p, &live) != Some(self.node.as_str())
            {
                continue;
            }
            // A lease lost in this tick is not taken back in it: its partition is still
            // stopping. Another node writing a lease at the same moment is a race lost
            // (`acquire` says `None`); any other failure ends the tick, whose every step waits
            // out its own timeout, so that it does not outlast the leases it renewed.
            if changes.lost.contains(&p) {
                continue;
            }
            match self.leases.acquire(p).await {
                Ok(Some(lease)) => {
                    self.held.insert(p, lease);
                    changes.gained.push(p);
                }
                Ok(None) => {}
                Err(error) => {
                    return Err(TickError {
                        done: changes,
                        error,
                    });
                }
            }
        }
        Ok(changes)
    }

    /// Heartbeat and renewals only, nothing taken: for a caller busy starting or stopping
    /// partitions between ticks (each can take a while), so that no lease runs out meanwhile.
    /// Returns the partitions whose lease was lost: stop them now (on an error too, in
    /// [`TickError::done`]).
    pub async fn renew(&mut self) -> Result<Vec<Partition>, TickError> {
        let mut lost = Vec::new();
        match self.renew_into(&mut lost).await {
            Ok(()) => Ok(lost),
            Err(error) => Err(TickError {
                done: Changes {
                    lost,
                    ..Changes::default()
                },
                error,
            }),
        }
    }

    /// The heartbeat, then each held lease's renewal; the leases lost go to `lost`. The first
    /// failure ends it (each step waits out its own timeout: with the servers gone, trying
    /// every lease would hold the node up for as many timeouts); a lease not renewed now is
    /// renewed at the next round, well within its lease.
    async fn renew_into(&mut self, lost: &mut Vec<Partition>) -> Result<(), ClusterError> {
        self.leases.heartbeat().await?;
        self.round = self.round.wrapping_add(1);
        let mut held: Vec<Partition> = self.held.keys().copied().collect();
        if !held.is_empty() {
            let turn = self.round % held.len();
            held.rotate_left(turn);
        }
        for p in held {
            let Some(lease) = self.held.get_mut(&p) else {
                continue;
            };
            if !self.leases.renew(lease).await? {
                self.held.remove(&p);
                lost.push(p);
            }
        }
        Ok(())
    }

    /// Gives partition `p` up (after its final commit).
    pub async fn release(&mut self, p: Partition) -> Result<(), ClusterError> {
        match self.held.remove(&p) {
            Some(lease) => self.leases.release(lease).await,
            None => Ok(()),
        }
    }
}
