//! Following a partition's stream into a local store, against a real three-server JetStream
//! cluster on loopback: every event at its stream sequence, in order, none twice across a
//! restart of the follower, and nothing of another partition.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;

use async_nats::jetstream;
use gancho_cluster::{create_streams, fix_partitions, partition_for, publish_events};
use gancho_core::NewEvent;
use gancho_store::{EventQuery, Store, StoreConfig};
use gancho_testkit::nats::NatsCluster;
use tokio::sync::watch;

const PARTITIONS: u16 = 2;

fn event(i: usize) -> NewEvent {
    serde_json::from_value(serde_json::json!({
        "id": format!("ev-{i}"),
        "source": "mailjet",
        "type": "open",
        "time": "2026-11-30T10:00:00Z",
        "received": "2026-11-30T10:00:01Z",
        "keys": { "email": format!("user{}@example.com", i % 7) },
        "data": { "i": i },
    }))
    .unwrap()
}

fn partition(event: &NewEvent) -> u16 {
    partition_for(event, "email", PARTITIONS)
}

/// Every event of the local store, as (seq, id).
fn stored(store: &Store) -> Vec<(u64, String)> {
    store
        .events(&EventQuery {
            source: Some("mailjet".into()),
            kind: Some("open".into()),
            key: None,
            since: None,
            until: None,
            limit: 0,
        })
        .unwrap()
        .into_iter()
        .map(|e| (e.seq, e.id.as_str().to_owned()))
        .collect()
}

/// Follows `p` into the store at `dir` until the store holds `seq`, then stops the follower.
async fn follow_until(js: &jetstream::Context, p: u16, dir: &std::path::Path, seq: u64) -> u64 {
    let store = Store::open(dir, &StoreConfig::default()).unwrap();
    let (stop_tx, stop) = watch::channel(false);
    let following = {
        let (js, store) = (js.clone(), store.clone());
        tokio::spawn(async move { gancho_node::follow(&js, p, &store, stop).await })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while store.status().durable < seq {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the follower did not reach {seq}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_tx.send(true).unwrap();
    let end = following.await.unwrap().unwrap();
    assert!(store.wait_indexed(end, Duration::from_secs(10)));
    store.shutdown().unwrap();
    end
}

#[test]
fn a_follower_keeps_the_local_log_equal_to_its_partitions_stream() {
    let Some(cluster) = NatsCluster::start(3) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    rt.block_on(async {
        let js = jetstream_of(&cluster).await;
        fix_partitions(&js, PARTITIONS).await.unwrap();
        create_streams(&js, PARTITIONS).await.unwrap();
        let first: Vec<NewEvent> = (0..300).map(event).collect();
        let published = publish_events(&js, &first, partition).await.unwrap();
        // Partition 0's events, with the stream sequence each got.
        let mut expected: Vec<(u64, String)> = first
            .iter()
            .zip(&published)
            .filter(|(_, p)| p.partition == 0)
            .map(|(e, p)| (p.sequence, e.id.as_str().to_owned()))
            .collect();
        // A message deleted from the stream (as a purge would): its seq stays empty locally,
        // and every later event keeps its stream seq.
        let gone = expected.remove(2).0;
        let stream = js
            .get_stream(gancho_cluster::event_stream(0))
            .await
            .unwrap();
        assert!(stream.delete_message(gone).await.unwrap());
        let last = expected.last().unwrap().0;
        assert_eq!(follow_until(&js, 0, dir.path(), last).await, last);
        {
            let store = Store::open(dir.path(), &StoreConfig::default()).unwrap();
            assert_eq!(stored(&store), expected);
            store.shutdown().unwrap();
        }

        // More events while no one follows; a follower started again reads on from the
        // local log's end, and stores none twice.
        let more: Vec<NewEvent> = (300..400).map(event).collect();
        let published = publish_events(&js, &more, partition).await.unwrap();
        expected.extend(
            more.iter()
                .zip(&published)
                .filter(|(_, p)| p.partition == 0)
                .map(|(e, p)| (p.sequence, e.id.as_str().to_owned())),
        );
        let last = expected.last().unwrap().0;
        assert_eq!(follow_until(&js, 0, dir.path(), last).await, last);
        let store = Store::open(dir.path(), &StoreConfig::default()).unwrap();
        assert_eq!(stored(&store), expected);
        // The stream's seqs are the store's: the deleted message's seq holds nothing.
        assert_eq!(store.last_seq().unwrap(), last);
        assert_eq!(store.pruned(), 1);
        assert_eq!(store.get(gone).unwrap(), None);
    });
}
