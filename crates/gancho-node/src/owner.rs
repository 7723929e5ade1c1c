//! A partition's owner on this node: the single-node engine and actions executor, run on the
//! partition's own store (`DIR/log`, `DIR/indexes`, `DIR/engine`, `DIR/traces`), fed from the
//! partition's stream and fenced by its journal. Started once this node holds the partition's
//! lease; stopped when it loses it, or when it has to stop: a commit refused (another node
//! owns the partition now), a store failure, the stream unreadable ([`PartitionOwner::failure`]).
//! The engine's own events (timer firings, cron ticks) go to the partition's stream, and come
//! back into its log like any other event, at their stream seqs.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_nats::jetstream;
use gancho_actions::{ActionsConfig, ActionsHandle};
use gancho_cluster::{GLOBAL, Partition, lane_name, publish_counted};
use gancho_core::publish::{BlockingPublisher, PublishError, PublishedCounts};
use gancho_core::{Clock, NewEvent};
use gancho_engine::{EngineConfig, EngineHandle, Lane};
use gancho_state::{EngineState, StoreConfig};
use gancho_store::{Store, StoreError};
use tokio::sync::watch;

use crate::retention::keep_retention;
use crate::snapshots::take_snapshots;
use crate::{RetentionPolicy, SnapshotPolicy, TakeoverError, follow, take_over};

/// Events an engine commits together in cluster mode, at most.
const CLUSTER_BATCH: usize = 256;

/// Why a partition's owner could not start.
#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    #[error(transparent)]
    Takeover(#[from] TakeoverError),
    #[error("partition {partition}'s store: {source}")]
    Store {
        partition: Partition,
        #[source]
        source: StoreError,
    },
    #[error("partition {partition}'s engine: {reason}")]
    Start {
        partition: Partition,
        reason: String,
    },
}

/// How a partition's owner runs: the node's settings, the same for each partition.
#[derive(Debug, Clone)]
pub struct OwnerConfig {
    pub store: StoreConfig,
    /// The engine's settings; its `placement` (the cluster's partition count and the sources'
    /// partition keys) is given its partition by each owner.
    pub engine: EngineConfig,
    pub actions: ActionsConfig,
    /// When the partition's snapshots are taken.
    pub snapshots: SnapshotPolicy,
    /// What is deleted past its retention, and when.
    pub retention: RetentionPolicy,
}

/// The settings of partition `partition`'s engine in cluster mode, from the node's: its lane
/// and placement, its log filled from the stream, commits small enough for a journal
/// message, and its own events (timer firings, cron ticks) to `own_events`. Its owner and the
/// failure tests' oracle run the same engine.
pub(crate) fn partition_engine(
    mut engine: EngineConfig,
    partition: Partition,
    own_events: Arc<dyn BlockingPublisher>,
) -> EngineConfig {
    engine.log_from_stream = true;
    // A commit goes to the partition's journal as one message at most 1 MiB: smaller
    // batches keep each commit's record well under it.
    engine.batch_size = engine.batch_size.min(CLUSTER_BATCH);
    // A partition's queries are checked against its placement; the global lane's see
    // every partition's events.
    if partition == GLOBAL {
        engine.lane = Lane::Global;
        engine.placement = None;
    } else {
        engine.lane = Lane::Partition;
        if let Some(placement) = &mut engine.placement {
            placement.partition = partition;
        }
    }
    engine.own_events = Some(own_events);
    engine
}

/// The engine's own events to its partition's stream.
#[derive(Debug)]
struct PartitionStream {
    js: jetstream::Context,
    partition: Partition,
    runtime: tokio::runtime::Handle,
}

impl BlockingPublisher for PartitionStream {
    fn publish_blocking(&self, events: Vec<NewEvent>) -> Result<PublishedCounts, PublishError> {
        self.runtime
            .block_on(publish_counted(&self.js, &events, |_| self.partition))
    }
}

/// Undoes a start that failed part way: nothing left running (the follower, the engine if
/// it started), the stores let go, so that a later start can open them.
async fn abandon(
    stop_following: &watch::Sender<bool>,
    following: tokio::task::JoinHandle<()>,
    engine: Option<EngineHandle>,
    state: &EngineState,
    store: &Store,
) {
    let _ = stop_following.send(true);
    let _ = following.await;
    let (state, store) = (state.clone(), store.clone());
    let _ = tokio::task::spawn_blocking(move || {
        if let Some(engine) = engine {
            engine.stop();
        }
        state.close();
        store.shutdown()
    })
    .await;
}

/// A partition run by this node.
#[derive(Debug)]
pub struct PartitionOwner {
    partition: Partition,
    store: Store,
    state: EngineState,
    engine: Option<EngineHandle>,
    actions: Option<ActionsHandle>,
    stop_following: watch::Sender<bool>,
    following: Option<tokio::task::JoinHandle<()>>,
    snapshots: Option<tokio::task::JoinHandle<()>>,
    retention: Option<tokio::task::JoinHandle<()>>,
    /// Why following the stream stopped, if it did by itself.
    follow_failure: Arc<Mutex<Option<String>>>,
}

impl PartitionOwner {
    /// Takes partition `partition` over and runs it from `dir`. Call it on the runtime of the
    /// NATS client `js`, once this node holds the partition's lease.
    pub async fn start(
        js: &jetstream::Context,
        partition: Partition,
        node: &str,
        dir: &Path,
        config: OwnerConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<PartitionOwner, OwnerError> {
        let started = std::time::Instant::now();
        let store_error = |source| OwnerError::Store { partition, source };
        let start_error = |reason: String| OwnerError::Start { partition, reason };
        std::fs::create_dir_all(dir).map_err(|source| {
            store_error(StoreError::Io {
                what: format!("creating {}", dir.display()),
                source,
            })
        })?;
        let (state, cursor) = take_over(js, partition, node, dir, &config.store).await?;
        tracing::debug!(
            partition = %lane_name(partition),
            took_ms = started.elapsed().as_millis() as u64,
            "took the partition's state over"
        );
        let store = {
            let (dir, store_config) = (dir.to_owned(), config.store.clone());
            let opened = tokio::task::spawn_blocking(move || Store::open(&dir, &store_config))
                .await
                .map_err(|err| start_error(err.to_string()))
                .and_then(|opened| opened.map_err(store_error));
            match opened {
                Ok(store) => store,
                Err(err) => {
                    // Let the engine database go: a later start would find it in use.
                    let closing = state.clone();
                    let _ = tokio::task::spawn_blocking(move || closing.close()).await;
                    return Err(err);
                }
            }
        };
        let (stop_following, stop) = watch::channel(false);
        let follow_failure = Arc::new(Mutex::new(None));
        let following = {
            let (js, store, failure) = (js.clone(), store.clone(), follow_failure.clone());
            tokio::spawn(async move {
                if let Err(err) = follow(&js, partition, &store, stop).await {
                    tracing::error!(partition, error = %err, "following the partition's stream stopped");
                    *failure
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(err.to_string());
                }
            })
        };
        let engine_config = partition_engine(
            config.engine,
            partition,
            Arc::new(PartitionStream {
                js: js.clone(),
                partition,
                runtime: tokio::runtime::Handle::current(),
            }),
        );
        let engine = match gancho_engine::spawn(
            store.clone(),
            state.clone(),
            clock.clone(),
            engine_config,
        ) {
            Ok(engine) => engine,
            Err(err) => {
                abandon(&stop_following, following, None, &state, &store).await;
                return Err(start_error(err.to_string()));
            }
        };
        let actions = match gancho_actions::spawn(&state.outbox(), clock, config.actions) {
            Ok(actions) => actions,
            Err(err) => {
                abandon(&stop_following, following, Some(engine), &state, &store).await;
                return Err(start_error(err.to_string()));
            }
        };
        let snapshots = tokio::spawn(take_snapshots(
            js.clone(),
            partition,
            state.clone(),
            dir.to_owned(),
            config.snapshots,
            stop_following.subscribe(),
        ));
        let retention = tokio::spawn(keep_retention(
            js.clone(),
            partition,
            store.clone(),
            state.clone(),
            config.retention,
            stop_following.subscribe(),
        ));
        tracing::info!(
            partition = %lane_name(partition),
            cursor,
            took_ms = started.elapsed().as_millis() as u64,
            "running the partition"
        );
        Ok(PartitionOwner {
            partition,
            store,
            state,
            engine: Some(engine),
            actions: Some(actions),
            stop_following,
            following: Some(following),
            snapshots: Some(snapshots),
            retention: Some(retention),
            follow_failure,
        })
    }

    pub fn partition(&self) -> Partition {
        self.partition
    }

    /// The partition's local store (its events at their stream seqs).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The partition's engine state (its cursor, rule state, outbox).
    pub fn state(&self) -> &EngineState {
        &self.state
    }

    /// Its stores, for the operator's commands.
    pub fn lane_stores(&self) -> crate::LaneStores {
        crate::LaneStores {
            partition: self.partition,
            store: self.store.clone(),
            state: self.state.clone(),
        }
    }

    /// Has the partition's engine read its rules folder again (SIGHUP).
    pub fn reload(&self) {
        if let Some(engine) = &self.engine {
            engine.reload();
        }
    }

    /// Why the partition cannot go on here, if so: a commit was refused (another node owns it
    /// now), a store failed, or following the stream stopped. The caller then stops it.
    pub fn failure(&self) -> Option<String> {
        self.state
            .failure()
            .or_else(|| self.store.failure())
            .or_else(|| {
                self.follow_failure
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone()
            })
    }

    /// Stops the partition: no more events read, the engine's batch in progress committed (or
    /// refused), the sends in flight finished (up to the grace period), the stores closed.
    pub async fn stop(mut self) {
        let _ = self.stop_following.send(true);
        if let Some(following) = self.following.take() {
            let _ = following.await;
        }
        // A snapshot in progress finishes first (it reads the state being closed).
        if let Some(snapshots) = self.snapshots.take() {
            let _ = snapshots.await;
        }
        // So does a prune (it writes to the stores being closed).
        if let Some(retention) = self.retention.take() {
            let _ = retention.await;
        }
        let (engine, actions) = (self.engine.take(), self.actions.take());
        let (state, store) = (self.state.clone(), self.store.clone());
        let stopped = tokio::task::spawn_blocking(move || {
            if let Some(engine) = engine {
                engine.stop();
            }
            if let Some(actions) = actions {
                actions.stop();
            }
            state.close();
            store.shutdown()
        })
        .await;
        match stopped {
            Ok(Ok(())) => tracing::info!(partition = self.partition, "stopped the partition"),
            Ok(Err(err)) => {
                tracing::warn!(partition = self.partition, error = %err, "closing the partition's store")
            }
            Err(err) => {
                tracing::error!(partition = self.partition, error = %err, "stopping the partition")
            }
        }
    }
}
