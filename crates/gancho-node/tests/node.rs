//! Three nodes sharing four partitions, in process, against a real three-server JetStream
//! cluster on loopback and a real HTTP receiver: every partition (and the global lane) runs on
//! exactly one node, every
//! event's action is delivered once, and a node that stops hands its partitions over without a
//! repeated or a lost action.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use gancho_cluster::{GLOBAL, partition_for, publish_events};
use gancho_core::{NewEvent, SystemClock};
use gancho_engine::EngineConfig;
use gancho_node::{NodeConfig, NodeStatus, RunningStores, run_node};
use gancho_testkit::HttpReceiver;
use tokio::sync::watch;

const PARTITIONS: u16 = 4;

/// Every partition and the global lane.
fn every_lane() -> Vec<u16> {
    (0..PARTITIONS).chain([GLOBAL]).collect()
}

struct RunningNode {
    stop: watch::Sender<bool>,
    status: watch::Receiver<NodeStatus>,
    stores: RunningStores,
    task: tokio::task::JoinHandle<()>,
}

/// Emails the receiver got, with how many times each.
fn delivered(receiver: &HttpReceiver) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for request in receiver.requests() {
        let email = request.json()["opened"].as_str().unwrap().to_owned();
        *seen.entry(email).or_insert(0) += 1;
    }
    seen
}

#[test]
fn nodes_share_the_partitions_and_a_stopping_node_hands_its_own_over() {
    let Some((_cluster, rt, js)) = partitions(PARTITIONS) else {
        return;
    };
    let receiver = HttpReceiver::ok();
    let dir = tempfile::tempdir().unwrap();
    let rules = rules_in(dir.path());
    std::fs::write(
        rules.join("open.rhai"),
        format!(
            "const ON = [\"mailjet.open\"];\nhttp(#{{ url: \"{}\", json: #{{ opened: event.keys.email }} }});\n",
            receiver.url("/hook")
        ),
    )
    .unwrap();
    let owner = owner_config(dir.path(), EngineConfig::new(&rules));
    let start = |name: &str| {
        let config = NodeConfig {
            node: name.to_owned(),
            partitions: PARTITIONS,
            lease: Duration::from_secs(2),
            dir: dir.path().join(name),
            owner: owner.clone(),
        };
        let (stop, stopped) = watch::channel(false);
        let (status_tx, status) = watch::channel(NodeStatus::default());
        let (_reload_tx, reload) = watch::channel(0u64);
        let js = js.clone();
        let stores = RunningStores::default();
        let task = rt.spawn({
            let stores = stores.clone();
            async move {
                run_node(
                    &js,
                    config,
                    Arc::new(SystemClock),
                    stopped,
                    reload,
                    status_tx,
                    stores,
                )
                .await
                .unwrap();
            }
        });
        RunningNode {
            stop,
            status,
            stores,
            task,
        }
    };
    let nodes: Vec<RunningNode> = ["n1", "n2", "n3"].iter().map(|n| start(n)).collect();
    let running = |nodes: &[RunningNode]| -> Vec<u16> {
        let mut all: Vec<u16> = nodes
            .iter()
            .flat_map(|n| n.status.borrow().running.clone())
            .collect();
        all.sort();
        all
    };
    wait_until("every partition runs on one node", || {
        running(&nodes) == every_lane()
    });

    let first: Vec<NewEvent> = (0..40).map(open).collect();
    rt.block_on(publish_events(&js, &first, |e| {
        partition_for(e, "email", PARTITIONS)
    }))
    .unwrap();
    wait_until("the first 40 actions", || delivered(&receiver).len() == 40);

    // n1 stops: its partitions go to the others, after its final commits.
    let mut nodes = nodes;
    let n1 = nodes.remove(0);
    n1.stop.send(true).unwrap();
    rt.block_on(n1.task).unwrap();
    wait_until("the others run every partition", || {
        running(&nodes) == every_lane()
    });
    let more: Vec<NewEvent> = (40..80).map(open).collect();
    rt.block_on(publish_events(&js, &more, |e| {
        partition_for(e, "email", PARTITIONS)
    }))
    .unwrap();
    wait_until("all 80 actions", || delivered(&receiver).len() == 80);
    // The commands' view of each node: the partitions it runs, each with its actions
    // delivered (none left in its outbox).
    for node in &nodes {
        // The status is sent at the end of the node's round, the list kept as it goes.
        wait_until("the commands list what the node runs", || {
            let listed: Vec<u16> = node.stores.lanes().iter().map(|l| l.partition).collect();
            listed == node.status.borrow().running
        });
        for lane in node.stores.lanes() {
            wait_until("each outbox emptied by its deliveries", || {
                let mut pending = 0;
                lane.state
                    .outbox()
                    .each_pending(0, |_| {
                        pending += 1;
                        Ok(())
                    })
                    .unwrap();
                pending == 0
            });
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    let seen = delivered(&receiver);
    let repeated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.is_empty(),
        "delivered more than once: {repeated:?}"
    );
    for node in nodes {
        node.stop.send(true).unwrap();
        rt.block_on(node.task).unwrap();
        assert!(
            node.stores.lanes().is_empty(),
            "a stopped node lists no partition"
        );
    }
}
