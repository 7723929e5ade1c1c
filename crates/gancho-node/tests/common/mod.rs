//! What the node's tests share: a runtime, a client of a test cluster, a state change.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use async_nats::jetstream;
use gancho_cluster::ClusterConfig;
use gancho_state::{Change, StateValue};
use gancho_testkit::nats::NatsCluster;

/// A runtime whose workers drive the NATS client while the engine state's applier thread
/// blocks on it.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A JetStream context on `cluster`, connected through the checks.
pub async fn jetstream_of(cluster: &NatsCluster) -> jetstream::Context {
    let config: ClusterConfig =
        toml::from_str(&format!("{}node = \"n1\"\n", cluster.cluster_keys())).unwrap();
    jetstream::new(gancho_cluster::connect(&config, None).await.unwrap())
}

/// A three-server cluster with the streams of one partition, a runtime, and a client; `None`
/// when nats-server is not installed (the test then skips, saying so).
pub fn one_partition() -> Option<(NatsCluster, tokio::runtime::Runtime, jetstream::Context)> {
    partitions(1)
}

/// [`one_partition`] with `n` partitions (and the global lane).
pub fn partitions(n: u16) -> Option<(NatsCluster, tokio::runtime::Runtime, jetstream::Context)> {
    let cluster = NatsCluster::start(3)?;
    let rt = runtime();
    let js = rt.block_on(async {
        let js = jetstream_of(&cluster).await;
        gancho_cluster::fix_partitions(&js, n).await.unwrap();
        gancho_cluster::create_streams(&js, n).await.unwrap();
        js
    });
    Some((cluster, rt, js))
}

/// Rule `r`'s state under `key`, set to `key`.
pub fn put(key: &str) -> Vec<Change> {
    vec![Change::PutState {
        rule: "r".to_owned(),
        key: key.to_owned(),
        value: StateValue {
            value: serde_json::json!(key),
            expires_ms: None,
        },
    }]
}

/// A Mailjet open of `u{i}@x`, with its own id.
pub fn open(i: usize) -> gancho_core::NewEvent {
    serde_json::from_value(serde_json::json!({
        "id": format!("open-{i}"),
        "source": "mailjet",
        "type": "open",
        "time": "2026-11-30T10:00:00Z",
        "received": "2026-11-30T10:00:01Z",
        "keys": { "email": format!("u{i}@x") },
        "data": {},
    }))
    .unwrap()
}

/// Waits until `done`, for 90 s at most (then fails, saying `what`).
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// `dir/rules`, created.
pub fn rules_in(dir: &Path) -> PathBuf {
    let rules = dir.join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    rules
}

/// A partition owner's settings for the tests: `engine`, e-mail and SMS to files in `dir/out`,
/// HTTP to loopback allowed, the default store and snapshots.
pub fn owner_config(dir: &Path, engine: gancho_engine::EngineConfig) -> gancho_node::OwnerConfig {
    let mut actions = gancho_actions::ActionsConfig::local(dir.join("out"));
    actions.http.allow_private = true;
    gancho_node::OwnerConfig {
        store: gancho_state::StoreConfig::default(),
        engine,
        actions,
        snapshots: gancho_node::SnapshotPolicy::default(),
        retention: gancho_node::RetentionPolicy::default(),
    }
}

/// Starts partition `p`'s owner as `node` from `dir`, on the system clock; a failure fails the
/// test.
pub fn start_owner(
    rt: &tokio::runtime::Runtime,
    js: &jetstream::Context,
    p: u16,
    node: &str,
    dir: &Path,
    config: &gancho_node::OwnerConfig,
) -> gancho_node::PartitionOwner {
    rt.block_on(gancho_node::PartitionOwner::start(
        js,
        p,
        node,
        dir,
        config.clone(),
        std::sync::Arc::new(gancho_core::SystemClock),
    ))
    .unwrap()
}
