//! A partition's retention, against a real three-server JetStream cluster on loopback and a
//! real HTTP receiver: its owner prunes its log and purges the partition's stream below what
//! the log keeps, never an event the engine has not decided; a node new to the partition then
//! takes it over from the purged stream and goes on, with nothing delivered again.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use gancho_cluster::{event_stream, publish_events};
use gancho_engine::EngineConfig;
use gancho_node::{OwnerConfig, PrunePartition, RetentionPolicy};
use gancho_state::EngineState;
use gancho_store::{PruneRequest, Store};
use gancho_testkit::HttpReceiver;

/// Every processed event no timer refers to is past its retention (the binary's prune, with a
/// retention of zero, less the other records).
#[derive(Debug)]
struct PruneProcessed;

impl PrunePartition for PruneProcessed {
    fn prune(&self, store: &Store, state: &EngineState) -> Result<String, String> {
        let processed = state.durable_cursor();
        let keep = state.referenced_seqs().map_err(|e| e.to_string())?;
        let report = store
            .prune(&PruneRequest {
                events_before_ms: Some(i64::MAX),
                processed,
                keep,
                quarantine_before_ms: None,
            })
            .map_err(|e| e.to_string())?;
        Ok(format!("{} events", report.events))
    }
}

/// An owner's settings in `dir` with a rule that calls `receiver` for each open, pruning
/// with `prune` every 200 ms.
fn calling(
    receiver: &HttpReceiver,
    dir: &std::path::Path,
    prune: Option<Arc<dyn PrunePartition>>,
) -> OwnerConfig {
    let rules = rules_in(dir);
    std::fs::write(
        rules.join("open.rhai"),
        format!(
            "const ON = [\"mailjet.open\"];\n\
             http(#{{ url: \"{}\", json: #{{ opened: event.keys.email }} }});\n",
            receiver.url("/hook")
        ),
    )
    .unwrap();
    OwnerConfig {
        retention: RetentionPolicy {
            prune,
            first_after: Duration::from_millis(200),
            every: Duration::from_millis(200),
        },
        ..owner_config(dir, EngineConfig::new(&rules))
    }
}

#[test]
fn an_owner_purges_its_stream_below_what_its_log_keeps_and_a_new_owner_reads_on_from_there() {
    let Some((_cluster, rt, js)) = one_partition() else {
        return;
    };
    let receiver = HttpReceiver::ok();
    let dir = tempfile::tempdir().unwrap();
    let config = calling(&receiver, dir.path(), Some(Arc::new(PruneProcessed)));
    let start = |node: &str| start_owner(&rt, &js, 0, node, &dir.path().join(node), &config);
    // (first sequence, messages) of the partition's stream.
    let stream = || {
        rt.block_on(async {
            let mut stream = js.get_stream(event_stream(0)).await.unwrap();
            let state = &stream.info().await.unwrap().state;
            (state.first_sequence, state.messages)
        })
    };

    let owner = start("n1");
    let events: Vec<_> = (0..20).map(open).collect();
    rt.block_on(publish_events(&js, &events, |_| 0)).unwrap();
    wait_until("20 calls", || receiver.requests().len() == 20);
    // Decided and delivered: pruned from the log, then purged from the stream.
    wait_until("the stream purged", || stream() == (21, 0));
    assert_eq!(owner.store().first_stored_seq().unwrap(), None);
    assert!(owner.state().durable_cursor() >= 20);
    rt.block_on(owner.stop());

    // More events, and a node new to the partition: it reads the stream from 21, and decides
    // only the new ones.
    let more: Vec<_> = (20..25).map(open).collect();
    rt.block_on(publish_events(&js, &more, |_| 0)).unwrap();
    let owner = start("n2");
    wait_until("25 calls", || receiver.requests().len() == 25);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(receiver.requests().len(), 25, "delivered again");
    let mut opened: Vec<String> = receiver
        .requests()
        .iter()
        .map(|r| r.json()["opened"].as_str().unwrap().to_owned())
        .collect();
    opened.sort();
    opened.dedup();
    assert_eq!(opened.len(), 25);
    wait_until("the new events purged too", || stream() == (26, 0));
    rt.block_on(owner.stop());
}

#[test]
fn without_a_retention_nothing_is_purged() {
    let Some((_cluster, rt, js)) = one_partition() else {
        return;
    };
    let receiver = HttpReceiver::ok();
    let dir = tempfile::tempdir().unwrap();
    let config = calling(&receiver, dir.path(), None);
    let owner = start_owner(&rt, &js, 0, "n1", &dir.path().join("n1"), &config);
    let events: Vec<_> = (0..5).map(open).collect();
    rt.block_on(publish_events(&js, &events, |_| 0)).unwrap();
    wait_until("5 calls", || receiver.requests().len() == 5);
    std::thread::sleep(Duration::from_millis(500));
    let first = rt.block_on(async {
        let mut stream = js.get_stream(event_stream(0)).await.unwrap();
        stream.info().await.unwrap().state.first_sequence
    });
    assert_eq!(first, 1);
    assert_eq!(owner.store().first_stored_seq().unwrap(), Some(1));
    rt.block_on(owner.stop());
}
