//! A partition's snapshots, against a real three-server JetStream cluster on loopback and a real
//! HTTP receiver: its owner stores snapshots as its journal grows and trims the journal below
//! them, and a node new to the partition restores the latest one and replays only the tail
//! after it (the trimmed journal alone could not rebuild it), holding every decision and
//! delivery of the old owner: nothing is delivered again, and new events go on.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use gancho_cluster::{journal_stream, latest_snapshot, publish_events};
use gancho_engine::EngineConfig;
use gancho_node::{OwnerConfig, SnapshotPolicy};
use gancho_testkit::HttpReceiver;

#[test]
fn a_new_owner_restores_the_latest_snapshot_and_replays_only_the_journal_after_it() {
    let Some((_cluster, rt, js)) = one_partition() else {
        return;
    };
    let receiver = HttpReceiver::ok();
    let dir = tempfile::tempdir().unwrap();
    let rules = rules_in(dir.path());
    // Each open is counted in the rule's state and sent once.
    std::fs::write(
        rules.join("open.rhai"),
        format!(
            "const ON = [\"mailjet.open\"];\n\
             let n = get_state(\"opens\") ?? 0;\nset_state(\"opens\", n + 1);\n\
             http(#{{ url: \"{}\", json: #{{ opened: event.keys.email, n: n + 1 }} }});\n",
            receiver.url("/hook")
        ),
    )
    .unwrap();
    let config = OwnerConfig {
        snapshots: SnapshotPolicy {
            every_messages: 4,
            every: Duration::from_secs(3600),
            check: Duration::from_millis(100),
        },
        ..owner_config(dir.path(), EngineConfig::new(&rules))
    };
    let start = |node: &str| start_owner(&rt, &js, 0, node, &dir.path().join(node), &config);
    let journal_first = || {
        rt.block_on(async {
            let mut stream = js.get_stream(journal_stream(0)).await.unwrap();
            stream.info().await.unwrap().state.first_sequence
        })
    };
    let snapshot = || rt.block_on(latest_snapshot(&js, 0)).unwrap();

    // Events one at a time, each its own commits and deliveries (journal messages), until
    // two snapshots were taken and the journal trimmed below the first.
    let owner = start("n1");
    let mut sent = 0;
    while journal_first() == 1 {
        assert!(
            sent < 200,
            "no snapshot trimmed the journal: {:?}",
            snapshot()
        );
        rt.block_on(publish_events(&js, &[open(sent)], |_| 0))
            .unwrap();
        sent += 1;
        wait_until("the open's call", || receiver.requests().len() == sent);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !owner
        .state()
        .outbox()
        .pending_actions(10)
        .unwrap()
        .is_empty()
    {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    rt.block_on(owner.stop());
    let latest = snapshot().unwrap();
    let first = journal_first();
    assert!(latest.journal_seq >= first, "{latest:?} first {first}");
    eprintln!("{sent} events; snapshot {latest:?}; journal from {first}");

    // A node new to the partition: the snapshot, then the tail.
    let owner = start("n2");
    assert_eq!(owner.state().durable_cursor(), sent as u64);
    assert_eq!(
        owner.state().state("open", "opens").unwrap().unwrap().value,
        serde_json::json!(sent)
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(receiver.requests().len(), sent, "delivered again");
    // And goes on from there.
    rt.block_on(publish_events(&js, &[open(sent)], |_| 0))
        .unwrap();
    wait_until("the next open's call", || {
        receiver.requests().len() == sent + 1
    });
    let last = receiver.requests()[sent].json();
    assert_eq!(last["n"], serde_json::json!(sent + 1), "{last}");
    rt.block_on(owner.stop());
}
