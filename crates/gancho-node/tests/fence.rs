//! The engine state's commits fenced by a partition's shared journal, against a real
//! three-server JetStream cluster on loopback: the owner's commits reach the journal before
//! they are durable locally; a node that opened the journal before another wrote to it has its
//! commit refused, its state fails, and nothing of the refused commit becomes durable.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use gancho_cluster::{ClusterConfig, Journal, create_streams, fix_partitions, journal_stream};
use gancho_node::JournalFence;
use gancho_state::{Change, EngineState, StateValue, StoreConfig};
use gancho_testkit::nats::NatsCluster;

async fn jetstream_of(cluster: &NatsCluster) -> jetstream::Context {
    let config: ClusterConfig =
        toml::from_str(&format!("{}node = \"n1\"\n", cluster.cluster_keys())).unwrap();
    jetstream::new(gancho_cluster::connect(&config, None).await.unwrap())
}

fn put(key: &str) -> Vec<Change> {
    vec![Change::PutState {
        rule: "r".to_owned(),
        key: key.to_owned(),
        value: StateValue {
            value: serde_json::json!({ "seen": key }),
            expires_ms: None,
        },
    }]
}

#[test]
fn a_stale_owners_commit_is_refused_and_never_becomes_durable() {
    let Some(cluster) = NatsCluster::start(3) else {
        return;
    };
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let js = rt.block_on(async {
        let js = jetstream_of(&cluster).await;
        fix_partitions(&js, 1).await.unwrap();
        create_streams(&js, 1).await.unwrap();
        js
    });
    // Both open the journal where it ends: B paused, A took the partition over.
    let (a_journal, b_journal) = rt.block_on(async {
        (
            Journal::open(&js, 0, "a").await.unwrap(),
            Journal::open(&js, 0, "b").await.unwrap(),
        )
    });
    let config = StoreConfig::default();
    let fence = |journal| Arc::new(JournalFence::new(journal, rt.handle().clone()));
    let a = EngineState::open_fenced(a_dir.path(), &config, fence(a_journal)).unwrap();
    let b = EngineState::open_fenced(b_dir.path(), &config, fence(b_journal)).unwrap();

    a.commit(put("first"), 5).unwrap();
    assert!(a.wait_durable(Duration::from_secs(30)));
    assert_eq!(a.durable_cursor(), 5);

    // B's commit: refused by the journal, B's state fails, nothing of it is durable.
    b.commit(put("stale"), 7).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while b.failure().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "B's commit was not refused"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        b.failure()
            .unwrap()
            .contains("another node owns the partition"),
        "{:?}",
        b.failure()
    );
    assert_eq!(b.durable_cursor(), 0);
    assert!(b.commit(put("later"), 8).is_err());

    // A goes on; the journal holds A's two commits only, each with its cursor.
    a.commit(put("second"), 9).unwrap();
    assert!(a.wait_durable(Duration::from_secs(30)));
    assert_eq!(a.durable_cursor(), 9);
    rt.block_on(async {
        let mut stream = js.get_stream(journal_stream(0)).await.unwrap();
        assert_eq!(stream.info().await.unwrap().state.messages, 2);
        let last = Journal::open(&js, 0, "c").await.unwrap();
        assert_eq!(last.cursor(), 9);
        let message = stream.get_raw_message(2).await.unwrap();
        let payload = String::from_utf8_lossy(&message.payload).into_owned();
        assert!(payload.contains("second"), "{payload}");
    });
}
