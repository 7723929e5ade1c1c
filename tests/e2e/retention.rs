//! Retention on the real daemon: events posted with old event times go at `gancho prune` once
//! processed, unless a pending timer refers to them; the rest stay; the daemon need not run.

use std::time::{Duration, Instant};

use gancho_core::{Clock as _, SystemClock};

use crate::support::{Setup, write_rule};

fn withdrawal_at(id: &str, at: i64) -> Vec<u8> {
    format!(r#"{{"id":"{id}","kind":"withdrawal","at":{at},"account":"A{id}","amount":20}}"#)
        .into_bytes()
}

fn ids(setup: &Setup) -> Vec<String> {
    let mut ids: Vec<String> = setup
        .events(&["--source", "bank"])
        .iter()
        .map(|e| e["data"]["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

/// Runs `gancho prune --json` until it has deleted `events` events in all (the engine's
/// cursor becomes durable up to a second after it moves), and returns the counts summed.
fn prune_until(setup: &Setup, events: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut total = serde_json::json!({});
    loop {
        let pruned = setup.json(&["prune", "--json"]);
        for (name, n) in pruned.as_object().unwrap() {
            let sum = total[name].as_u64().unwrap_or(0) + n.as_u64().unwrap();
            total[name] = sum.into();
        }
        if total["events"].as_u64() >= Some(events) {
            return total;
        }
        assert!(Instant::now() < deadline, "pruned only {total}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn wait_for_cursor(setup: &Setup, seq: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while setup.json(&["rules", "--json"])["cursor"].as_u64() < Some(seq) {
        assert!(Instant::now() < deadline, "the engine did not reach {seq}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn gancho_prune_deletes_processed_events_past_the_retention_but_those_timers_refer_to() {
    let setup = Setup::standard_with("[store]\nretention = \"30d\"\n");
    // A timer set by the event `keep` refers to it: it stays while the timer is pending.
    write_rule(
        &setup,
        "remind.rhai",
        "const ON = [\"bank.withdrawal\"];\nif event.payload_id == \"keep\" { after(\"later\", days(400), \"later\", #{}); }\nfn later(t) {}\n",
    );
    // A window longer than the retention sees only what is kept: the daemon says so once per
    // rule, at load when the window is written out, else at its first query.
    write_rule(
        &setup,
        "window.rhai",
        "const ON = [\"bank.withdrawal\"];\nlet n = count(\"bank.withdrawal\", #{}, days(40));\n",
    );
    write_rule(
        &setup,
        "worked.rhai",
        "const ON = [\"bank.withdrawal\"];\nlet d = days(20) * 2;\nlet n = count(\"bank.withdrawal\", #{}, d);\n",
    );
    let daemon = setup.start();
    let now = SystemClock.now().timestamp();
    let old = now - 40 * 86_400;
    for id in ["old1", "old2", "old3", "keep"] {
        assert_eq!(daemon.post("bank", &withdrawal_at(id, old)).status, 200);
    }
    assert_eq!(daemon.post("bank", &withdrawal_at("new", now)).status, 200);
    wait_for_cursor(&setup, 5);

    let pruned = prune_until(&setup, 3);
    let log = daemon.log();
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("longer than the store's retention"))
        .collect();
    assert_eq!(warned.len(), 2, "{log}");
    assert!(warned[0].contains("window.rhai"), "{log}");
    assert!(warned[1].contains("worked"), "{log}");
    assert_eq!(pruned["events"], 3, "{pruned}");
    assert!(pruned["kept"].as_u64() >= Some(1), "{pruned}");
    assert_eq!(ids(&setup), ["keep", "new"]);
    let text = setup.command(&["prune"]);
    assert!(text.status.success());
    assert!(
        String::from_utf8_lossy(&text.stdout).starts_with("pruned 0 event(s) (1 kept"),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );
    // A pruned event's id is forgotten: posted again, it is stored (and processed) again.
    assert_eq!(daemon.post("bank", &withdrawal_at("old1", old)).status, 200);
    assert_eq!(ids(&setup), ["keep", "new", "old1"]);
    wait_for_cursor(&setup, 6);
    // The engine's cursor is durable at the latest when it stops.
    assert_eq!(daemon.terminate().code(), Some(0));

    // With the daemon stopped, the command opens the store itself.
    let pruned = setup.json(&["prune", "--json"]);
    assert_eq!(pruned["events"], 1, "{pruned}");
    assert_eq!(ids(&setup), ["keep", "new"]);
    // Nothing pruned comes back at the next start, and nothing is processed twice (the
    // counters are stored across restarts: one run more).
    let runs = |setup: &Setup| setup.json(&["rules", "--json"])["rules"][0]["runs"].as_u64();
    let before = runs(&setup);
    let daemon = setup.start();
    assert_eq!(ids(&setup), ["keep", "new"]);
    assert_eq!(daemon.post("bank", &withdrawal_at("new2", now)).status, 200);
    wait_for_cursor(&setup, 7);
    assert_eq!(runs(&setup), before.map(|n| n + 1));
    assert_eq!(daemon.terminate().code(), Some(0));
}

#[test]
fn with_retention_0_nothing_is_deleted() {
    let setup = Setup::standard_with("[store]\nretention = \"0\"\nquarantine_retention = \"0\"\n");
    let daemon = setup.start();
    let old = SystemClock.now().timestamp() - 4000 * 86_400;
    assert_eq!(
        daemon.post("bank", &withdrawal_at("ancient", old)).status,
        200
    );
    wait_for_cursor(&setup, 1);
    let pruned = setup.json(&["prune", "--json"]);
    assert_eq!(pruned["events"], 0, "{pruned}");
    assert_eq!(ids(&setup), ["ancient"]);
    assert_eq!(daemon.terminate().code(), Some(0));
}
