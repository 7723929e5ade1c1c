//! Retention in the daemon: what is deleted, and when. The store deletes events and quarantine
//! records and the engine's database its dead letters and long-expired state; here they are
//! told what is old, from the config's retentions and the clock, and what they must keep: the
//! events the engine has not processed durably and those pending timers refer to.
//!
//! The daemon prunes a minute after it starts and every hour after that, on a blocking thread
//! (ingest and the engine go on); `gancho prune` runs one now and prints what went.

use std::time::Duration;

use chrono::{DateTime, Utc};
use gancho_store::{PruneRequest, StoreError};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::data::Data;

/// How often the daemon prunes.
pub const EVERY: Duration = Duration::from_secs(3600);
/// ... starting this long after it starts (a restart loop does not prune in a loop).
pub const FIRST_AFTER: Duration = Duration::from_secs(60);
/// Rule state (a value with a time to live, a `throttle` mark) is deleted this long after it
/// expired: until then an event that arrives late, with an earlier event time, still sees it.
pub const EXPIRED_STATE_GRACE: Duration = Duration::from_secs(24 * 3600);

/// How long each kind of record is kept; `None` keeps it for ever.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    pub events_ms: Option<u64>,
    pub quarantine_ms: Option<u64>,
    pub dead_ms: Option<u64>,
    #[serde(default)]
    pub traces_ms: Option<u64>,
    #[serde(default)]
    pub sent_ms: Option<u64>,
}

impl Retention {
    pub fn of(config: &Config) -> Retention {
        let ms = |d: Option<Duration>| d.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Retention {
            events_ms: ms(config.store.retention),
            quarantine_ms: ms(config.store.quarantine_retention),
            dead_ms: ms(config.actions.retry.dead_retention),
            traces_ms: ms(config.engine.trace_retention),
            sent_ms: ms(config.actions.retry.sent_retention),
        }
    }
}

/// What a prune deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pruned {
    pub events: u64,
    /// Events past their retention kept because a pending timer refers to them.
    pub kept: u64,
    pub blocks_deleted: u64,
    pub blocks_rewritten: u64,
    pub quarantine_records: u64,
    pub dead_letters: u64,
    pub expired_state: u64,
    #[serde(default)]
    pub traces: u64,
    /// Records of the delivery history.
    #[serde(default)]
    pub sent: u64,
}

/// `now` minus `ms`, in ms since the epoch.
fn before(now: DateTime<Utc>, ms: Option<u64>) -> Option<i64> {
    ms.map(|ms| {
        now.timestamp_millis()
            .saturating_sub(i64::try_from(ms).unwrap_or(i64::MAX))
    })
}

/// Deletes what is past its retention at `now`.
pub fn prune(data: &Data, retention: &Retention, now: DateTime<Utc>) -> Result<Pruned, StoreError> {
    // Read before the references: a timer set after this refers to a later event.
    let processed = data.state.durable_cursor();
    let keep = match retention.events_ms {
        Some(_) => data.state.referenced_seqs()?,
        None => Default::default(),
    };
    let report = data.store.prune(&PruneRequest {
        events_before_ms: before(now, retention.events_ms),
        processed,
        keep,
        quarantine_before_ms: before(now, retention.quarantine_ms),
    })?;
    let dead_letters = match before(now, retention.dead_ms) {
        Some(cutoff) => data.state.outbox().prune_dead(cutoff)?,
        None => 0,
    };
    let grace = u64::try_from(EXPIRED_STATE_GRACE.as_millis()).unwrap_or(u64::MAX);
    let expired_state = match before(now, Some(grace)) {
        Some(cutoff) => data.state.drop_expired_state(cutoff)?,
        None => 0,
    };
    let traces = match before(now, retention.traces_ms) {
        Some(cutoff) => data.state.prune_traces(cutoff)?,
        None => 0,
    };
    let sent = match before(now, retention.sent_ms) {
        Some(cutoff) => data.state.outbox().prune_sent(cutoff)?,
        None => 0,
    };
    Ok(Pruned {
        events: report.events,
        kept: report.kept,
        blocks_deleted: report.blocks_deleted,
        blocks_rewritten: report.blocks_rewritten,
        quarantine_records: report.quarantine_records,
        dead_letters: dead_letters as u64,
        expired_state: expired_state as u64,
        traces: traces as u64,
        sent: sent as u64,
    })
}

/// The same prune on a cluster node's partition stores (`gancho_node` runs it on each
/// partition it owns, a minute after the partition starts and then every hour, and purges the
/// partition's stream below what the log keeps).
#[derive(Debug)]
pub struct PartitionPrune {
    pub retention: Retention,
    pub clock: std::sync::Arc<dyn gancho_core::Clock>,
}

impl PartitionPrune {
    /// The partitions' retention policy for `config`: no prune when nothing has a retention.
    pub fn policy(
        config: &Config,
        clock: std::sync::Arc<dyn gancho_core::Clock>,
    ) -> gancho_node::RetentionPolicy {
        let retention = Retention::of(config);
        let prune: Option<std::sync::Arc<dyn gancho_node::PrunePartition>> = (retention
            != Retention::default())
        .then(|| std::sync::Arc::new(PartitionPrune { retention, clock }) as _);
        gancho_node::RetentionPolicy {
            prune,
            first_after: FIRST_AFTER,
            every: EVERY,
        }
    }
}

impl gancho_node::PrunePartition for PartitionPrune {
    fn prune(
        &self,
        store: &gancho_store::Store,
        state: &gancho_state::EngineState,
    ) -> Result<String, String> {
        let data = Data {
            store: store.clone(),
            state: state.clone(),
        };
        let pruned = prune(&data, &self.retention, self.clock.now()).map_err(|e| e.to_string())?;
        Ok(format!(
            "{} events ({} kept for timers), {} dead letters, {} expired state, {} traces, {} sent",
            pruned.events,
            pruned.kept,
            pruned.dead_letters,
            pruned.expired_state,
            pruned.traces,
            pruned.sent
        ))
    }
}

/// Prunes a minute after the start and then every hour, until the task is dropped.
pub async fn every_hour(
    data: Data,
    retention: Retention,
    clock: std::sync::Arc<dyn gancho_core::Clock>,
) {
    tokio::time::sleep(FIRST_AFTER).await;
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tick.tick().await;
        let (data, clock) = (data.clone(), clock.clone());
        let started = std::time::Instant::now();
        let done = tokio::task::spawn_blocking(move || prune(&data, &retention, clock.now())).await;
        match done {
            Ok(Ok(pruned)) => tracing::info!(
                events = pruned.events,
                kept = pruned.kept,
                quarantine = pruned.quarantine_records,
                dead_letters = pruned.dead_letters,
                expired_state = pruned.expired_state,
                took_ms = started.elapsed().as_millis() as u64,
                "pruned what is past its retention"
            ),
            Ok(Err(err)) => {
                tracing::error!(error = %err, "pruning failed; it is tried again in an hour")
            }
            Err(err) => tracing::error!(error = %err, "the prune task failed"),
        }
    }
}
