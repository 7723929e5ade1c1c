//! Cluster mode's start (issue 17): the real binary against real nats-server clusters on
//! loopback. A deployment that would break gancho's guarantees is refused with a message naming
//! the server and what to change; the config names a source without a partition key.

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
fn cluster_check_passes_on_2_15_and_run_says_cluster_mode_is_not_there_yet() {
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

    // Until cluster mode runs, a daemon configured for it does not start as a lone node.
    let out = setup.command(&["run"]);
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("does not run cluster mode yet"), "{stderr}");
    assert!(!setup.dir.path().join("data").join("store").exists());
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
    let out = setup.command(&["cluster", "status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("cluster of 4 partitions; 1 node(s) alive"),
        "{text}"
    );

    // This node's config says 16 partitions; the cluster was made with 4.
    let out = setup.command(&["cluster", "check"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("set partitions = 4"), "{stderr}");
}
