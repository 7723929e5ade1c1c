//! The global lane, against a real three-server JetStream cluster on loopback and a real HTTP
//! receiver: its stream sources every partition's, its owner runs the global rules (and only
//! they) over all of them while a partition refuses a query that needs the others, cron ticks go through its stream, and a new owner after a stop
//! catches up the ticks missed meanwhile, each run once.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use gancho_cluster::{GLOBAL, publish_events};
use gancho_core::NewEvent;
use gancho_engine::{EngineConfig, Placement, SourcePlacement};
use gancho_testkit::HttpReceiver;

fn open(email: &str) -> NewEvent {
    serde_json::from_value(serde_json::json!({
        "id": format!("open-{email}"),
        "source": "mailjet",
        "type": "open",
        "time": "2026-11-30T10:00:00Z",
        "received": "2026-11-30T10:00:01Z",
        "keys": { "email": email },
        "data": { "event": "open", "email": email },
    }))
    .unwrap()
}

/// The bodies received, by their one key (`global`, `part` or `tick`).
fn bodies(receiver: &HttpReceiver) -> BTreeMap<String, Vec<serde_json::Value>> {
    let mut by_kind: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for request in receiver.requests() {
        let body = request.json();
        let (kind, value) = body.as_object().unwrap().iter().next().unwrap();
        by_kind.entry(kind.clone()).or_default().push(value.clone());
    }
    by_kind
}

#[test]
fn the_global_lane_runs_global_rules_over_every_partition_and_each_tick_once() {
    let Some((_cluster, rt, js)) = partitions(2) else {
        return;
    };
    let receiver = HttpReceiver::ok();
    let dir = tempfile::tempdir().unwrap();
    let rules = rules_in(dir.path());
    let url = receiver.url("/hook");
    let rule = |name: &str, head: &str, body: &str| {
        std::fs::write(
            rules.join(format!("{name}.rhai")),
            format!("{head}\nhttp(#{{ url: \"{url}\", json: #{{ {body} }} }});\n"),
        )
        .unwrap();
    };
    rule(
        "part",
        "const ON = [\"mailjet.open\"];",
        "part: event.keys.email",
    );
    rule(
        "global",
        "const SCOPE = \"global\";\nconst ON = [\"mailjet.open\"];",
        "global: `${event.keys.email} of ${count(\"mailjet.open\", hours(1))}`",
    );
    rule("tick", "const EVERY = \"* * * * * *\";", "tick: event.time");
    // A partitioned rule whose query needs every partition's events: refused at run time.
    std::fs::write(
        rules.join("cross.rhai"),
        format!(
            "const ON = [\"mailjet.open\"];\n\
             try {{ count(\"mailjet.open\", hours(1)); }} catch (e) {{\n\
             http(#{{ url: \"{url}\", json: #{{ refused: `${{e}}` }} }});\n}}\n"
        ),
    )
    .unwrap();
    let mut engine = EngineConfig::new(&rules);
    engine.placement = Some(Placement {
        partition: 0,
        partitions: 2,
        sources: BTreeMap::from([(
            "mailjet".to_owned(),
            SourcePlacement {
                key: "email".to_owned(),
                colocated: Default::default(),
            },
        )]),
    });
    let config = owner_config(dir.path(), engine);
    let start = |p, node: &str, dir: &std::path::Path| start_owner(&rt, &js, p, node, dir, &config);
    let p0 = start(0, "n1", &dir.path().join("p0"));
    let p1 = start(1, "n1", &dir.path().join("p1"));
    let global = start(GLOBAL, "n1", &dir.path().join("global"));

    // Two opens in each partition: the partitions' rule runs once for each in its partition;
    // the global rule once for each too, and its count sees the events of both partitions.
    rt.block_on(async {
        for (p, emails) in [(0, ["a@x", "b@x"]), (1, ["c@x", "d@x"])] {
            let events: Vec<NewEvent> = emails.iter().map(|e| open(e)).collect();
            publish_events(&js, &events, |_| p).await.unwrap();
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let got = bodies(&receiver);
        if ["global", "part", "refused"]
            .iter()
            .all(|kind| got.get(*kind).map_or(0, Vec::len) == 4)
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{got:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let got = bodies(&receiver);
    let mut part: Vec<String> = got["part"].iter().map(|v| v.to_string()).collect();
    part.sort();
    assert_eq!(part, [r#""a@x""#, r#""b@x""#, r#""c@x""#, r#""d@x""#]);
    let mut global_seen: Vec<String> = got["global"]
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    global_seen.sort();
    // Each partition's events come into the global stream in their order; the count at the
    // last of them is all four.
    assert!(
        global_seen.iter().any(|s| s.ends_with(" of 4")),
        "{global_seen:?}"
    );
    for email in ["a@x", "b@x", "c@x", "d@x"] {
        assert_eq!(
            global_seen
                .iter()
                .filter(|s| s.starts_with(&format!("{email} of ")))
                .count(),
            1,
            "{global_seen:?}"
        );
    }
    assert_eq!(global.failure(), None);
    let refused = &got["refused"];
    assert_eq!(refused.len(), 4, "{refused:?}");
    assert!(
        refused[0].as_str().unwrap().contains(
            "a partitioned rule must select mailjet events by their partition key \"email\""
        ),
        "{refused:?}"
    );

    // Ticks, from the global lane only (the partitions do not run the EVERY rule). The lane
    // stops for three seconds; its next owner, elsewhere, catches up the ticks missed.
    std::thread::sleep(Duration::from_secs(3));
    rt.block_on(global.stop());
    std::thread::sleep(Duration::from_secs(3));
    let global = start(GLOBAL, "n2", &dir.path().join("global-n2"));
    std::thread::sleep(Duration::from_secs(4));
    rt.block_on(global.stop());
    // What was decided is delivered: wait for the sends to settle.
    std::thread::sleep(Duration::from_secs(1));
    let ticks: Vec<i64> = bodies(&receiver)["tick"]
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let mut sorted = ticks.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), ticks.len(), "a tick ran twice: {ticks:?}");
    // Every second from the first tick to the last, none missing (the stop's included).
    let (first, last) = (sorted[0], sorted[sorted.len() - 1]);
    assert!(last - first >= 8_000, "{sorted:?}");
    assert_eq!(
        sorted.len() as i64,
        (last - first) / 1000 + 1,
        "ticks missing: {sorted:?}"
    );
    rt.block_on(p0.stop());
    rt.block_on(p1.stop());
}
