//! Cluster mode (issue 17): the real binary against real nats-server clusters on loopback. A
//! deployment that would break gancho's guarantees is refused with a message naming the server
//! and what to change; the config names a source without a partition key; three nodes take
//! webhooks on any node and hand partitions over without repeating an action.

use gancho_testkit::nats::{NatsCluster, NatsOptions, old_binary};

use crate::support::Setup;

/// A `[cluster]` section for `cluster`.
fn cluster_section(cluster: &NatsCluster) -> String {
    format!("[cluster]\n{}node = \"g1\"\n", cluster.cluster_keys())
}

/// Starts three servers with `options` and `gancho run` on them; its exit code and stderr.
fn run_on(options: NatsOptions) -> Option<(Option<i32>, String)> {
    let cluster = NatsCluster::start_with(3, options)?;
    let setup = Setup::new(&format!("{MAILJET}\n{}", cluster_section(&cluster)));
    let out = setup.command(&["run"]);
    assert!(!setup.dir.path().join("data").join("store").exists());
    Some((
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

const MAILJET: &str = "[sources.mailjet]\nkind = \"mailjet\"\n";

#[test]
fn cluster_check_passes_on_2_15_and_run_starts_a_node() {
    let Some(cluster) = NatsCluster::start(3) else {
        return;
    };
    let setup = Setup::new(&format!("{MAILJET}\n{}", cluster_section(&cluster)));
    let report = setup.json(&["cluster", "check", "--json"]);
    assert_eq!(report["ok"], true, "{report}");
    let servers = report["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 3, "{report}");
    assert_eq!(report["partitions"], 16, "{report}");
    // Checking creates nothing.
    assert!(report["created_with_partitions"].is_null(), "{report}");
    for server in servers {
        assert_eq!(server["sync_always"], true, "{report}");
        assert_eq!(server["file_storage"], true, "{report}");
    }
    let out = setup.command(&["cluster", "check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("ok: 3 server(s)"),
        "{text}"
    );

    // On servers that pass, `gancho run` runs a cluster node, and stops cleanly.
    let daemon = setup.start();
    // Ready once its membership's first tick reached NATS.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let ready = daemon.request(&crate::support::Request::get("/readyz"));
        if ready.status == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", ready.body);
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(daemon.terminate().success());
}

#[test]
fn a_cluster_node_serves_its_partitions_metrics_and_the_cluster_on_the_admin_listener() {
    let Some(cluster) = NatsCluster::start(3) else {
        return;
    };
    const TOKEN: &str = "a-cluster-admin-token-0123";
    let setup = Setup::new(&format!(
        "{MAILJET}
[admin]
listen = \"127.0.0.1:0\"
token = \"{TOKEN}\"

{}partitions = 4
",
        cluster_section(&cluster)
    ));
    let daemon = setup.start();
    let admin = daemon
        .admin
        .unwrap_or_else(|| panic!("no admin listener: {}", daemon.log()));
    let get = |path: &str, token: bool| {
        let mut request = crate::support::Request::get(path);
        if token {
            request = request.header("Authorization", &format!("Bearer {TOKEN}"));
        }
        request.send(admin).expect("the admin listener")
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while get("/readyz", false).status != 200 {
        assert!(std::time::Instant::now() < deadline, "never ready");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(daemon.post_mailjet(&opens(0, 10)).status, 200);
    assert_eq!(get("/metrics", false).status, 401);
    assert_eq!(get("/admin/cluster", false).status, 401);

    // Alone, the node runs every partition and the global lane, and says how it got them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let metrics = loop {
        let metrics = get("/metrics", true);
        assert_eq!(metrics.status, 200, "{}", metrics.body);
        let caught_up = ["0", "1", "2", "3"].iter().all(|p| {
            metrics.body.contains(&format!(
                "gancho_cluster_partition_lag_events{{partition=\"{p}\"}} 0"
            ))
        });
        if caught_up
            && metrics
                .body
                .contains("gancho_cluster_partition_owned{partition=\"global\"} 1")
        {
            break metrics.body;
        }
        assert!(std::time::Instant::now() < deadline, "{}", metrics.body);
        std::thread::sleep(std::time::Duration::from_secs(1));
    };
    for p in ["0", "1", "2", "3", "global"] {
        assert!(
            metrics.contains(&format!(
                "gancho_cluster_ownership_changes_total{{partition=\"{p}\",change=\"gained\"}} 1"
            )),
            "{metrics}"
        );
    }
    assert!(
        metrics.contains("gancho_cluster_nodes_alive 1"),
        "{metrics}"
    );
    assert!(metrics.contains("gancho_cluster_connected 1"), "{metrics}");
    assert!(
        metrics.contains("gancho_events_received_total"),
        "{metrics}"
    );

    let answer = get("/admin/cluster", true);
    assert_eq!(answer.status, 200, "{}", answer.body);
    let body: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(body["node"], "g1", "{body}");
    assert_eq!(
        body["running"],
        serde_json::json!(["0", "1", "2", "3", "global"]),
        "{body}"
    );
    assert_eq!(body["cluster"]["partitions"], 4, "{body}");
    let decided: u64 = body["cluster"]["partition_status"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["cursor"].as_u64().unwrap())
        .sum();
    assert_eq!(decided, 10, "{body}");
    assert!(daemon.terminate().success());
}

/// SIGHUP (`systemctl reload gancho`) has every partition read its rules at once; without a
/// handler it would have killed the node. (Engines also read the folder every second.)
#[test]
fn sighup_reloads_every_partition_of_a_cluster_node_and_does_not_stop_it() {
    let Some(cluster) = NatsCluster::start(3) else {
        return;
    };
    let receiver = gancho_testkit::HttpReceiver::ok();
    let setup = Setup::new(&format!(
        "{MAILJET}
[http]
allow_private = true

{}partitions = 2
",
        cluster_section(&cluster)
    ));
    let rule = |version: u32| {
        format!(
            "const ON = [\"mailjet.open\"];\nhttp(#{{ url: \"{}\", json: #{{ v: {version}, email: event.email }} }});\n",
            receiver.url("/hook")
        )
    };
    crate::support::write_rule(&setup, "open.rhai", &rule(1));
    let daemon = setup.start();
    let versions = || -> Vec<u64> {
        receiver
            .requests()
            .iter()
            .map(|r| r.json()["v"].as_u64().unwrap_or_default())
            .collect()
    };
    // Both partitions run version 1.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    assert_eq!(daemon.post_mailjet(&opens(0, 10)).status, 200);
    while versions().len() < 10 {
        assert!(std::time::Instant::now() < deadline, "{:?}", versions());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(versions().iter().all(|v| *v == 1));

    // Version 2, then SIGHUP: every partition reads it.
    crate::support::write_rule(&setup, "open.rhai", &rule(2));
    crate::support::signal(daemon.pid(), "HUP");
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(daemon.post_mailjet(&opens(10, 20)).status, 200);
    while versions().len() < 20 {
        assert!(std::time::Instant::now() < deadline, "{:?}", versions());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(versions()[10..].iter().all(|v| *v == 2), "{:?}", versions());
    assert!(
        daemon
            .log()
            .contains("SIGHUP: reading the rules folder again")
    );
    assert!(daemon.terminate().success());
}

/// `[http] rate_per_second` is the cluster's budget: three nodes together send no faster.
#[test]
fn a_channels_rate_limit_is_a_budget_of_the_whole_cluster() {
    let Some(cluster) = NatsCluster::start(3) else {
        return;
    };
    let receiver = gancho_testkit::HttpReceiver::ok();
    let rule = format!(
        "const ON = [\"mailjet.open\"];\nhttp(#{{ url: \"{}\", json: #{{ email: event.email }} }});\n",
        receiver.url("/hook")
    );
    // 3 a second for the cluster: with 2 partitions and the global lane, 1 a second each.
    let daemons: Vec<_> = ["g1", "g2", "g3"]
        .iter()
        .map(|node| {
            let setup = Setup::new(&format!(
                "{MAILJET}
[http]
allow_private = true
rate_per_second = 3

[cluster]
{}node = \"{node}\"
partitions = 2
lease = \"2s\"
",
                cluster.cluster_keys()
            ));
            crate::support::write_rule(&setup, "open.rhai", &rule);
            let daemon = setup.start();
            (setup, daemon)
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_secs(4));
    assert_eq!(daemons[0].1.post_mailjet(&opens(0, 24)).status, 200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while receiver.requests().len() < 24 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} sent",
            receiver.requests().len()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let mut at: Vec<std::time::Instant> = receiver.requests().iter().map(|r| r.at).collect();
    at.sort();
    // In any 4 s, at most 3 a second, and each lane's first send at once.
    for (i, start) in at.iter().enumerate() {
        let within = at[i..]
            .iter()
            .take_while(|t| t.duration_since(*start) < std::time::Duration::from_secs(4))
            .count();
        assert!(within <= 3 * 4 + 3, "{within} sends within 4 s");
    }
    let span = at[at.len() - 1].duration_since(at[0]);
    assert!(span >= std::time::Duration::from_secs(6), "{span:?}");
    for (_, daemon) in daemons {
        assert!(daemon.terminate().success());
    }
}

/// Events to node `i`'s mailjet source: opens of `from..to`.
fn opens(from: usize, to: usize) -> Vec<u8> {
    let items: Vec<serde_json::Value> = (from..to)
        .map(|i| serde_json::json!({"event": "open", "time": 1433103519, "MessageID": i, "email": format!("u{i}@x")}))
        .collect();
    serde_json::to_vec(&items).unwrap()
}

/// Each e-mail the receiver was called for, with how many times.
fn calls(receiver: &gancho_testkit::HttpReceiver) -> std::collections::BTreeMap<String, usize> {
    let mut seen = std::collections::BTreeMap::new();
    for request in receiver.requests() {
        let email = request.json()["opened"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        *seen.entry(email).or_insert(0) += 1;
    }
    seen
}

#[test]
fn three_nodes_take_webhooks_on_any_node_and_hand_partitions_over_without_repeats() {
    let Some(cluster) = NatsCluster::start(3) else {
        return;
    };
    let receiver = gancho_testkit::HttpReceiver::ok();
    let rule = format!(
        "const ON = [\"mailjet.open\"];\nhttp(#{{ url: \"{}\", json: #{{ opened: event.keys.email }} }});\n",
        receiver.url("/hook")
    );
    let setups: Vec<Setup> = ["g1", "g2", "g3"]
        .iter()
        .map(|node| {
            let setup = Setup::new(&format!(
                "{MAILJET}\n[http]\nallow_private = true\n\n[cluster]\n{}node = \"{node}\"\npartitions = 4\nlease = \"2s\"\n",
                cluster.cluster_keys()
            ));
            crate::support::write_rule(&setup, "open.rhai", &rule);
            setup
        })
        .collect();
    let mut daemons: Vec<_> = setups.iter().map(Setup::start).collect();
    let wait = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    // Any node takes any event: 30 events, 10 to each.
    for (i, daemon) in daemons.iter().enumerate() {
        let response = daemon.post("mailjet", &opens(10 * i, 10 * i + 10));
        assert_eq!(response.status, 200, "{}", response.body);
    }
    wait("30 actions", &|| calls(&receiver).len() == 30);

    // g1 stops (SIGTERM): its partitions go to the others, its last sends finished first.
    let g1 = daemons.remove(0);
    assert!(g1.terminate().success());
    for (i, daemon) in daemons.iter().enumerate() {
        let response = daemon.post("mailjet", &opens(30 + 15 * i, 45 + 15 * i));
        assert_eq!(response.status, 200, "{}", response.body);
    }
    wait("60 actions", &|| calls(&receiver).len() == 60);
    std::thread::sleep(std::time::Duration::from_secs(2));
    let repeated: Vec<_> = calls(&receiver)
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .collect();
    assert!(repeated.is_empty(), "called more than once: {repeated:?}");
    for daemon in daemons {
        assert!(daemon.terminate().success());
    }
}

#[test]
fn a_nats_server_older_than_2_14_is_refused_at_start() {
    let Some(binary) = old_binary() else {
        return;
    };
    let options = NatsOptions {
        binary: Some(binary),
        ..NatsOptions::default()
    };
    let Some((code, stderr)) = run_on(options) else {
        return;
    };
    assert_eq!(code, Some(78), "{stderr}");
    assert!(
        stderr.contains("version 2.12") && stderr.contains("needs 2.14.0 or later"),
        "{stderr}"
    );
}

#[test]
fn servers_that_do_not_sync_each_write_are_refused_at_start() {
    let options = NatsOptions {
        no_sync_always: true,
        ..NatsOptions::default()
    };
    let Some((code, stderr)) = run_on(options) else {
        return;
    };
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains("sync_interval: always"), "{stderr}");
}

#[test]
fn unreachable_nats_exits_69_so_the_unit_restarts_it() {
    let setup = Setup::new(&format!(
        "{MAILJET}\n[cluster]\nnats = [\"nats://127.0.0.1:1\"]\nnode = \"g1\"\nmonitor = [\"http://127.0.0.1:1\"]\n"
    ));
    let out = setup.command(&["run"]);
    assert_eq!(out.status.code(), Some(69));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("http://127.0.0.1:1"), "{stderr}");
}

#[test]
fn in_cluster_mode_every_source_names_its_partition_key() {
    let cluster = "[cluster]\nnats = [\"nats://127.0.0.1:4222\"]\nnode = \"g1\"\n";
    let bank = "[sources.bank]\nkind = \"json\"\ntype = \"/kind\"\nkeys = { account = \"/account\", card = \"/card\" }\n";
    let setup = Setup::new(&format!("{bank}\n{cluster}"));
    let out = setup.command(&["check-config"]);
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("sources.bank.partition_key: required in cluster mode")
            && stderr.contains("account, card"),
        "{stderr}"
    );

    // Named, and a key it does not have refused.
    let named = bank.replace(
        "\nkeys",
        "\npartition_key = \"account\"\ncolocated = [\"card\"]\nkeys",
    );
    let setup = Setup::new(&format!("{named}\n{cluster}"));
    let out = setup.command(&["check-config"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let wrong = bank.replace("\nkeys", "\npartition_key = \"iban\"\nkeys");
    let setup = Setup::new(&format!("{wrong}\n{cluster}"));
    let out = setup.command(&["check-config"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("sources.bank.partition_key") && stderr.contains("\"iban\" is not one"),
        "{stderr}"
    );

    // Mailjet places events by `email`, with `MessageID` colocated, by default; a single node
    // needs no partition key at all.
    let setup = Setup::new(&format!("{MAILJET}\n{cluster}"));
    assert!(setup.command(&["check-config"]).status.success());
    let setup = Setup::new(bank);
    assert!(setup.command(&["check-config"]).status.success());
}

#[test]
fn cluster_status_shows_nodes_owners_cursors_and_lag_from_any_node() {
    let Some(cluster) = NatsCluster::start(3) else {
        return;
    };
    let setup = Setup::new(&format!("{MAILJET}\n{}", cluster_section(&cluster)));
    let out = setup.command(&["cluster", "status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("not created yet"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A cluster of 4 partitions where node g1 owns partition 1, has decided its first 4 events
    // of 10, and heartbeats.
    let config: gancho_cluster::ClusterConfig =
        toml::from_str(&format!("{}node = \"g1\"\n", cluster.cluster_keys())).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = gancho_cluster::connect(&config, None).await.unwrap();
        let js = async_nats::jetstream::new(client);
        gancho_cluster::fix_partitions(&js, 4).await.unwrap();
        gancho_cluster::create_streams(&js, 4).await.unwrap();
        let events: Vec<gancho_core::NewEvent> = (0..10)
            .map(|i| {
                serde_json::from_value(serde_json::json!({
                    "id": format!("e{i}"), "source": "mailjet", "type": "open",
                    "time": "2026-11-30T10:00:00Z", "received": "2026-11-30T10:00:00Z",
                    "keys": {"email": "a@example.com"}, "data": {},
                }))
                .unwrap()
            })
            .collect();
        gancho_cluster::publish_events(&js, &events, |_| 1)
            .await
            .unwrap();
        let mut journal = gancho_cluster::Journal::open(&js, 1, "g1").await.unwrap();
        journal.commit(4, b"decisions".to_vec()).await.unwrap();
        let leases = gancho_cluster::Leases::open(&js, "g1", std::time::Duration::from_secs(30))
            .await
            .unwrap();
        leases.heartbeat().await.unwrap();
        assert!(leases.acquire(1).await.unwrap().is_some());
    });

    let status = setup.json(&["cluster", "status", "--json"]);
    assert_eq!(status["partitions"], 4, "{status}");
    assert_eq!(status["nodes"][0]["name"], "g1", "{status}");
    let p1 = &status["partition_status"][1];
    assert_eq!(p1["owner"], "g1", "{status}");
    assert_eq!(
        (&p1["cursor"], &p1["last_event"], &p1["lag"], &p1["commits"]),
        (&4.into(), &10.into(), &6.into(), &1.into()),
        "{status}"
    );
    let p0 = &status["partition_status"][0];
    assert!(p0["owner"].is_null() && p0["lag"] == 0, "{status}");
    assert!(p1["last_snapshot"].is_null(), "{status}");
    // The global lane: its stream sources the partitions' (10 events), no owner yet.
    let global = &status["global"];
    assert!(global["owner"].is_null(), "{status}");
    assert_eq!(global["partition"], 65535, "{status}");
    let out = setup.command(&["cluster", "status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("cluster of 4 partitions; 1 node(s) alive")
            && text.contains("\nglobal\t-\t0\t"),
        "{text}"
    );

    // This node's config says 16 partitions; the cluster was made with 4.
    let out = setup.command(&["cluster", "check"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("set partitions = 4"), "{stderr}");
}
