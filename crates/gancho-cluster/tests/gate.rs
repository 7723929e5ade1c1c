//! The checks at start against real nats-server clusters on loopback: 2.15 with
//! `sync_interval: always` passes; without it, or a server older than 2.14, is refused.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use gancho_cluster::{ClusterConfig, ClusterError, check_servers, connect};
use gancho_testkit::nats::{NatsCluster, NatsOptions, old_binary};

#[test]
fn a_cluster_of_2_15_syncing_every_write_passes() {
    let Some(cluster) = NatsCluster::start(3) else {
        return;
    };
    let config = config_for(&cluster);
    runtime().block_on(async {
        let reports = check_servers(&config).await.unwrap();
        assert_eq!(reports.len(), 3);
        for report in &reports {
            assert!(report.version.starts_with("2.1"), "{report:?}");
            assert!(report.sync_always && report.file_storage && report.jetstream);
        }
        let client = connect(&config, None).await.unwrap();
        assert!(client.server_info().jetstream);
    });
}

#[test]
fn servers_that_ack_before_fsync_are_refused() {
    let options = NatsOptions {
        no_sync_always: true,
        ..NatsOptions::default()
    };
    let Some(cluster) = NatsCluster::start_with(3, options) else {
        return;
    };
    let config = config_for(&cluster);
    let err = runtime().block_on(check_servers(&config)).unwrap_err();
    assert!(matches!(err, ClusterError::NotSyncAlways { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("n1 (http://127.0.0.1:"), "{text}");
    assert!(text.contains("sync_interval: always"), "{text}");
}

#[test]
fn a_server_older_than_2_14_is_refused() {
    let Some(binary) = old_binary() else {
        return;
    };
    let options = NatsOptions {
        binary: Some(binary),
        ..NatsOptions::default()
    };
    let Some(cluster) = NatsCluster::start_with(3, options) else {
        return;
    };
    let config = config_for(&cluster);
    runtime().block_on(async {
        let err = check_servers(&config).await.unwrap_err();
        assert!(matches!(err, ClusterError::TooOld { .. }), "{err}");
        assert!(err.to_string().contains("2.12"), "{err}");
        // The client connection checks the version too.
        let err = connect(&config, None).await.unwrap_err();
        assert!(matches!(err, ClusterError::TooOld { .. }), "{err}");
    });
}

#[test]
fn an_unreachable_monitor_is_named() {
    let config: ClusterConfig = toml::from_str(
        "nats = [\"nats://127.0.0.1:1\"]\nnode = \"n1\"\nmonitor = [\"http://127.0.0.1:1\"]\n",
    )
    .unwrap();
    runtime().block_on(async {
        let err = check_servers(&config).await.unwrap_err();
        assert!(matches!(err, ClusterError::Monitor { .. }), "{err}");
        assert!(err.to_string().contains("http://127.0.0.1:1"), "{err}");
        let err = connect(&config, None).await.unwrap_err();
        assert!(matches!(err, ClusterError::Connect { .. }), "{err}");
    });
}

#[test]
fn a_cluster_peer_left_out_of_monitor_is_refused() {
    let Some(cluster) = NatsCluster::start(3) else {
        return;
    };
    let mut config = config_for(&cluster);
    config.monitor.pop();
    let err = runtime().block_on(check_servers(&config)).unwrap_err();
    assert!(
        matches!(
            err,
            ClusterError::UncheckedServers {
                checked: 2,
                cluster_size: 3
            }
        ),
        "{err}"
    );
}
