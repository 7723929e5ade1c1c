//! A partition owner's retention: every so often its local stores are pruned (the single-node
//! prune, which the binary gives as a [`PrunePartition`]: events past `[store] retention` that
//! the engine has processed and no pending timer refers to, dead letters, expired state,
//! traces, the delivery history), then the partition's stream is purged below the first event
//! its log still holds, so that the cluster keeps what one node would. The global lane does
//! the same with `GANCHO_ALL`.
//!
//! The stream is never purged past the engine's durable cursor, so an event no owner has
//! decided yet stays, whoever owns the partition next. A failure is logged and tried again at
//! the next round: nothing is purged that the log still holds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use gancho_cluster::{Partition, lane_name, purge_events};
use gancho_state::EngineState;
use gancho_store::Store;
use tokio::sync::watch;

/// Deletes what is past its retention from one partition's stores.
pub trait PrunePartition: Send + Sync + std::fmt::Debug {
    /// Prunes `store` and `state` now; returns what went, for the log.
    fn prune(&self, store: &Store, state: &EngineState) -> Result<String, String>;
}

/// When a partition's owner prunes.
#[derive(Debug, Clone)]
pub struct RetentionPolicy {
    /// The prune; `None` keeps everything (no retention is set).
    pub prune: Option<Arc<dyn PrunePartition>>,
    /// The first prune, this long after the partition starts.
    pub first_after: Duration,
    /// Then one every this long.
    pub every: Duration,
}

impl Default for RetentionPolicy {
    fn default() -> RetentionPolicy {
        RetentionPolicy {
            prune: None,
            first_after: Duration::from_secs(60),
            every: Duration::from_secs(3600),
        }
    }
}

/// Prunes partition `partition` by `policy` until `stop` holds `true`.
pub(crate) async fn keep_retention(
    js: jetstream::Context,
    partition: Partition,
    store: Store,
    state: EngineState,
    policy: RetentionPolicy,
    mut stop: watch::Receiver<bool>,
) {
    let Some(prune) = policy.prune else {
        return;
    };
    let lane = lane_name(partition);
    let mut wait = policy.first_after;
    loop {
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = policy.every;
        let started = Instant::now();
        let (prune, store, state) = (Arc::clone(&prune), store.clone(), state.clone());
        let pruned = tokio::task::spawn_blocking(move || {
            let summary = prune.prune(&store, &state)?;
            // Read after the prune: what the log holds now, and what is decided for good.
            let first = store.first_stored_seq().map_err(|err| err.to_string())?;
            // An empty log keeps nothing below its end, but nothing above it was read here:
            // a new owner's log can trail the cursor it took over, and what it has not read
            // yet (an event a timer refers to among it) is not this prune's to judge.
            let end = store.last_seq().map_err(|err| err.to_string())?;
            let decided = state.durable_cursor();
            let keep_from = first
                .unwrap_or(u64::MAX)
                .min(end.saturating_add(1))
                .min(decided.saturating_add(1));
            Ok::<_, String>((summary, keep_from))
        })
        .await
        .map_err(|err| err.to_string())
        .and_then(|done| done);
        let (summary, keep_from) = match pruned {
            Ok(done) => done,
            Err(err) => {
                tracing::error!(partition = %lane, error = %err, "pruning the partition failed; tried again at the next round");
                continue;
            }
        };
        // A stop asked for during the prune: the purge waits for the next owner's.
        if *stop.borrow() {
            return;
        }
        let purged = if keep_from > 1 {
            match purge_events(&js, partition, keep_from).await {
                Ok(purged) => purged,
                Err(err) => {
                    tracing::error!(partition = %lane, error = %err, "purging the partition's stream failed; tried again at the next round");
                    continue;
                }
            }
        } else {
            0
        };
        tracing::info!(
            partition = %lane,
            pruned = %summary,
            stream_purged = purged,
            stream_from = keep_from,
            took_ms = started.elapsed().as_millis() as u64,
            "pruned what is past its retention"
        );
    }
}
