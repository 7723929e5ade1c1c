//! Cluster mode under faults (issue 17's failure tests), with the real binary: three
//! nats-servers and three gancho nodes on loopback, an HTTP receiver for the actions.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gancho_testkit::HttpReceiver;
use gancho_testkit::nats::NatsCluster;

use crate::support::{Daemon, Request, Setup, write_rule};

/// Three nodes' setups on `cluster`, each with a rule that calls `receiver` for every open.
fn three_nodes(cluster: &NatsCluster, receiver: &HttpReceiver) -> Vec<Setup> {
    let rule = format!(
        "const ON = [\"mailjet.open\"];\nhttp(#{{ url: \"{}\", json: #{{ opened: event.keys.email }} }});\n",
        receiver.url("/hook")
    );
    ["g1", "g2", "g3"]
        .iter()
        .map(|node| {
            let setup = Setup::new(&format!(
                "[sources.mailjet]\nkind = \"mailjet\"\n\n[http]\nallow_private = true\n\n[cluster]\n{}node = \"{node}\"\npartitions = 4\nlease = \"2s\"\n",
                cluster.cluster_keys()
            ));
            write_rule(&setup, "open.rhai", &rule);
            setup
        })
        .collect()
}

/// For each e-mail the receiver was called for, the `Idempotency-Key`s of its calls.
fn calls(receiver: &HttpReceiver) -> BTreeMap<String, Vec<String>> {
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for request in receiver.requests() {
        let email = request.json()["opened"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let key = request
            .header("idempotency-key")
            .unwrap_or_default()
            .to_owned();
        seen.entry(email).or_default().push(key);
    }
    seen
}

/// Posts a request of five opens to each address in turn until `stop`; returns the e-mails of
/// the requests answered 200.
fn load(addrs: Arc<Mutex<Vec<SocketAddr>>>, stop: Arc<AtomicBool>) -> BTreeSet<String> {
    let mut acknowledged = BTreeSet::new();
    let mut n = 0usize;
    while !stop.load(Ordering::Acquire) {
        let targets = addrs.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for addr in targets {
            let emails: Vec<String> = (n..n + 5).map(|i| format!("u{i}@x")).collect();
            n += 5;
            let items: Vec<serde_json::Value> = emails
                .iter()
                .enumerate()
                .map(|(i, email)| serde_json::json!({"event": "open", "time": 1433103519, "MessageID": n + i, "email": email}))
                .collect();
            let body = serde_json::to_vec(&items).unwrap_or_default();
            if let Ok(response) = Request::post("/hooks/mailjet", &body).send(addr)
                && response.status == 200
            {
                acknowledged.extend(emails);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    acknowledged
}

/// [`load`] on its own thread, to the addresses in `addrs` at each round.
fn start_load(
    addrs: &Arc<Mutex<Vec<SocketAddr>>>,
) -> (Arc<AtomicBool>, std::thread::JoinHandle<BTreeSet<String>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let loader = {
        let (addrs, stop) = (addrs.clone(), stop.clone());
        std::thread::spawn(move || load(addrs, stop))
    };
    (stop, loader)
}

/// Stops the load; the e-mails of its acknowledged requests, at least `at_least` of them.
fn stop_load(
    (stop, loader): (Arc<AtomicBool>, std::thread::JoinHandle<BTreeSet<String>>),
    at_least: usize,
) -> BTreeSet<String> {
    stop.store(true, Ordering::Release);
    let acknowledged = loader.join().expect("the load");
    assert!(
        acknowledged.len() >= at_least,
        "too little load: {}",
        acknowledged.len()
    );
    acknowledged
}

/// Waits until the receiver was called for every one of `expected`.
fn wait_acted_on(receiver: &HttpReceiver, expected: &BTreeSet<String>) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let seen = calls(receiver);
        let missing: Vec<_> = expected.iter().filter(|e| !seen.contains_key(*e)).collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} acknowledged events never acted on, e.g. {:?}",
            missing.len(),
            missing.iter().take(5).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The oracle (issue 17): replaying each partition's stream through the single-node engine
/// gives exactly the decisions the cluster journaled, each once. `setup` is one of
/// [`three_nodes`]' (their rules and sources are the same).
fn assert_oracle(cluster: &NatsCluster, setup: &Setup) {
    let config: gancho_cluster::ClusterConfig =
        toml::from_str(&format!("{}node = \"oracle\"\n", cluster.cluster_keys()))
            .expect("the cluster's keys");
    let mut engine = gancho_engine::EngineConfig::new(setup.dir.path().join("rules"));
    engine.placement = Some(gancho_engine::Placement {
        partition: 0,
        partitions: 4,
        sources: [(
            "mailjet".to_owned(),
            gancho_engine::SourcePlacement {
                key: "email".to_owned(),
                colocated: ["MessageID".to_owned()].into(),
            },
        )]
        .into(),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let dir = tempfile::tempdir().expect("a temp dir");
    runtime.block_on(async {
        // Right after servers restart, JetStream may not answer yet (leaders being elected):
        // each read is tried again for a while.
        let deadline = Instant::now() + Duration::from_secs(60);
        let js = loop {
            match gancho_cluster::connect(&config, None).await {
                Ok(client) => break async_nats::jetstream::new(client),
                Err(err) if Instant::now() < deadline => {
                    eprintln!("oracle: connecting again ({err})");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(err) => panic!("connecting: {err}"),
            }
        };
        let mut total = 0;
        for p in (0..4).chain([gancho_cluster::GLOBAL]) {
            let mut attempt = 0;
            let (journaled, replayed) = loop {
                attempt += 1;
                let dir = dir.path().join(format!("p{p}-{attempt}"));
                let read = async {
                    let journaled = gancho_node::oracle::journaled(&js, p).await?;
                    let replayed =
                        gancho_node::oracle::replayed(&js, p, &dir, engine.clone()).await?;
                    Ok::<_, gancho_node::oracle::OracleError>((journaled, replayed))
                };
                match read.await {
                    Ok(read) => break read,
                    Err(err) if Instant::now() < deadline => {
                        eprintln!("oracle: reading partition {p} again ({err})");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(err) => panic!("the oracle of partition {p}: {err}"),
                }
            };
            match gancho_node::oracle::compare(&journaled, &replayed) {
                Ok(n) => total += n,
                Err(diff) => panic!("partition {}: {diff}", gancho_cluster::lane_name(p)),
            }
        }
        eprintln!("the oracle matches: {total} decisions, each journaled once");
    });
}

/// Every event's calls (a send repeated after a fault included) carry one id.
fn assert_one_id_per_event(receiver: &HttpReceiver) {
    for (email, keys) in calls(receiver) {
        assert!(
            keys.iter().all(|k| k == &keys[0]),
            "{email}: calls with different ids {keys:?}"
        );
    }
}

#[test]
fn a_node_killed_under_load_loses_no_acknowledged_event_and_repeats_only_with_the_same_id() {
    let Some(cluster) = NatsCluster::start(3) else {
        return;
    };
    let receiver = HttpReceiver::ok();
    let setups = three_nodes(&cluster, &receiver);
    let mut daemons: Vec<_> = setups.iter().map(Setup::start).collect();
    let addrs = Arc::new(Mutex::new(
        daemons.iter().map(|d| d.addr).collect::<Vec<_>>(),
    ));
    let loading = start_load(&addrs);
    std::thread::sleep(Duration::from_secs(2));
    // kill -9 the first node, in the middle of the load; the load goes on to the others.
    let killed_at = Instant::now();
    daemons.remove(0).kill();
    addrs.lock().unwrap_or_else(|e| e.into_inner()).remove(0);
    std::thread::sleep(Duration::from_secs(3));
    let acknowledged = stop_load(loading, 100);

    // Every acknowledged event's action is delivered.
    wait_acted_on(&receiver, &acknowledged);
    eprintln!(
        "every acknowledged event acted on {:?} after the kill",
        killed_at.elapsed()
    );
    std::thread::sleep(Duration::from_secs(2));
    // A repeat (a send in flight at the kill) carries the same id as the first send.
    let seen = calls(&receiver);
    let repeats = seen.values().filter(|keys| keys.len() > 1).count();
    for (email, keys) in &seen {
        assert!(
            keys.iter().all(|k| !k.is_empty() && k == &keys[0]),
            "{email}: calls with different ids {keys:?}"
        );
    }
    eprintln!(
        "{} acknowledged events, {} repeated sends (in flight at the kill)",
        acknowledged.len(),
        repeats
    );
    for daemon in daemons {
        assert!(daemon.terminate().success());
    }
    assert_oracle(&cluster, &setups[0]);
}

#[test]
fn an_owner_paused_past_its_lease_is_refused_when_it_wakes_and_nothing_is_decided_twice() {
    let Some(cluster) = NatsCluster::start(3) else {
        return;
    };
    let receiver = HttpReceiver::ok();
    let setups = three_nodes(&cluster, &receiver);
    let daemons: Vec<_> = setups.iter().map(Setup::start).collect();
    // Load on the two nodes that stay awake; g1 is paused (SIGSTOP) past its lease, so the
    // others take its partitions over; then it wakes (SIGCONT) with its partitions' engines
    // still running.
    let addrs = Arc::new(Mutex::new(daemons[1..].iter().map(|d| d.addr).collect()));
    let loading = start_load(&addrs);
    std::thread::sleep(Duration::from_secs(1));
    // Paused only once it runs a partition: a node paused before its first claim has no
    // lease to lose (one CI run paused g1 while the others held every partition).
    let running = gancho_testkit::wait_until(Duration::from_secs(30), || {
        daemons[0]
            .log()
            .contains("running the partition")
            .then_some(())
    });
    assert!(
        running.is_some(),
        "g1 never ran a partition: {}",
        daemons[0].log()
    );
    crate::support::signal(daemons[0].pid(), "STOP");
    std::thread::sleep(Duration::from_secs(5));
    crate::support::signal(daemons[0].pid(), "CONT");
    std::thread::sleep(Duration::from_secs(3));
    let acknowledged = stop_load(loading, 100);
    wait_acted_on(&receiver, &acknowledged);
    std::thread::sleep(Duration::from_secs(2));
    // Every event decided once: an event's calls (a send in flight when g1 was paused, sent
    // again by the new owner) all carry one id.
    assert_one_id_per_event(&receiver);
    // The woken node was refused (its lease lost, or its commit fenced) and let go.
    let log = daemons[0].log();
    assert!(
        log.contains("lease was lost") || log.contains("the partition stops here"),
        "{log}"
    );
    for daemon in daemons {
        assert!(daemon.terminate().success());
    }
    assert_oracle(&cluster, &setups[0]);
}

#[test]
fn a_node_cut_off_from_nats_answers_503_never_200_and_its_partitions_move() {
    use gancho_testkit::proxy::{Flow, Proxy};
    let Some(cluster) = NatsCluster::start(3) else {
        return;
    };
    let receiver = HttpReceiver::ok();
    let mut setups = three_nodes(&cluster, &receiver);
    // g1 reaches the servers through proxies that can cut it off.
    let proxies: Vec<Proxy> = cluster
        .urls()
        .iter()
        .map(|url| {
            let addr = url
                .trim_start_matches("nats://")
                .parse()
                .expect("a server address");
            Proxy::start(addr)
        })
        .collect();
    let urls: Vec<String> = proxies
        .iter()
        .map(|p| format!("{:?}", p.nats_url()))
        .collect();
    let config = std::fs::read_to_string(&setups[0].config).expect("g1's config");
    let nats_line = config
        .lines()
        .find(|l| l.starts_with("nats = "))
        .expect("a nats line")
        .to_owned();
    std::fs::write(
        &setups[0].config,
        config.replace(&nats_line, &format!("nats = [{}]", urls.join(", "))),
    )
    .expect("g1's config");
    let g1_setup = setups.remove(0);
    let g1 = g1_setup.start();
    let others: Vec<_> = setups.iter().map(Setup::start).collect();
    let post = |addr: SocketAddr, from: usize| {
        let items: Vec<serde_json::Value> = (from..from + 10)
            .map(|i| serde_json::json!({"event": "open", "time": 1433103519, "MessageID": i, "email": format!("u{i}@x")}))
            .collect();
        Request::post("/hooks/mailjet", &serde_json::to_vec(&items).expect("JSON"))
            .send(addr)
            .expect("HTTP")
    };
    assert_eq!(post(g1.addr, 0).status, 200);

    for proxy in &proxies {
        proxy.set(Flow::BlackHole);
    }
    // Cut off, g1 acknowledges nothing, and says it is not ready.
    for from in [100, 200] {
        let response = post(g1.addr, from);
        assert_ne!(response.status, 200, "{}", response.body);
        assert_eq!(response.status, 503, "{}", response.body);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while g1.request(&Request::get("/readyz")).status != 503 {
        assert!(Instant::now() < deadline, "g1 still says it is ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Its partitions move: events of every partition, posted to the others, are acted on.
    let mut expected: BTreeSet<String> = (0..10).map(|i| format!("u{i}@x")).collect();
    for (n, daemon) in others.iter().enumerate() {
        let from = 1000 + 100 * n;
        assert_eq!(post(daemon.addr, from).status, 200);
        expected.extend((from..from + 10).map(|i| format!("u{i}@x")));
    }
    // g1's partitions' events included.
    wait_acted_on(&receiver, &expected);
    let seen = calls(&receiver);
    for refused in (100..110).chain(200..210) {
        assert!(!seen.contains_key(&format!("u{refused}@x")), "u{refused}@x");
    }
    for daemon in others {
        assert!(daemon.terminate().success());
    }
    for proxy in &proxies {
        proxy.heal();
    }
    drop(g1);
}

/// Three nodes under load while `fault` acts on the servers: every acknowledged event is
/// acted on, with one id. Returns the nodes' setups (their rules, for the oracle) and the
/// events acknowledged.
fn under_load_through(
    cluster: &mut NatsCluster,
    fault: impl FnOnce(&mut NatsCluster, &[Daemon]),
) -> (Vec<Setup>, usize) {
    let receiver = HttpReceiver::ok();
    let setups = three_nodes(cluster, &receiver);
    let daemons: Vec<_> = setups.iter().map(Setup::start).collect();
    let addrs = Arc::new(Mutex::new(daemons.iter().map(|d| d.addr).collect()));
    let loading = start_load(&addrs);
    std::thread::sleep(Duration::from_secs(2));
    fault(cluster, &daemons);
    let acknowledged = stop_load(loading, 100);
    wait_acted_on(&receiver, &acknowledged);
    assert_one_id_per_event(&receiver);
    for daemon in daemons {
        assert!(daemon.terminate().success());
    }
    (setups, acknowledged.len())
}

#[test]
fn a_nats_server_killed_and_restarted_under_load_loses_nothing_acknowledged() {
    let Some(mut cluster) = NatsCluster::start(3) else {
        return;
    };
    let (_, acknowledged) = under_load_through(&mut cluster, |cluster, _| {
        cluster.kill(1);
        std::thread::sleep(Duration::from_secs(3));
        cluster.restart(1);
        cluster.wait_healthy(1, Duration::from_secs(30));
        std::thread::sleep(Duration::from_secs(2));
    });
    eprintln!("{acknowledged} acknowledged events, all acted on");
}

#[test]
fn a_nats_server_cut_off_from_its_peers_under_load_loses_nothing_acknowledged() {
    let options = gancho_testkit::nats::NatsOptions {
        proxied_routes: true,
        ..Default::default()
    };
    let Some(mut cluster) = NatsCluster::start_with(3, options) else {
        return;
    };
    let (setups, acknowledged) = under_load_through(&mut cluster, |cluster, daemons| {
        // Server n2 loses its peers (its clients still reach it: a node connected there gets
        // no acknowledgement, answers 503, and its leases run out) for longer than a lease.
        cluster.cut_off(1);
        std::thread::sleep(Duration::from_secs(8));
        cluster.reconnect(1);
        cluster.wait_healthy(1, Duration::from_secs(60));
        // A node whose client stayed on the cut server is ready again once that server has
        // its streams back (it answers "no stream found" for a few seconds after the routes
        // return).
        let deadline = Instant::now() + Duration::from_secs(60);
        for daemon in daemons {
            while daemon.request(&Request::get("/readyz")).status != 200 {
                assert!(
                    Instant::now() < deadline,
                    "a node never ready again after the cut"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        std::thread::sleep(Duration::from_secs(3));
    });
    eprintln!("{acknowledged} acknowledged events across the cut, all acted on");
    assert_oracle(&cluster, &setups[0]);
}

#[test]
fn rolling_restarts_of_the_gancho_nodes_repeat_no_send_and_of_the_servers_lose_nothing() {
    let Some(mut cluster) = NatsCluster::start(3) else {
        return;
    };
    let receiver = HttpReceiver::ok();
    let setups = three_nodes(&cluster, &receiver);
    let mut daemons: Vec<_> = setups.iter().map(Setup::start).collect();
    let addrs = Arc::new(Mutex::new(
        daemons.iter().map(|d| d.addr).collect::<Vec<_>>(),
    ));
    let loading = start_load(&addrs);
    std::thread::sleep(Duration::from_secs(1));
    // Each gancho node in turn: SIGTERM (its partitions handed over), started again.
    for i in 0..daemons.len() {
        let addr = daemons[i].addr;
        addrs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|a| *a != addr);
        let old = daemons.remove(i);
        assert!(old.terminate().success());
        daemons.insert(i, setups[i].start());
        addrs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(daemons[i].addr);
        std::thread::sleep(Duration::from_secs(2));
    }
    let acknowledged = stop_load(loading, 0);
    wait_acted_on(&receiver, &acknowledged);
    std::thread::sleep(Duration::from_secs(2));
    let repeated: Vec<_> = calls(&receiver)
        .into_iter()
        .filter(|(_, keys)| keys.len() > 1)
        .collect();
    assert!(
        repeated.is_empty(),
        "graceful handovers repeated sends: {repeated:?}"
    );
    eprintln!(
        "rolling restart of the gancho nodes: {} acknowledged events, each sent once",
        acknowledged.len()
    );

    // Then each nats-server in turn, under load: nothing acknowledged is lost.
    let loading = start_load(&addrs);
    for i in 0..3 {
        cluster.kill(i);
        std::thread::sleep(Duration::from_secs(1));
        cluster.restart(i);
        cluster.wait_healthy(i, Duration::from_secs(30));
        std::thread::sleep(Duration::from_secs(1));
    }
    let more = stop_load(loading, 0);
    wait_acted_on(&receiver, &more);
    assert_one_id_per_event(&receiver);
    for daemon in daemons {
        assert!(daemon.terminate().success());
    }
    assert_oracle(&cluster, &setups[0]);
}

/// The global lane's owner, as `gancho cluster status` shows it from `setup`'s node.
fn global_owner(setup: &Setup) -> Option<String> {
    let status = setup.json(&["cluster", "status", "--json"]);
    status["global"]["owner"].as_str().map(str::to_owned)
}

/// For each cron tick the receiver was called for (its time), the `Idempotency-Key`s of its
/// calls.
fn ticks(receiver: &HttpReceiver) -> BTreeMap<i64, Vec<String>> {
    let mut seen: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for request in receiver.requests() {
        let tick = request.json()["tick"].as_i64().unwrap_or_default();
        let key = request
            .header("idempotency-key")
            .unwrap_or_default()
            .to_owned();
        seen.entry(tick).or_default().push(key);
    }
    seen
}

#[test]
fn nodes_joining_and_leaving_under_load_run_each_cron_tick_once_through_a_kill_of_the_global_owner()
{
    let Some(cluster) = NatsCluster::start(3) else {
        return;
    };
    let receiver = HttpReceiver::ok();
    let tick_receiver = HttpReceiver::ok();
    let setups = three_nodes(&cluster, &receiver);
    let every_second = format!(
        "const EVERY = \"* * * * * *\";\nhttp(#{{ url: \"{}\", json: #{{ tick: event.time }} }});\n",
        tick_receiver.url("/tick")
    );
    for setup in &setups {
        write_rule(setup, "tick.rhai", &every_second);
    }
    let name = |i: usize| format!("g{}", i + 1);
    // g1 and g2 under load; g3 joins.
    let mut daemons: BTreeMap<String, Daemon> =
        (0..2).map(|i| (name(i), setups[i].start())).collect();
    let addrs = Arc::new(Mutex::new(
        daemons.values().map(|d| d.addr).collect::<Vec<_>>(),
    ));
    let set_addrs = |daemons: &BTreeMap<String, Daemon>| {
        *addrs.lock().unwrap_or_else(|e| e.into_inner()) =
            daemons.values().map(|d| d.addr).collect();
    };
    let loading = start_load(&addrs);
    std::thread::sleep(Duration::from_secs(3));
    daemons.insert(name(2), setups[2].start());
    set_addrs(&daemons);
    std::thread::sleep(Duration::from_secs(4));

    // kill -9 the global lane's owner; the others take the lane over and catch up its ticks.
    let deadline = Instant::now() + Duration::from_secs(30);
    let owner = loop {
        if let Some(owner) = global_owner(&setups[0]).filter(|o| daemons.contains_key(o)) {
            break owner;
        }
        assert!(Instant::now() < deadline, "the global lane has no owner");
        std::thread::sleep(Duration::from_millis(200));
    };
    let killed = (0..3).find(|&i| name(i) == owner).unwrap_or(0);
    if let Some(daemon) = daemons.remove(&owner) {
        daemon.kill();
    }
    set_addrs(&daemons);
    eprintln!("killed {owner}, the global lane's owner");
    std::thread::sleep(Duration::from_secs(5));

    // Another node leaves (SIGTERM), then the killed one comes back.
    let leaving = daemons.keys().next().cloned().unwrap_or_default();
    if let Some(daemon) = daemons.remove(&leaving) {
        set_addrs(&daemons);
        assert!(daemon.terminate().success());
    }
    std::thread::sleep(Duration::from_secs(3));
    daemons.insert(owner.clone(), setups[killed].start());
    set_addrs(&daemons);
    std::thread::sleep(Duration::from_secs(4));
    let acknowledged = stop_load(loading, 100);
    wait_acted_on(&receiver, &acknowledged);
    assert_one_id_per_event(&receiver);
    std::thread::sleep(Duration::from_secs(2));
    for (_, daemon) in daemons {
        assert!(daemon.terminate().success());
    }
    assert_oracle(&cluster, &setups[0]);

    // Each tick from the first to the last ran once: every second there, no tick decided
    // twice (a send repeated after the kill carries the first one's id).
    let seen = ticks(&tick_receiver);
    let (Some(&first), Some(&last)) = (seen.keys().next(), seen.keys().last()) else {
        panic!("no cron tick ran");
    };
    let missing: Vec<i64> = (0..=(last - first) / 1000)
        .map(|i| first + i * 1000)
        .filter(|t| !seen.contains_key(t))
        .collect();
    assert!(missing.is_empty(), "ticks never run: {missing:?}");
    assert!(
        last - first >= 15_000,
        "{} s of ticks",
        (last - first) / 1000
    );
    for (tick, keys) in &seen {
        assert!(
            keys.iter().all(|k| !k.is_empty() && k == &keys[0]),
            "tick {tick} decided twice: {keys:?}"
        );
    }
    let repeats = seen.values().filter(|keys| keys.len() > 1).count();
    eprintln!(
        "{} ticks over {} s, each run once ({repeats} sends repeated with the same id); {} acknowledged events acted on",
        seen.len(),
        (last - first) / 1000 + 1,
        acknowledged.len()
    );
}
