//! The failure tests' oracle (issue 17): replaying a partition's stream through the single-node
//! engine gives exactly the decisions the cluster journaled, each journaled once. [`journaled`]
//! reads what the partition's owners decided from its journal; [`replayed`] runs the engine
//! alone over the partition's stream, in a folder of its own, with a clock that stays at the
//! epoch (the stream holds the timer firings and cron ticks already, so it fires none itself,
//! and rules read event time only). Tests call it; no node runs it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use gancho_cluster::{
    ClusterError, Journal, Partition, PartitionReader, cluster_secret, event_stream,
    partition_secret, read_journal,
};
use gancho_core::publish::{BlockingPublisher, PublishError, PublishedCounts};
use gancho_core::{ActionRequest, ManualClock, NewEvent};
use gancho_engine::{Engine, EngineConfig};
use gancho_state::{CommitFence, EngineState, FenceError, StoreConfig, decided_in};
use gancho_store::{Store, StoreError};

/// Why the oracle could not answer.
#[derive(Debug, thiserror::Error)]
pub enum OracleError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the single-node engine: {0}")]
    Engine(String),
}

/// Every action the partition's journal holds as decided, with the commit that decided it, in
/// journal order (a decision made twice shows twice). The journal must not be trimmed.
pub async fn journaled(
    js: &jetstream::Context,
    partition: Partition,
) -> Result<Vec<(u64, ActionRequest)>, OracleError> {
    let last = Journal::open(js, partition, "oracle")
        .await?
        .last_sequence();
    let mut decided = Vec::new();
    read_journal(js, partition, 1, last, |_, records| {
        decided.extend(decided_in(records).map_err(|err| err.to_string())?);
        Ok(())
    })
    .await?;
    Ok(decided)
}

/// A fence that takes every commit: the oracle decides alone.
#[derive(Debug)]
struct Alone;

impl CommitFence for Alone {
    fn commit(&self, _cursor: u64, _records: &[u8]) -> Result<(), FenceError> {
        Ok(())
    }

    fn position(&self) -> u64 {
        0
    }
}

/// The stream holds the engine's own events already: what it would publish is dropped.
#[derive(Debug)]
struct Dropped;

impl BlockingPublisher for Dropped {
    fn publish_blocking(&self, events: Vec<NewEvent>) -> Result<PublishedCounts, PublishError> {
        Ok(PublishedCounts {
            stored: events.len(),
            duplicates: 0,
        })
    }
}

/// What the single-node engine decides on the partition's stream up to the cursor its journal
/// last committed (the events after it are not decided yet: owners stopped while behind), as
/// its owners run it (`engine`: their engine settings; the lane and the partition are set
/// here), in `dir`.
pub async fn replayed(
    js: &jetstream::Context,
    partition: Partition,
    dir: &Path,
    engine: EngineConfig,
) -> Result<Vec<ActionRequest>, OracleError> {
    let decided = Journal::open(js, partition, "oracle").await?.cursor();
    let last = js
        .get_stream(event_stream(partition))
        .await
        .map_err(|err| OracleError::Engine(err.to_string()))?
        .info()
        .await
        .map_err(|err| OracleError::Engine(err.to_string()))?
        .state
        .last_sequence
        .min(decided);
    let store = {
        let dir = dir.to_owned();
        tokio::task::spawn_blocking(move || Store::open(&dir, &StoreConfig::default()))
            .await
            .map_err(|err| OracleError::Engine(err.to_string()))??
    };
    let mut reader = PartitionReader::open(js, partition, 0).await?;
    let mut at = 0;
    while at < last {
        let mut batch = Vec::new();
        while let Some(next) = reader.next_within(Duration::from_secs(5)).await? {
            at = next.0;
            if at > last {
                break;
            }
            batch.push(next);
            if at >= last || batch.len() == 1024 {
                break;
            }
        }
        if batch.is_empty() && at < last {
            return Err(OracleError::Engine(format!(
                "the stream stopped at {at} of {last}"
            )));
        }
        if !batch.is_empty() {
            store.appender().append_at(&batch).await?;
        }
    }
    let secret = partition_secret(&cluster_secret(js).await?, partition);
    let engine = crate::owner::partition_engine(engine, partition, Arc::new(Dropped));
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        let state =
            EngineState::open_fenced(&dir, &StoreConfig::default(), Arc::new(Alone), secret)?;
        let clock = Arc::new(ManualClock::new(gancho_core::millis_to_time(0)));
        let mut engine = Engine::new(store.clone(), state.clone(), clock, engine)
            .map_err(|err| OracleError::Engine(err.to_string()))?;
        engine
            .run_until_idle(Duration::from_secs(120))
            .map_err(|err| OracleError::Engine(err.to_string()))?;
        drop(engine);
        state.wait_durable(Duration::from_secs(30));
        let decided = state.decided_actions(0)?;
        state.close();
        store.shutdown()?;
        Ok(decided)
    })
    .await
    .map_err(|err| OracleError::Engine(err.to_string()))?
}

/// Compares the two: the decisions journaled, by action id, each once, are the oracle's (all
/// of each action but the time it was decided at, which is the deciding node's clock).
/// Returns how many there were, or what differs.
pub fn compare(
    journaled: &[(u64, ActionRequest)],
    replayed: &[ActionRequest],
) -> Result<usize, String> {
    use std::collections::BTreeMap;
    let mut by_id: BTreeMap<&str, (u64, &ActionRequest)> = BTreeMap::new();
    for (commit, action) in journaled {
        if let Some((earlier, _)) = by_id.insert(action.id.as_str(), (*commit, action)) {
            return Err(format!(
                "action {} decided twice: commits {earlier} and {commit}",
                action.id
            ));
        }
    }
    let oracle: BTreeMap<&str, &ActionRequest> =
        replayed.iter().map(|a| (a.id.as_str(), a)).collect();
    let missing: Vec<&str> = oracle
        .keys()
        .filter(|id| !by_id.contains_key(*id))
        .copied()
        .collect();
    let extra: Vec<&str> = by_id
        .keys()
        .filter(|id| !oracle.contains_key(*id))
        .copied()
        .collect();
    if !missing.is_empty() || !extra.is_empty() {
        return Err(format!(
            "the journal lacks {} of the oracle's decisions (e.g. {:?}) and has {} it lacks (e.g. {:?})",
            missing.len(),
            missing.iter().take(3).collect::<Vec<_>>(),
            extra.len(),
            extra.iter().take(3).collect::<Vec<_>>()
        ));
    }
    // When it was decided is the clock's, not the decision's.
    let decision = |a: &ActionRequest| ActionRequest {
        decided_ms: 0,
        ..a.clone()
    };
    for (id, (_, action)) in &by_id {
        if oracle.get(id).map(|a| decision(a)) != Some(decision(action)) {
            return Err(format!(
                "action {id} differs from the oracle's: {action:?} against {:?}",
                oracle.get(id)
            ));
        }
    }
    Ok(by_id.len())
}
