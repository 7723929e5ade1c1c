//! The oracle of issue 17's failure tests, against a real three-server JetStream cluster on
//! loopback: an owner that does not know it lost its partition (another node took it over
//! while it ran on) has its next commit refused, and replaying the partition's stream through
//! the single-node engine gives exactly the decisions journaled, each once (expectations that
//! fire through the stream included).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use gancho_cluster::publish_events;
use gancho_core::NewEvent;
use gancho_engine::EngineConfig;
use gancho_node::oracle;
use gancho_testkit::HttpReceiver;

fn sent(i: usize) -> NewEvent {
    serde_json::from_value(serde_json::json!({
        "id": format!("sent-{i}"),
        "source": "mailjet",
        "type": "sent",
        "time": "2026-11-30T10:00:00Z",
        "received": "2026-11-30T10:00:01Z",
        "keys": { "email": format!("u{i}@x") },
        "data": {},
    }))
    .unwrap()
}

#[test]
fn a_stale_owner_is_refused_and_the_journal_holds_exactly_the_oracles_decisions() {
    let Some((_cluster, rt, js)) = one_partition() else {
        return;
    };
    let receiver = HttpReceiver::ok();
    let dir = tempfile::tempdir().unwrap();
    let rules = rules_in(dir.path());
    let url = receiver.url("/hook");
    std::fs::write(
        rules.join("open.rhai"),
        format!(
            "const ON = [\"mailjet.open\"];\nhttp(#{{ url: \"{url}\", json: #{{ opened: event.keys.email }} }});\n"
        ),
    )
    .unwrap();
    // Half the addresses open; the others' expectations fire through the stream.
    std::fs::write(
        rules.join("sent.rhai"),
        format!(
            "const ON = [\"mailjet.sent\"];\nexpect(\"mailjet.open\", #{{ email: event.keys.email }}, seconds(1), \"missed\");\n\
             fn missed(sent) {{ http(#{{ url: \"{url}\", json: #{{ missed: sent.keys.email }} }}); }}\n"
        ),
    )
    .unwrap();
    let mut engine = EngineConfig::new(&rules);
    engine.late_grace_ms = 0;
    let config = owner_config(dir.path(), engine.clone());
    let start = |node: &str| start_owner(&rt, &js, 0, node, &dir.path().join(node), &config);
    let publish = |from: usize, to: usize| {
        let events: Vec<NewEvent> = (from..to)
            .flat_map(|i| {
                let mut both = vec![sent(i)];
                if i % 2 == 0 {
                    both.push(open(i));
                }
                both
            })
            .collect();
        rt.block_on(publish_events(&js, &events, |_| 0)).unwrap();
    };

    let stale = start("n1");
    publish(0, 20);
    wait_until("the first actions", || receiver.requests().len() == 20);
    // Their outcomes committed too: a commit of n1's between n2's reading of the journal and
    // its claim would refuse n2's claim (a node would claim again at its next tick; this test
    // starts n2 once).
    wait_until("the first actions' outcomes", || {
        let mut pending = 0;
        let listed = stale.state().outbox().each_pending(0, |_| {
            pending += 1;
            Ok(())
        });
        listed.is_ok() && pending == 0
    });
    // n2 takes the partition over while n1 runs on, unaware.
    let owner = start("n2");
    publish(20, 40);
    wait_until("n1's commit refused", || stale.failure().is_some());
    assert!(
        stale
            .failure()
            .unwrap()
            .contains("another node owns the partition"),
        "{:?}",
        stale.failure()
    );
    wait_until("every action", || receiver.requests().len() >= 40);
    std::thread::sleep(Duration::from_secs(1));
    rt.block_on(stale.stop());
    rt.block_on(owner.stop());
    assert_eq!(receiver.requests().len(), 40, "an action sent twice");

    let journaled = rt.block_on(oracle::journaled(&js, 0)).unwrap();
    let replayed = rt
        .block_on(oracle::replayed(&js, 0, &dir.path().join("oracle"), engine))
        .unwrap();
    assert_eq!(oracle::compare(&journaled, &replayed), Ok(40));
}
