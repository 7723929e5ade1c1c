//! Streams and publishing against a real three-server JetStream cluster on loopback: the
//! partition count is fixed at creation, events land in their partitions' streams once, a
//! duplicate is believed only when the stream holds it, and one server lost loses nothing.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use async_nats::jetstream;
use common::*;
use gancho_cluster::{
    ClusterError, PartitionReader, create_streams, event_stream, event_subject, fix_partitions,
    message_id, partition_for, publish_events, recorded_partitions,
};
use gancho_core::NewEvent;
use gancho_testkit::nats::NatsCluster;

const PARTITIONS: u16 = 4;

fn event(i: usize) -> NewEvent {
    serde_json::from_value(serde_json::json!({
        "id": format!("ev-{i}"),
        "source": "mailjet",
        "type": "open",
        "time": "2026-11-30T10:00:00Z",
        "received": "2026-11-30T10:00:01Z",
        "keys": { "email": format!("user{}@example.com", i % 10) },
        "data": { "i": i },
    }))
    .unwrap()
}

async fn stored(js: &jetstream::Context, p: u16) -> u64 {
    let mut stream = js.get_stream(event_stream(p)).await.unwrap();
    stream.info().await.unwrap().state.messages
}

async fn stored_in_all(js: &jetstream::Context) -> u64 {
    let mut total = 0;
    for p in 0..PARTITIONS {
        total += stored(js, p).await;
    }
    total
}

#[test]
fn the_partition_count_is_fixed_when_the_cluster_is_created() {
    let Some(cluster) = NatsCluster::start(3) else {
        return;
    };
    runtime().block_on(async {
        let js = jetstream_of(&cluster).await;
        assert_eq!(recorded_partitions(&js).await.unwrap(), None);
        fix_partitions(&js, PARTITIONS).await.unwrap();
        // A second node with the same count, or the same node again: fine.
        fix_partitions(&js, PARTITIONS).await.unwrap();
        assert_eq!(recorded_partitions(&js).await.unwrap(), Some(PARTITIONS));
        // The cluster's secret: made once, the same for every node that asks.
        let secret = gancho_cluster::cluster_secret(&js).await.unwrap();
        let other = jetstream_of(&cluster).await;
        assert_eq!(
            gancho_cluster::cluster_secret(&other).await.unwrap(),
            secret
        );
        assert_ne!(secret, [0u8; 32]);
        let err = fix_partitions(&js, 8).await.unwrap_err();
        assert!(
            matches!(
                err,
                ClusterError::PartitionsChanged {
                    configured: 8,
                    recorded: 4
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("set partitions = 4"), "{err}");

        create_streams(&js, PARTITIONS).await.unwrap();
        create_streams(&js, PARTITIONS).await.unwrap();
        for p in 0..PARTITIONS {
            for name in [event_stream(p), gancho_cluster::journal_stream(p)] {
                let mut stream = js.get_stream(&name).await.unwrap();
                let info = stream.info().await.unwrap();
                assert_eq!(info.config.num_replicas, 3, "{name}");
                assert_eq!(
                    info.config.storage,
                    jetstream::stream::StorageType::File,
                    "{name}"
                );
            }
        }
    });
}

#[test]
fn events_land_once_in_their_partitions_and_survive_a_lost_server() {
    let Some(mut cluster) = NatsCluster::start(3) else {
        return;
    };
    let rt = runtime();
    let js = rt.block_on(jetstream_of(&cluster));
    rt.block_on(async {
        fix_partitions(&js, PARTITIONS).await.unwrap();
        create_streams(&js, PARTITIONS).await.unwrap();
    });
    let partition = |e: &NewEvent| partition_for(e, "email", PARTITIONS);
    let events: Vec<NewEvent> = (0..200).map(event).collect();
    let first = rt
        .block_on(publish_events(&js, &events, partition))
        .unwrap();
    assert_eq!(first.len(), 200);
    assert!(first.iter().all(|p| !p.duplicate));
    // Same e-mail, same partition.
    for (e, p) in events.iter().zip(&first) {
        assert_eq!(p.partition, partition(e));
    }
    // Published again (a provider's retry, on any node): duplicates, each confirmed at the
    // sequence it was first stored at.
    let again = rt
        .block_on(publish_events(&js, &events, partition))
        .unwrap();
    for (a, b) in first.iter().zip(&again) {
        assert!(b.duplicate);
        assert_eq!((a.partition, a.sequence), (b.partition, b.sequence));
    }
    let total = rt.block_on(stored_in_all(&js));
    assert_eq!(total, 200);

    // A "duplicate" is believed only where the stream holds that message: not at sequence 0
    // (what servers before 2.11 could answer across a leader change), not at a sequence that
    // holds another message, not past the end.
    rt.block_on(async {
        let p = first[3].partition;
        let id = message_id(&events[3]);
        gancho_cluster::confirm_duplicate(&js, p, &id, first[3].sequence)
            .await
            .unwrap();
        let other = first
            .iter()
            .find(|x| x.partition == p && x.sequence != first[3].sequence);
        for sequence in [0, other.unwrap().sequence, 1_000_000] {
            let err = gancho_cluster::confirm_duplicate(&js, p, &id, sequence)
                .await
                .unwrap_err();
            assert!(
                matches!(err, ClusterError::DuplicateNotStored { .. }),
                "{err}"
            );
        }
    });

    // A stored message reads back as the event it was.
    rt.block_on(async {
        let stream = js
            .get_stream(event_stream(first[7].partition))
            .await
            .unwrap();
        let message = stream.get_raw_message(first[7].sequence).await.unwrap();
        let back: NewEvent = serde_json::from_slice(&message.payload).unwrap();
        assert_eq!(back.id.as_str(), "ev-7");
        assert_eq!(
            message
                .headers
                .get(async_nats::header::NATS_MESSAGE_ID)
                .unwrap()
                .as_str(),
            message_id(&events[7])
        );
    });

    // One of three servers killed: publishing goes on (two of three hold each write), and
    // nothing acknowledged is lost once it is back.
    cluster.kill(0);
    let more: Vec<NewEvent> = (200..300).map(event).collect();
    let published = rt.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match publish_events(&js, &more, partition).await {
                Ok(published) => break published,
                Err(err) if tokio::time::Instant::now() < deadline => {
                    eprintln!("retrying after a lost server: {err}");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(err) => panic!("{err}"),
            }
        }
    });
    assert_eq!(published.len(), 100);
    cluster.restart(0);
    cluster.wait_healthy(0, Duration::from_secs(30));
    let total = rt.block_on(stored_in_all(&js));
    assert_eq!(total, 300);
    // And they are the 300 events, each once (a total could hide one lost and one twice).
    let mut ids = std::collections::BTreeSet::new();
    rt.block_on(async {
        for p in 0..PARTITIONS {
            let mut reader = PartitionReader::open(&js, p, 0).await.unwrap();
            while let Some((_, event)) = reader.next_within(Duration::from_secs(2)).await.unwrap() {
                assert!(
                    ids.insert(event.id.as_str().to_owned()),
                    "{} twice",
                    event.id.as_str()
                );
            }
        }
    });
    let expected: std::collections::BTreeSet<String> =
        (0..300).map(|i| format!("ev-{i}")).collect();
    assert_eq!(ids, expected);
}

#[test]
fn a_stream_made_before_without_three_replicas_on_file_is_refused() {
    let Some(cluster) = NatsCluster::start(3) else {
        return;
    };
    runtime().block_on(async {
        let js = jetstream_of(&cluster).await;
        js.get_or_create_stream(jetstream::stream::Config {
            name: event_stream(0),
            subjects: vec![event_subject(0)],
            num_replicas: 1,
            storage: jetstream::stream::StorageType::Memory,
            ..Default::default()
        })
        .await
        .unwrap();
        let err = create_streams(&js, PARTITIONS).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("GANCHO_EV_0") && text.contains("1 replica(s)"),
            "{text}"
        );
    });
}

#[test]
fn an_owner_reads_its_partitions_events_in_order_from_its_cursor() {
    let Some(cluster) = NatsCluster::start(3) else {
        return;
    };
    runtime().block_on(async {
        let js = jetstream_of(&cluster).await;
        fix_partitions(&js, PARTITIONS).await.unwrap();
        create_streams(&js, PARTITIONS).await.unwrap();
        // Everything in partition 2, so the sequences are 1..=50.
        let events: Vec<NewEvent> = (0..50).map(event).collect();
        publish_events(&js, &events, |_| 2).await.unwrap();

        let mut reader = PartitionReader::open(&js, 2, 20).await.unwrap();
        for expected in 21..=50u64 {
            let (sequence, event) = reader
                .next_within(Duration::from_secs(10))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(sequence, expected);
            assert_eq!(event.id.as_str(), format!("ev-{}", expected - 1));
        }
        // Caught up: nothing more, until more arrives.
        assert!(
            reader
                .next_within(Duration::from_millis(300))
                .await
                .unwrap()
                .is_none()
        );
        publish_events(&js, &[event(50)], |_| 2).await.unwrap();
        let (sequence, event) = reader
            .next_within(Duration::from_secs(10))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((sequence, event.id.as_str()), (51, "ev-50"));

        // Something that is not an event, in the stream: named by its sequence, not skipped.
        js.publish(event_subject(2), "not an event".into())
            .await
            .unwrap()
            .await
            .unwrap();
        let err = reader
            .next_within(Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                ClusterError::Undecodable {
                    partition: 2,
                    sequence: 52,
                    ..
                }
            ),
            "{err}"
        );
    });
}
