//! A partition run by its owner, against a real three-server JetStream cluster on loopback and
//! a real HTTP receiver: the rules run on the events of the partition's stream, an expectation
//! that is not met fires through the stream (its event comes back at its stream seq), each
//! action is delivered once, and a restarted owner delivers nothing again.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use gancho_cluster::{event_stream, publish_events};
use gancho_core::NewEvent;
use gancho_engine::EngineConfig;
use gancho_state::StoreConfig;
use gancho_testkit::HttpReceiver;

fn event(kind: &str, email: &str) -> NewEvent {
    serde_json::from_value(serde_json::json!({
        "id": format!("{kind}-{email}"),
        "source": "mailjet",
        "type": kind,
        "time": "2026-11-30T10:00:00Z",
        "received": "2026-11-30T10:00:01Z",
        "keys": { "email": email },
        "data": { "event": kind, "email": email },
    }))
    .unwrap()
}

#[test]
fn an_owner_runs_the_rules_on_its_partition_and_delivers_each_action_once() {
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
    std::fs::write(
        rules.join("sent.rhai"),
        format!(
            "const ON = [\"mailjet.sent\"];\nexpect(\"mailjet.open\", #{{ email: event.keys.email }}, seconds(1), \"missed\");\n\
             fn missed(sent) {{ http(#{{ url: \"{url}\", json: #{{ missed: sent.keys.email }} }}); }}\n"
        ),
    )
    .unwrap();
    // A global rule: not run in a partition (it runs on the global lane).
    std::fs::write(
        rules.join("global.rhai"),
        format!(
            "const SCOPE = \"global\";\nconst ON = [\"mailjet.open\"];\nhttp(#{{ url: \"{url}\", json: #{{ global: true }} }});\n"
        ),
    )
    .unwrap();
    let mut engine = EngineConfig::new(&rules);
    // The events are a day old: their expectation is due at once.
    engine.late_grace_ms = 0;
    let config = owner_config(dir.path(), engine);
    let partition_dir = dir.path().join("p0");

    rt.block_on(async {
        let events = [event("open", "a@x"), event("sent", "b@x")];
        publish_events(&js, &events, |_| 0).await.unwrap();
    });
    let owner = start_owner(&rt, &js, 0, "n1", &partition_dir, &config);
    let got = receiver.wait_for(2, Duration::from_secs(60));
    let mut bodies: Vec<String> = got.iter().map(|r| r.json().to_string()).collect();
    bodies.sort();
    assert_eq!(
        bodies,
        vec![
            r#"{"missed":"b@x"}"#.to_owned(),
            r#"{"opened":"a@x"}"#.to_owned()
        ]
    );
    // The expectation's firing went through the stream: three events there, the same three
    // in the partition's log at the same seqs.
    rt.block_on(async {
        let mut stream = js.get_stream(event_stream(0)).await.unwrap();
        assert_eq!(stream.info().await.unwrap().state.messages, 3);
    });
    assert_eq!(owner.store().last_seq().unwrap(), 3);
    assert!(owner.store().get(3).unwrap().is_some());
    assert_eq!(owner.failure(), None);
    // Every action delivered is durable as such before the owner stops.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !owner
        .state()
        .outbox()
        .pending_actions(10)
        .unwrap()
        .is_empty()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "actions left in the outbox"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    rt.block_on(owner.stop());

    // Started again, on this node's disk and then on another node's (a handover): nothing is
    // delivered again.
    // What a takeover elsewhere finds: the decisions and their deliveries, nothing pending.
    {
        let (state, cursor) = rt
            .block_on(gancho_node::take_over(
                &js,
                0,
                "probe",
                &dir.path().join("probe"),
                &StoreConfig::default(),
            ))
            .unwrap();
        assert_eq!(cursor, 3);
        assert!(state.outbox().pending_actions(10).unwrap().is_empty());
        state.close();
    }
    for (node, dir) in [("n1", partition_dir.clone()), ("n2", dir.path().join("n2"))] {
        let owner = start_owner(&rt, &js, 0, node, &dir, &config);
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(receiver.requests().len(), 2, "{node}");
        assert_eq!(owner.state().durable_cursor(), 3);
        assert_eq!(owner.store().last_seq().unwrap(), 3);
        rt.block_on(owner.stop());
    }
}
