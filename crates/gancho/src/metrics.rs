//! Prometheus metrics (`GET /metrics` on the admin listener). The crates count with the
//! `metrics` facade where things happen (the ingress per source, the engine per rule, the
//! actions per channel); this module installs the recorder (`metrics-exporter-prometheus`)
//! when the admin listener starts, describes every series, and at each scrape sets the
//! gauges that are read rather than counted: lags, queue sizes, store sizes and failure.
//! Without an admin listener no recorder is installed and the counting costs nothing.

use std::path::Path;

use gancho_core::Channel;
use gancho_store::StoreError;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::data::Data;

/// Bucket bounds of every histogram, in seconds: from half a millisecond (an ingest request,
/// a rule run) to a day (a delivery retried through an outage).
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0, 1800.0, 3600.0, 21600.0, 86400.0,
];

/// The process's recorder, installed if the admin listener will serve it (its config has a
/// token): before anything counts, since handles bind to the recorder of their time.
pub fn install_for(admin: &crate::config::AdminConfig) -> anyhow::Result<Option<PrometheusHandle>> {
    match &admin.token {
        Some(_) => install()
            .map(Some)
            .map_err(|err| err.context("installing the metrics recorder")),
        None => Ok(None),
    }
}

/// Installs the process's recorder; the handle renders the text exposition.
fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets(BUCKETS)?
        .install_recorder()?;
    describe();
    Ok(handle)
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "gancho_events_received_total",
        "Events stored, by source (duplicates not included)."
    );
    describe_counter!(
        "gancho_events_rejected_total",
        "Requests refused (unauthorized, content_type, too_large, timeout, malformed, invalid) and items put in quarantine (invalid), by source and reason."
    );
    describe_counter!(
        "gancho_events_duplicate_total",
        "Events received again (same source and id) and not stored twice, by source."
    );
    describe_gauge!(
        "gancho_quarantine_items",
        "Items in quarantine (gancho quarantine)."
    );
    describe_histogram!(
        "gancho_ingest_request_seconds",
        Unit::Seconds,
        "Time to answer a webhook request, storing included."
    );
    describe_gauge!(
        "gancho_index_lag_events",
        "Durable events the indexer has not reached."
    );
    describe_gauge!(
        "gancho_engine_lag_events",
        "Durable events the engine has not processed."
    );
    describe_counter!("gancho_rule_runs_total", "Rule runs, by rule.");
    describe_gauge!(
        "gancho_cluster_partition_owned",
        "Cluster mode: 1 for each partition this node runs, 0 for the others (partition=\"global\": the global lane)."
    );
    describe_gauge!(
        "gancho_cluster_partition_lag_events",
        "Cluster mode: events in the partition's stream its committed cursor has not reached, for each partition this node owns."
    );
    describe_counter!(
        "gancho_cluster_ownership_changes_total",
        "Cluster mode: partitions this node gained, handed over, lost (its lease ran out) or stopped (a refused commit, a failed store), by partition and change."
    );
    describe_gauge!(
        "gancho_cluster_nodes_alive",
        "Cluster mode: the nodes whose heartbeat is within the last lease."
    );
    describe_gauge!(
        "gancho_cluster_connected",
        "Cluster mode: 1 if this node's last membership tick reached NATS."
    );
    describe_counter!(
        "gancho_rule_errors_total",
        "Rule runs that failed, by rule."
    );
    describe_histogram!(
        "gancho_rule_seconds",
        Unit::Seconds,
        "Time of a rule run, by rule."
    );
    describe_gauge!(
        "gancho_timers_pending",
        "Pending timers and expectations (gancho timers)."
    );
    describe_gauge!(
        "gancho_outbox_pending",
        "Actions waiting to be delivered, by channel (gancho outbox)."
    );
    describe_gauge!(
        "gancho_dead_letters",
        "Actions that failed for good, by channel (gancho dead)."
    );
    describe_counter!(
        "gancho_deliveries_total",
        "Delivery tries, by channel and outcome (delivered, failed: to be retried, dead)."
    );
    describe_histogram!(
        "gancho_delivery_seconds",
        Unit::Seconds,
        "Time from an action's decision to its delivery, by channel."
    );
    describe_gauge!(
        "gancho_store_bytes",
        Unit::Bytes,
        "Size on disk of each database of the store (log, indexes, engine, traces)."
    );
    describe_gauge!(
        "gancho_store_failed",
        "1 when a database of the store failed (the daemon stops), else 0."
    );
}

/// The gauges read rather than counted, as read at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gauges {
    pub index_lag: u64,
    pub engine_lag: u64,
    pub quarantined: u64,
    pub timers: u64,
    /// Actions waiting, by channel (in [`Channel::ALL`]'s order).
    pub pending: [u64; 3],
    /// Dead letters, by channel (in [`Channel::ALL`]'s order).
    pub dead: [u64; 3],
    /// Bytes on disk, by database.
    pub store_bytes: [(&'static str, u64); 4],
    pub failed: bool,
}

/// Reads the gauges. The queue gauges walk their records: cheap while queues are short, as
/// they are when deliveries keep up.
pub fn read_gauges(
    data: &Data,
    store_dir: &Path,
    engine_cursor: u64,
) -> Result<Gauges, StoreError> {
    let log = data.store.status();
    let mut quarantined = 0u64;
    data.store.each_quarantined(0, |_| {
        quarantined += 1;
        Ok(())
    })?;
    let mut timers = 0u64;
    data.state.each_timer(None, |_| {
        timers += 1;
        Ok(())
    })?;
    let outbox = data.state.outbox();
    let mut pending = [0u64; 3];
    outbox.each_pending(0, |item| {
        pending[channel_index(item.action.action.channel())] += 1;
        Ok(())
    })?;
    let mut dead = [0u64; 3];
    outbox.each_dead(0, |letter| {
        dead[channel_index(letter.action.action.channel())] += 1;
        Ok(())
    })?;
    Ok(Gauges {
        index_lag: log.durable.saturating_sub(log.indexed),
        engine_lag: log.durable.saturating_sub(engine_cursor),
        quarantined,
        timers,
        pending,
        dead,
        store_bytes: store_bytes(store_dir),
        failed: data.store.failure().is_some() || data.state.failure().is_some(),
    })
}

/// Sets the gauges read at scrape time.
pub fn sample(data: &Data, store_dir: &Path, engine_cursor: u64) -> Result<(), StoreError> {
    let gauges = read_gauges(data, store_dir, engine_cursor)?;
    metrics::gauge!("gancho_index_lag_events").set(gauges.index_lag as f64);
    metrics::gauge!("gancho_engine_lag_events").set(gauges.engine_lag as f64);
    metrics::gauge!("gancho_quarantine_items").set(gauges.quarantined as f64);
    metrics::gauge!("gancho_timers_pending").set(gauges.timers as f64);
    for channel in Channel::ALL {
        let i = channel_index(channel);
        metrics::gauge!("gancho_outbox_pending", "channel" => channel.as_str())
            .set(gauges.pending[i] as f64);
        metrics::gauge!("gancho_dead_letters", "channel" => channel.as_str())
            .set(gauges.dead[i] as f64);
    }
    for (db, bytes) in gauges.store_bytes {
        metrics::gauge!("gancho_store_bytes", "db" => db).set(bytes as f64);
    }
    metrics::gauge!("gancho_store_failed").set(f64::from(u8::from(gauges.failed)));
    Ok(())
}

/// The bytes on disk of each database of the store folder `store_dir`, by name.
pub fn store_bytes(store_dir: &Path) -> [(&'static str, u64); 4] {
    ["log", "indexes", "engine", "traces"].map(|db| (db, folder_bytes(&store_dir.join(db))))
}

/// Where `channel` is in [`Gauges::pending`] and [`Gauges::dead`].
pub fn channel_index(channel: Channel) -> usize {
    match channel {
        Channel::Email => 0,
        Channel::Sms => 1,
        Channel::Http => 2,
    }
}

/// The bytes of the files under `dir` (what `du` counts, near enough).
fn folder_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => folder_bytes(&entry.path()),
            Ok(_) => entry.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}
