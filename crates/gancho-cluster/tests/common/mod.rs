//! What the cluster crate's tests share: a runtime, and a client of a test cluster.
#![allow(dead_code, clippy::unwrap_used)]

use async_nats::jetstream;
use gancho_cluster::ClusterConfig;
use gancho_testkit::nats::NatsCluster;

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// `[cluster]` for `cluster`, as node `n1`.
pub fn config_for(cluster: &NatsCluster) -> ClusterConfig {
    toml::from_str(&format!("{}node = \"n1\"\n", cluster.cluster_keys())).unwrap()
}

/// A JetStream context on `cluster`, connected through the checks.
pub async fn jetstream_of(cluster: &NatsCluster) -> jetstream::Context {
    jetstream::new(
        gancho_cluster::connect(&config_for(cluster), None)
            .await
            .unwrap(),
    )
}
