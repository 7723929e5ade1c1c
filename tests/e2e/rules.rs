//! Rules through the real daemon: webhooks in, decisions in the outbox; `gancho check` and
//! `gancho rules`.

use std::path::Path;
use std::time::{Duration, Instant};

use gancho_tests::Setup;

fn install_shipped_rules(setup: &Setup) {
    let to = setup.dir.path().join("rules");
    std::fs::create_dir_all(&to).unwrap();
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules");
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rhai") {
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
}

fn json_of(setup: &Setup, args: &[&str]) -> serde_json::Value {
    let out = setup.command(args);
    assert!(
        out.status.success(),
        "gancho {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn outbox(setup: &Setup) -> Vec<serde_json::Value> {
    json_of(setup, &["outbox", "--json", "--limit", "0"])
        .as_array()
        .unwrap()
        .clone()
}

/// Waits until the engine has processed every stored event.
fn wait_for_engine(setup: &Setup) {
    let last = setup
        .events(&[])
        .iter()
        .filter_map(|e| e["seq"].as_u64())
        .max()
        .unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = json_of(setup, &["rules", "--json"]);
        if status["cursor"].as_u64().unwrap() >= last {
            return;
        }
        assert!(Instant::now() < deadline, "engine stuck at {status}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn mailjet(event: &str, time: i64, email: &str) -> Vec<u8> {
    format!(
        r#"{{"event":"{event}","time":{time},"MessageID":288230387505203290,"email":"{email}","mj_campaign_id":7257,"CustomID":"spring"}}"#
    )
    .into_bytes()
}

#[test]
fn sent_then_open_over_http_decides_one_discount_and_a_second_open_none() {
    let setup = Setup::standard();
    install_shipped_rules(&setup);
    let daemon = setup.start();
    // Recent times: with old ones the reminder of open-reminder.rhai would be due at once.
    let t = now_secs() - 7200;
    assert_eq!(
        daemon
            .post_mailjet(&mailjet("sent", t, "ana@example.com"))
            .status,
        200
    );
    assert_eq!(
        daemon
            .post_mailjet(&mailjet("open", t + 3600, "ana@example.com"))
            .status,
        200
    );
    wait_for_engine(&setup);
    let items = outbox(&setup);
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0]["rule"], "open-discount");
    assert_eq!(items[0]["channel"], "email");
    assert_eq!(items[0]["to"][0], "ana@example.com");
    assert_eq!(items[0]["subject"], "10% off, just for you");

    // The same open again (a provider retry), and a second open later: no new decision.
    assert_eq!(
        daemon
            .post_mailjet(&mailjet("open", t + 3600, "ana@example.com"))
            .status,
        200
    );
    assert_eq!(
        daemon
            .post_mailjet(&mailjet("open", t + 7200, "ana@example.com"))
            .status,
        200
    );
    wait_for_engine(&setup);
    assert_eq!(outbox(&setup), items);

    // The table form names the rule and the recipient.
    let table = String::from_utf8(setup.command(&["outbox"]).stdout).unwrap();
    assert!(
        table.contains("open-discount") && table.contains("ana@example.com"),
        "{table}"
    );
    assert_eq!(daemon.terminate().code(), Some(0));
    // With the daemon stopped, the outbox is read from the store directly.
    assert_eq!(outbox(&setup), items);
}

#[test]
fn a_rule_broken_while_the_daemon_runs_is_reported_with_its_line_and_the_others_keep_running() {
    let setup = Setup::standard();
    install_shipped_rules(&setup);
    let daemon = setup.start();
    let broken = setup.dir.path().join("rules/open-discount.rhai");
    std::fs::write(
        &broken,
        "const ON = [\"mailjet.open\"];\nif event.email {\n",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let rule = loop {
        let status = json_of(&setup, &["rules", "--json"]);
        let rule = status["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "open-discount")
            .cloned()
            .unwrap();
        if !rule["error"].is_null() {
            break rule;
        }
        assert!(
            Instant::now() < deadline,
            "the broken rule was not reported"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(rule["loaded"], true, "the previous version keeps running");
    assert_eq!(rule["error"]["line"], 3);
    assert!(
        daemon.log().contains("open-discount.rhai:3:"),
        "{}",
        daemon.log()
    );

    // The other rules still decide: a bank withdrawal leads to an SMS.
    let withdrawal = br#"{"id":"w-1","kind":"withdrawal","at":1764320000,"account":"ES7612","phone":"+34600000001","amount":120,"currency":"EUR","atm":"Madrid, Gran Via 1"}"#;
    assert_eq!(daemon.post("bank", withdrawal).status, 200);
    wait_for_engine(&setup);
    let items = outbox(&setup);
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0]["channel"], "sms");
    assert_eq!(items[0]["to"], "+34600000001");

    // `gancho check` names file, line and column, and fails.
    let out = setup.command(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("open-discount.rhai:3:"), "{text}");
    assert!(text.contains("ok     withdrawal-sms"), "{text}");
    drop(daemon);
}

#[test]
fn check_passes_on_the_shipped_rules() {
    let setup = Setup::standard();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules");
    let out = setup.command(&["check", shipped.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("5 rule(s)"), "{text}");
}

#[test]
fn kill_9_while_the_engine_decides_makes_no_decision_twice_and_loses_none() {
    let setup = Setup::standard();
    install_shipped_rules(&setup);
    let daemon = setup.start();
    // Recent times: with old ones the reminder of open-reminder.rhai would be due at once.
    let t = now_secs() - 7200;
    const N: usize = 600;
    let event = |kind: &str, i: usize, at: i64| {
        format!(
            r#"{{"event":"{kind}","time":{at},"MessageID":{},"email":"r{i}@example.com","mj_campaign_id":1}}"#,
            19_000_000_000_000_000u64 + i as u64
        )
    };
    for chunk in (0..N).collect::<Vec<_>>().chunks(100) {
        let items: Vec<String> = chunk
            .iter()
            .flat_map(|&i| [event("sent", i, t), event("open", i, t + 60)])
            .collect();
        let body = format!("[{}]", items.join(","));
        assert_eq!(daemon.post_mailjet(body.as_bytes()).status, 200);
    }
    // Killed while the engine is somewhere in those 1,200 events.
    daemon.kill();
    let daemon = setup.start();
    wait_for_engine(&setup);
    let items = outbox(&setup);
    let mut emails: Vec<_> = items.iter().map(|i| i["to"][0].as_str().unwrap()).collect();
    emails.sort_unstable();
    emails.dedup();
    assert_eq!(emails.len(), N, "one discount per recipient");
    assert_eq!(items.len(), N, "no decision made twice");
    drop(daemon);
}

fn now_secs() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(now.as_secs()).unwrap()
}
