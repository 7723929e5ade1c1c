//! The admin listener of a cluster node (`[admin]` with a token, in cluster mode): the probes,
//! `/metrics` with the cluster's series, and `/admin/cluster`. The single-node routes (the
//! listings, rules, the dashboard) read the one store a single node has and answer through the
//! control socket's functions; a cluster node holds a store per partition it runs, and those
//! routes are not served in cluster mode yet (issue 17).
//!
//! Series a cluster node adds (besides the ingress, engine and actions series the crates count):
//! - `gancho_cluster_partition_owned{partition}`: 1 for each partition this node runs, 0 for
//!   the others (the global lane is `partition="global"`);
//! - `gancho_cluster_partition_lag_events{partition}`: for each partition this node owns, the
//!   events in its stream that its committed cursor has not reached (read from NATS); 0 for
//!   the others;
//! - `gancho_cluster_ownership_changes_total{partition, change}`: counted by the node's loop
//!   (`gancho-node`): `gained`, `handed_over`, `lost` (its lease ran out), `stopped` (it could not
//!   go on: a refused commit, a failed store);
//! - `gancho_cluster_nodes_alive`, `gancho_cluster_connected`.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use async_nats::jetstream;
use gancho_cluster::{ClusterStatus, lane_name};
use gancho_node::NodeStatus;
use serde_json::json;
use tokio::sync::watch;

use super::{AdminServer, error, sha256, unauthorized};
use crate::config::AdminConfig;
use gancho_ingress::Readiness;

/// The cluster's gauges are read from NATS at most this often.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);

struct State {
    token_digest: Vec<u8>,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    metrics_public: bool,
    readiness: Readiness,
    js: jetstream::Context,
    /// The NATS client's runtime: reads of the cluster's status run there.
    nats: tokio::runtime::Handle,
    node: String,
    status: watch::Receiver<NodeStatus>,
    /// The cluster's status as last read, and when.
    sampled: tokio::sync::Mutex<Option<(Instant, ClusterStatus)>>,
    started: Instant,
}

/// What a cluster node's admin listener reads.
pub struct ClusterSources {
    pub readiness: Readiness,
    pub js: jetstream::Context,
    pub nats: tokio::runtime::Handle,
    pub node: String,
    pub status: watch::Receiver<NodeStatus>,
}

/// Serves a cluster node's admin routes on `listener`, if the config has a token; `None`
/// otherwise.
pub fn start_cluster(
    listener: TcpListener,
    config: &AdminConfig,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    sources: ClusterSources,
) -> std::io::Result<Option<AdminServer>> {
    let Some(token) = config.token.as_ref().and_then(|t| t.expose()) else {
        return Ok(None);
    };
    let local_addr = listener.local_addr()?;
    let state = web::Data::new(State {
        token_digest: sha256(token.as_bytes()),
        metrics,
        metrics_public: config.metrics_public,
        readiness: sources.readiness,
        js: sources.js,
        nats: sources.nats,
        node: sources.node,
        status: sources.status,
        sampled: tokio::sync::Mutex::new(None),
        started: Instant::now(),
    });
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .route("/metrics", web::get().to(serve_metrics))
            .route("/admin/cluster", web::get().to(cluster))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(5)
    .listen(listener)?
    .run();
    Ok(Some(AdminServer { server, local_addr }))
}

fn authorized(request: &HttpRequest, state: &State) -> bool {
    super::bearer_matches(request, &state.token_digest)
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

async fn readyz(state: web::Data<State>) -> HttpResponse {
    match (state.readiness)() {
        Ok(()) => HttpResponse::Ok().json(json!({ "ready": true })),
        Err(reason) => HttpResponse::ServiceUnavailable().json(json!({
            "ready": false,
            "reason": reason,
        })),
    }
}

/// The cluster's status, read from NATS at most every [`SAMPLE_EVERY`].
async fn cluster_status(state: &State) -> Result<ClusterStatus, String> {
    let mut sampled = state.sampled.lock().await;
    if let Some((at, status)) = sampled.as_ref()
        && at.elapsed() < SAMPLE_EVERY
    {
        return Ok(status.clone());
    }
    let js = state.js.clone();
    let read = state
        .nats
        .spawn(async move { gancho_cluster::cluster_status(&js).await });
    let status = tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .map_err(|_| "reading the cluster's status from NATS timed out".to_owned())?
        .map_err(|err| err.to_string())?
        .map_err(|err| err.to_string())?;
    *sampled = Some((Instant::now(), status.clone()));
    Ok(status)
}

/// Sets the cluster's gauges from `status` and what this node runs.
fn set_gauges(state: &State, status: &ClusterStatus) {
    let node = state.status.borrow().clone();
    metrics::gauge!("gancho_cluster_connected").set(f64::from(u8::from(node.connected)));
    metrics::gauge!("gancho_cluster_nodes_alive").set(status.nodes.len() as f64);
    for p in status.partition_status.iter().chain(&status.global) {
        let lane = lane_name(p.partition);
        let owned = node.running.contains(&p.partition);
        metrics::gauge!("gancho_cluster_partition_owned", "partition" => lane.clone())
            .set(f64::from(u8::from(owned)));
        // Each partition's lag on its owner, 0 on the other nodes (one that lost it does not
        // keep reporting its last value): the sum over the nodes is the cluster's lag.
        let lag = if p.owner.as_deref() == Some(state.node.as_str()) {
            p.lag
        } else {
            0
        };
        metrics::gauge!("gancho_cluster_partition_lag_events", "partition" => lane).set(lag as f64);
    }
}

async fn serve_metrics(request: HttpRequest, state: web::Data<State>) -> HttpResponse {
    if !state.metrics_public && !authorized(&request, &state) {
        return unauthorized();
    }
    match cluster_status(&state).await {
        Ok(status) => set_gauges(&state, &status),
        // The counters are still worth serving; the gauges keep their last values.
        Err(reason) => tracing::warn!(%reason, "metrics: the cluster's gauges were not read"),
    }
    state.metrics.run_upkeep();
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render())
}

/// This node (its name, what it runs, whether its last tick reached NATS) and the cluster as
/// `gancho cluster status --json` shows it.
async fn cluster(request: HttpRequest, state: web::Data<State>) -> HttpResponse {
    if !authorized(&request, &state) {
        return unauthorized();
    }
    let node = state.status.borrow().clone();
    match cluster_status(&state).await {
        Ok(status) => HttpResponse::Ok().json(json!({
            "node": state.node,
            "running": node.running.iter().map(|p| lane_name(*p)).collect::<Vec<_>>(),
            "connected": node.connected,
            "uptime_seconds": state.started.elapsed().as_secs(),
            "version": env!("CARGO_PKG_VERSION"),
            "cluster": status,
        })),
        Err(reason) => error(StatusCode::SERVICE_UNAVAILABLE, reason),
    }
}
