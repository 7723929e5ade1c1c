//! The operator's commands on cluster nodes: the real binary against three real nats-servers.
//! A dead letter is listed by the node that runs its partition and put back with `gancho dead
//! retry`; what became of it moves with the partition to the next node (not the delivery
//! history, which stays with the node that delivered); the commands a cluster node cannot
//! answer yet say why; a stopped node's commands refuse rather than read copies of
//! partitions another node may run by now.

use std::time::Duration;

use gancho_testkit::nats::NatsCluster;
use gancho_testkit::{HttpReceiver, Reply, wait_until};

use crate::support::{Daemon, Setup, write_rule};

/// Node `node`'s setup on `cluster`, with a rule that calls `receiver` for every open.
fn node(cluster: &NatsCluster, receiver: &HttpReceiver, node: &str) -> Setup {
    let setup = Setup::new(&format!(
        "[sources.mailjet]\nkind = \"mailjet\"\n\n[http]\nallow_private = true\n\n[cluster]\n{}node = \"{node}\"\npartitions = 2\nlease = \"2s\"\n",
        cluster.cluster_keys()
    ));
    let rule = format!(
        "const ON = [\"mailjet.open\"];\nhttp(#{{ url: \"{}\", json: #{{ opened: event.keys.email }} }});\n",
        receiver.url("/hook")
    );
    write_rule(&setup, "open.rhai", &rule);
    setup
}

/// Posts one open until a node answers 200 (its first membership tick may be to come).
fn post_open(daemon: &Daemon, email: &str) {
    let body = serde_json::to_vec(&serde_json::json!(
        [{"event": "open", "time": 1433103519, "MessageID": 7, "email": email}]
    ))
    .unwrap();
    let posted = wait_until(Duration::from_secs(30), || {
        (daemon.post_mailjet(&body).status == 200).then_some(())
    });
    assert!(posted.is_some(), "never acknowledged:\n{}", daemon.log());
}

/// `gancho ARGS --json`'s items, waiting up to 30 s for `done` to hold of them.
fn listed(
    setup: &Setup,
    args: &[&str],
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Option<Vec<serde_json::Value>> {
    wait_until(Duration::from_secs(30), || {
        let items = setup.json(args).as_array().cloned().unwrap_or_default();
        done(&items).then_some(items)
    })
}

/// A command that must fail, and its stderr.
fn refused(setup: &Setup, args: &[&str]) -> String {
    let out = setup.command(args);
    assert!(!out.status.success(), "gancho {args:?} answered");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn dead_letters_are_listed_and_retried_on_the_node_running_their_partition_and_move_with_it() {
    let Some(cluster) = NatsCluster::start(3) else {
        return;
    };
    let receiver = HttpReceiver::start(|_| Reply::status(422).body("unknown account"));
    let g1 = node(&cluster, &receiver, "g1");
    let d1 = g1.start();
    post_open(&d1, "ana@example.com");

    // Refused for good (a 422): a dead letter, listed by the node running its partition.
    let dead = listed(&g1, &["dead", "--json"], |items| items.len() == 1)
        .unwrap_or_else(|| panic!("no dead letter:\n{}", d1.log()));
    let error = dead[0]["attempts"][0]["error"].as_str().unwrap();
    assert!(error.contains("unknown account"), "{error}");
    let id = dead[0]["action"]["id"].as_str().unwrap().to_owned();
    assert!(g1.lists_nothing(&["outbox", "--json"]));
    let table = String::from_utf8(g1.command(&["dead"]).stdout).unwrap();
    assert!(table.contains("unknown account"), "{table}");

    // What a cluster node cannot answer yet, it says, instead of answering from one store.
    for args in [&["events"][..], &["status"], &["explain", "1"], &["rules"]] {
        let why = refused(&g1, args);
        assert!(why.contains("cluster node"), "gancho {args:?}: {why}");
    }

    // Fixed on the receiver's side: put back, delivered once, with the same id.
    receiver.set_handler(|_| Reply::status(200));
    assert!(refused(&g1, &["dead", "retry", "no-such-id"]).contains("no dead letter"));
    let out = g1.command(&["dead", "retry", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let requests = receiver.wait_for(2, Duration::from_secs(30));
    assert_eq!(requests.len(), 2, "{}", d1.log());
    assert_eq!(requests[1].header("idempotency-key"), Some(id.as_str()));
    assert!(listed(&g1, &["dead", "--json"], <[_]>::is_empty).is_some());
    let has_it = |items: &[serde_json::Value]| items.iter().any(|sent| sent["id"] == id.as_str());
    assert!(listed(&g1, &["sent", "--json"], has_it).is_some());

    // g2 joins and g1 leaves: the partitions move with what became of the dead letter. Its
    // retry and its delivery were journaled, so g2 neither lists it as dead nor sends it again.
    let g2 = node(&cluster, &receiver, "g2");
    let d2 = g2.start();
    assert!(d1.terminate().success());
    let moved = wait_until(Duration::from_secs(30), || {
        d2.log()
            .matches("running the partition")
            .count()
            .ge(&3)
            .then_some(())
    });
    assert!(moved.is_some(), "g2 never ran every lane:\n{}", d2.log());
    assert!(g2.lists_nothing(&["dead", "--json"]));
    assert!(g2.lists_nothing(&["outbox", "--json"]));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(receiver.requests().len(), 2, "sent again:\n{}", d2.log());

    // g1 is stopped: its commands refuse, rather than list its copies of the partitions.
    let why = refused(&g1, &["dead"]);
    assert!(why.contains("cluster node"), "{why}");
    assert!(d2.terminate().success());
}
