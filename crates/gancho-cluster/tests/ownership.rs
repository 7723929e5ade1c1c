//! Ownership against a real three-server JetStream cluster on loopback: the journal's fence
//! refuses a stale owner's commit, leases expire when not renewed and can then be taken, and
//! nodes must agree on the lease.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use gancho_cluster::{ClusterError, Journal, Leases, create_streams};
use gancho_testkit::nats::NatsCluster;
use gancho_testkit::proxy::{Flow, Proxy};

/// Of two racing commits with the same fence, one is written and the other refused as fenced.
fn one_wins(rx: &Result<u64, ClusterError>, ry: &Result<u64, ClusterError>) {
    assert!(
        matches!(
            (rx, ry),
            (Ok(_), Err(ClusterError::Fenced { .. })) | (Err(ClusterError::Fenced { .. }), Ok(_))
        ),
        "{rx:?} {ry:?}"
    );
}

/// Commits, trying again on a retryable journal error (the fence is unchanged by one) until
/// `within` has passed; any other error fails the test.
async fn commit_retrying(
    journal: &mut Journal,
    cursor: u64,
    payload: &[u8],
    within: Duration,
) -> u64 {
    let deadline = Instant::now() + within;
    loop {
        match journal.commit(cursor, payload.to_vec()).await {
            Ok(sequence) => return sequence,
            Err(ClusterError::Journal { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => panic!("{err}"),
        }
    }
}

#[test]
fn a_commit_whose_acknowledgement_was_lost_is_taken_as_done_when_tried_again() {
    let Some(cluster) = NatsCluster::start(3) else {
        return;
    };
    runtime().block_on(async {
        let js = jetstream_of(&cluster).await;
        create_streams(&js, 1).await.unwrap();
        let journal_length = || async {
            let mut stream = js.get_stream("GANCHO_J_0").await.unwrap();
            stream.info().await.unwrap().state.last_sequence
        };
        // The owner reaches one server through a proxy that can lose the server's answers.
        let server = std::net::SocketAddr::from(([127, 0, 0, 1], cluster.servers[0].client_port));
        let proxy = Proxy::start(server);
        let client = async_nats::ConnectOptions::new()
            .ignore_discovered_servers()
            .connect(proxy.nats_url())
            .await
            .unwrap();
        let mut behind = async_nats::jetstream::new(client);
        behind.set_timeout(Duration::from_secs(2));
        let mut journal = Journal::open(&behind, 0, "a").await.unwrap();
        // Right after the streams are made, the server this client reaches may not route to
        // the journal yet ("no stream found"): nothing was written, so the same commit is
        // tried again.
        let sequence = commit_retrying(&mut journal, 10, b"batch 1", Duration::from_secs(15)).await;
        assert_eq!(sequence, 1);

        // The next commit reaches the journal; its acknowledgement is lost.
        proxy.set(Flow::HoldReplies);
        let lost = journal.commit(20, b"batch 2".to_vec()).await;
        assert!(
            matches!(lost, Err(ClusterError::Journal { .. })),
            "{lost:?}"
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while journal_length().await < 2 {
            assert!(
                Instant::now() < deadline,
                "the commit never reached the journal"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        proxy.heal();

        // Tried again with the same fence, the server refuses it (the journal has moved on),
        // and the handle finds its own write there: done, not fenced. (Journal errors meanwhile:
        // still reconnecting through the healed proxy.)
        let sequence = commit_retrying(&mut journal, 20, b"batch 2", Duration::from_secs(20)).await;
        assert_eq!(sequence, 2);
        assert_eq!((journal.last_sequence(), journal.cursor()), (2, 20));
        assert_eq!(journal_length().await, 2, "written once");
        // The owner goes on, fenced from there.
        assert_eq!(journal.commit(30, b"batch 3".to_vec()).await.unwrap(), 3);
        assert_eq!(journal_length().await, 3);
    });
}

#[test]
fn a_stale_owner_cannot_commit_once_another_has() {
    let Some(cluster) = NatsCluster::start(3) else {
        return;
    };
    runtime().block_on(async {
        let js = jetstream_of(&cluster).await;
        create_streams(&js, 3).await.unwrap();
        // Node a owns partition 1 and commits.
        let mut a = Journal::open(&js, 1, "a").await.unwrap();
        assert_eq!((a.last_sequence(), a.cursor()), (0, 0));
        a.commit(10, b"batch 1".to_vec()).await.unwrap();
        // Node a pauses; node b takes over from where the journal ends, and commits.
        let mut b = Journal::open(&js, 1, "b").await.unwrap();
        assert_eq!((b.last_sequence(), b.cursor()), (1, 10));
        b.commit(25, b"batch 2 by b".to_vec()).await.unwrap();
        // Node a wakes up: its next commit is refused, and every one after it.
        let err = a.commit(20, b"batch 2 by a".to_vec()).await.unwrap_err();
        assert!(
            matches!(&err, ClusterError::Fenced { partition: 1, node, expected: 1 } if node == "a"),
            "{err}"
        );
        assert!(matches!(
            a.commit(30, b"again".to_vec()).await.unwrap_err(),
            ClusterError::Fenced { .. }
        ));
        // The journal holds b's decisions only; another partition is not fenced by it.
        let reopened = Journal::open(&js, 1, "c").await.unwrap();
        assert_eq!((reopened.last_sequence(), reopened.cursor()), (2, 25));
        let mut other = Journal::open(&js, 0, "a").await.unwrap();
        other.commit(5, b"p0".to_vec()).await.unwrap();
        // Two handles of one node (a restarted process under the same name, an old task
        // still retrying) do not take each other's writes for their own.
        let mut old_task = Journal::open(&js, 0, "a").await.unwrap();
        let mut restarted = Journal::open(&js, 0, "a").await.unwrap();
        restarted.commit(7, b"p0 again".to_vec()).await.unwrap();
        assert!(matches!(
            old_task.commit(7, b"p0 again".to_vec()).await.unwrap_err(),
            ClusterError::Fenced { .. }
        ));

        // Two nodes that both opened at the same point: exactly one commit wins.
        let mut x = Journal::open(&js, 0, "x").await.unwrap();
        let mut y = Journal::open(&js, 0, "y").await.unwrap();
        let (rx, ry) = tokio::join!(x.commit(8, b"x".to_vec()), y.commit(8, b"y".to_vec()));
        one_wins(&rx, &ry);
        // The same on an empty journal (its fence is sequence 0).
        let mut x = Journal::open(&js, 2, "x").await.unwrap();
        let mut y = Journal::open(&js, 2, "y").await.unwrap();
        assert_eq!((x.last_sequence(), y.last_sequence()), (0, 0));
        let (rx, ry) = tokio::join!(x.commit(1, b"x".to_vec()), y.commit(1, b"y".to_vec()));
        one_wins(&rx, &ry);
    });
}

/// A first heartbeat, tried again for a while: right after the bucket is created, a server
/// may answer that no stream takes its subject yet (a node's next tick would try again).
async fn first_heartbeat(leases: &Leases) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while let Err(err) = leases.heartbeat().await {
        assert!(Instant::now() < deadline, "{err}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn a_lease_not_renewed_expires_and_another_node_takes_it() {
    let Some(cluster) = NatsCluster::start(3) else {
        return;
    };
    let lease = Duration::from_secs(2);
    runtime().block_on(async {
        let js = jetstream_of(&cluster).await;
        let a = Leases::open(&js, "a", lease).await.unwrap();
        let b = Leases::open(&js, "b", lease).await.unwrap();
        first_heartbeat(&a).await;
        first_heartbeat(&b).await;
        assert_eq!(a.live_nodes().await.unwrap(), ["a", "b"]);

        let mut held = a.acquire(3).await.unwrap().unwrap();
        assert_eq!(b.acquire(3).await.unwrap(), None);
        assert_eq!(b.holder(3).await.unwrap().as_deref(), Some("a"));
        assert!(a.renew(&mut held).await.unwrap());

        // a stops renewing (and heartbeating); b keeps its heartbeat and tries to take the
        // partition: it gets it within twice the lease.
        let start = Instant::now();
        let taken = loop {
            b.heartbeat().await.unwrap();
            if let Some(lease) = b.acquire(3).await.unwrap() {
                break lease;
            }
            // Generous: CI machines are busy; how fast a takeover is, is a figure for the
            // failure tests to report, not a unit test's.
            assert!(start.elapsed() < lease * 4, "never expired");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(
            start.elapsed() >= lease / 2,
            "taken too early: {:?}",
            start.elapsed()
        );
        assert_eq!(b.holder(3).await.unwrap().as_deref(), Some("b"));
        // a's renewal now fails: it has lost the partition.
        assert!(!a.renew(&mut held).await.unwrap());
        // a's heartbeat expires too (the servers remove expired entries in sweeps, so it may
        // be listed a little past its lease).
        let start = Instant::now();
        while b.live_nodes().await.unwrap() != ["b"] {
            b.heartbeat().await.unwrap();
            assert!(start.elapsed() < lease * 4, "a is still listed as alive");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // A graceful handover: b releases, a takes it at once.
        b.release(taken).await.unwrap();
        assert_eq!(a.holder(3).await.unwrap(), None);
        assert!(a.acquire(3).await.unwrap().is_some());

        // Nodes must agree on the lease.
        let err = Leases::open(&js, "c", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, ClusterError::LeaseChanged { .. }), "{err}");
    });
}

#[test]
fn nodes_racing_for_the_same_free_leases_each_get_one_or_none_and_hear_no_error() {
    let Some(cluster) = NatsCluster::start(3) else {
        return;
    };
    runtime().block_on(async {
        // One node per server, so that their writes reach the bucket's leader from three
        // routes at once (a clustered stream answers such a race with "wrong last sequence"
        // without a sequence, code 10164, which async-nats does not map to its kind).
        let mut nodes = Vec::new();
        for (n, server) in cluster.servers.iter().enumerate() {
            let client = async_nats::connect(format!("nats://127.0.0.1:{}", server.client_port))
                .await
                .unwrap();
            let js = async_nats::jetstream::new(client);
            let name = format!("n{n}");
            let leases = Leases::open(&js, &name, Duration::from_secs(30))
                .await
                .unwrap();
            // Each server routes the new bucket's subjects before the race starts.
            first_heartbeat(&leases).await;
            nodes.push((leases, name));
        }
        let race = |p: u16| {
            let nodes = &nodes;
            async move {
                let (a, b, c) = tokio::join!(
                    nodes[0].0.acquire(p),
                    nodes[1].0.acquire(p),
                    nodes[2].0.acquire(p)
                );
                (p, [a, b, c])
            }
        };
        // Created (never taken) and then released (a delete marker): both are compare-and-set.
        for round in ["created", "released"] {
            let results = futures_util::future::join_all((0..64).map(race)).await;
            for (p, tries) in results {
                let winners: Vec<&str> = tries
                    .iter()
                    .zip(&nodes)
                    .filter_map(|(tried, (_, name))| match tried {
                        Ok(Some(_)) => Some(name.as_str()),
                        Ok(None) => None,
                        Err(err) => panic!("{round}: partition {p}: {err}"),
                    })
                    .collect();
                assert_eq!(winners.len(), 1, "{round}: partition {p}: {winners:?}");
                let holder = nodes[0].0.holder(p).await.unwrap();
                assert_eq!(
                    holder.as_deref(),
                    Some(winners[0]),
                    "{round}: partition {p}"
                );
                if round == "created" {
                    for (tried, (leases, _)) in tries.into_iter().zip(&nodes) {
                        if let Ok(Some(lease)) = tried {
                            leases.release(lease).await.unwrap();
                        }
                    }
                }
            }
        }
    });
}

type Held = std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, Vec<u16>>>>;

/// Runs node `name`'s membership until its task is aborted (a kill: nothing released),
/// handing partitions over at once (it has no commits to finish), and shares what it holds.
fn run_node(
    js: async_nats::jetstream::Context,
    name: &'static str,
    partitions: u16,
    lease: Duration,
    held: Held,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut member = gancho_cluster::Membership::join(&js, name, partitions, lease)
            .await
            .unwrap();
        loop {
            // A tick that fails part way (a server busy) still did what it did; the rest is tried
            // again at the next one.
            let changes = member.tick().await.unwrap_or_else(|err| err.done);
            for p in changes.hand_over {
                let _ = member.release(p).await;
            }
            held.lock().unwrap().insert(name.to_owned(), member.held());
            tokio::time::sleep(member.interval()).await;
        }
    })
}

/// Waits until every partition is held by exactly its rendezvous owner among `nodes`, checking
/// on the way that no partition is ever held by two nodes; returns how long it took.
async fn wait_for_assignment(
    held: &Held,
    nodes: &[&str],
    partitions: u16,
    limit: Duration,
) -> Duration {
    let live: Vec<String> = nodes.iter().map(|n| (*n).to_owned()).collect();
    let start = Instant::now();
    loop {
        let snapshot = held.lock().unwrap().clone();
        let mut holders: std::collections::BTreeMap<u16, Vec<&String>> = Default::default();
        for (node, ps) in &snapshot {
            for p in ps {
                holders.entry(*p).or_default().push(node);
            }
        }
        for (p, nodes) in &holders {
            assert!(nodes.len() == 1, "partition {p} held by {nodes:?} at once");
        }
        let settled = (0..partitions).all(|p| {
            holders
                .get(&p)
                .is_some_and(|h| Some(h[0].as_str()) == gancho_cluster::rendezvous_owner(p, &live))
        });
        if settled {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "not settled on {nodes:?} after {limit:?}: {snapshot:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn partitions_go_to_the_live_nodes_and_a_killed_nodes_are_taken_over() {
    let Some(cluster) = NatsCluster::start(3) else {
        return;
    };
    let lease = Duration::from_secs(2);
    let partitions = 8;
    runtime().block_on(async {
        let js = jetstream_of(&cluster).await;
        let held = Held::default();
        let a = run_node(js.clone(), "a", partitions, lease, held.clone());
        let b = run_node(js.clone(), "b", partitions, lease, held.clone());
        let c = run_node(js.clone(), "c", partitions, lease, held.clone());
        wait_for_assignment(&held, &["a", "b", "c"], partitions, lease * 8).await;

        // kill -9 of c: its task ends without releasing anything.
        c.abort();
        let _ = c.await;
        held.lock().unwrap().remove("c");
        let took = wait_for_assignment(&held, &["a", "b"], partitions, lease * 6).await;
        eprintln!("partitions of the killed node owned again after {took:?} (lease {lease:?})");

        // A node joins: the others hand its share over.
        let d = run_node(js.clone(), "d", partitions, lease, held.clone());
        wait_for_assignment(&held, &["a", "b", "d"], partitions, lease * 8).await;
        for task in [a, b, d] {
            task.abort();
        }
    });
}
