//! A cluster node's side of the partitions it owns: each one's local store, kept equal to the
//! partition's stream (`follow`), on which the single-node engine will run its rules, and the
//! fence of that engine's commits, the partition's shared journal ([`JournalFence`]). It joins
//! the two halves that must not know each other: `gancho-cluster` (everything said to NATS) and
//! `gancho-store` (the local log, which knows nothing of NATS). The global lane is run as one
//! more partition (`gancho_cluster::GLOBAL`): its stream sources every partition's, and its
//! engine runs the global rules where the partitions' run the others.
//!
//! It must not decide anything about events (the engine does) nor hold a partition it does not
//! own: whoever calls [`follow`] has taken the partition's lease, and stops it when the lease
//! is lost. `docs/cluster.md` says what is built and what is to come (issue 17).

mod fence;
mod follow;
mod node;
pub mod oracle;
mod owner;
mod retention;
mod running;
mod snapshots;
mod takeover;

pub use fence::JournalFence;
pub use follow::{FollowError, follow};
pub use node::{NodeConfig, NodeStatus, lane_dir, run_node};
pub use owner::{OwnerConfig, OwnerError, PartitionOwner};
pub use retention::{PrunePartition, RetentionPolicy};
pub use running::{LaneStores, RunningStores};
pub use snapshots::SnapshotPolicy;
pub use takeover::{TakeoverError, take_over};
