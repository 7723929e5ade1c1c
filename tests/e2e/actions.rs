//! Actions through the real daemon: rules' HTTP calls reach a receiver, survive `kill -9`,
//! fail into dead letters that `gancho dead retry` puts back, and stop at the SSRF guard.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::support::{Setup, call_rule, withdrawal};
use gancho_testkit::{HttpReceiver, Reply, wait_until};

/// Waits for `gancho dead --json` to list exactly one dead letter.
fn one_dead_letter(setup: &Setup) -> Option<serde_json::Value> {
    wait_until(Duration::from_secs(20), || {
        let dead = setup.json(&["dead", "--json"]);
        (dead.as_array().unwrap().len() == 1).then_some(dead)
    })
}

const ALLOW_PRIVATE: &str = "[http]\nallow_private = true\n";

#[test]
fn kill_9_with_sends_in_flight_delivers_every_action_at_least_once_with_one_id_each() {
    let receiver = HttpReceiver::start(|_| Reply::status(200).after(Duration::from_millis(150)));
    let setup = Setup::standard_with(&format!("{ALLOW_PRIVATE}concurrency = 16\nper_host = 16\n"));
    call_rule(&setup, &receiver.url("/hook"));
    let daemon = setup.start();
    const N: usize = 300;
    for n in 0..N {
        assert_eq!(
            daemon.post("bank", &withdrawal(&format!("w{n}"))).status,
            200
        );
    }
    // Killed while the receiver is slowly taking calls: many are in flight.
    let seen = wait_until(Duration::from_secs(30), || {
        let n = receiver.requests().len();
        (n >= 20).then_some(n)
    });
    assert!(seen.is_some(), "no calls came in:\n{}", daemon.log());
    daemon.kill();
    let before = receiver.requests().len();
    assert!(
        before < N,
        "everything was sent before the kill: nothing was tested"
    );

    let daemon = setup.start();
    let mut keys: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let done = wait_until(Duration::from_secs(60), || {
        keys.clear();
        for request in receiver.requests() {
            let id = request.json()["id"].as_str().unwrap().to_owned();
            keys.entry(id)
                .or_default()
                .insert(request.header("idempotency-key").unwrap().to_owned());
        }
        (keys.len() == N).then_some(())
    });
    assert!(
        done.is_some(),
        "{} of {N} delivered:\n{}",
        keys.len(),
        daemon.log()
    );
    assert!(
        keys.values().all(|ids| ids.len() == 1),
        "a repeated call must carry the same Idempotency-Key"
    );
    let repeats = receiver.requests().len() - N;
    eprintln!("{before} calls before the kill; {repeats} repeated after the restart");
    drop(daemon);
}

#[test]
fn a_refused_call_goes_to_dead_letters_and_dead_retry_delivers_it() {
    let receiver = HttpReceiver::start(|_| Reply::status(422).body("unknown account"));
    let setup = Setup::standard_with(ALLOW_PRIVATE);
    call_rule(&setup, &receiver.url("/hook"));
    let daemon = setup.start();
    assert_eq!(daemon.post("bank", &withdrawal("w1")).status, 200);

    let dead =
        one_dead_letter(&setup).unwrap_or_else(|| panic!("no dead letter:\n{}", daemon.log()));
    let letter = &dead[0];
    assert_eq!(letter["action"]["rule"], "notify");
    let attempts = letter["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "a 422 is not retried");
    let error = attempts[0]["error"].as_str().unwrap();
    assert!(
        error.contains("422") && error.contains("unknown account"),
        "{error}"
    );
    let table = String::from_utf8(setup.command(&["dead"]).stdout).unwrap();
    assert!(table.contains("unknown account"), "{table}");
    // `gancho explain` says why it died.
    let seq = letter["action"]["event_seq"].as_u64().unwrap().to_string();
    let what = setup.json(&["explain", &seq, "--json"]);
    assert_eq!(what["actions"][0]["fate"], "dead", "{what}");
    assert!(
        what["actions"][0]["why"]
            .as_str()
            .unwrap()
            .contains("unknown account"),
        "{what}"
    );
    assert!(setup.lists_nothing(&["outbox", "--json"]));

    // Fixed on the receiver's side: put back, delivered once.
    receiver.set_handler(|_| Reply::status(200));
    let id = letter["action"]["id"].as_str().unwrap();
    let out = setup.command(&["dead", "retry", "no-such-id"]);
    assert!(!out.status.success());
    let out = setup.command(&["dead", "retry", id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let requests = receiver.wait_for(2, Duration::from_secs(20));
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].header("idempotency-key"), Some(id));
    let empty = wait_until(Duration::from_secs(20), || {
        setup
            .json(&["dead", "--json"])
            .as_array()
            .unwrap()
            .is_empty()
            .then_some(())
    });
    assert!(empty.is_some());
    // The delivery history has it: to whom, when decided and delivered, the peer's answer.
    let sent = wait_until(Duration::from_secs(20), || {
        let sent = setup.json(&["sent", "--json"]);
        (!sent.as_array().unwrap().is_empty()).then_some(sent)
    })
    .unwrap();
    let sent = &sent[0];
    assert_eq!(sent["id"], id, "{sent}");
    assert_eq!(sent["channel"], "http");
    assert_eq!(sent["rule"], "notify");
    assert!(sent["to"].as_str().unwrap().ends_with("/hook"), "{sent}");
    assert!(sent["answer"].as_str().unwrap().contains("200"), "{sent}");
    let (decided, delivered) = (
        sent["decided_ms"].as_i64().unwrap(),
        sent["delivered_ms"].as_i64().unwrap(),
    );
    assert!(decided > 0 && decided <= delivered, "{sent}");
    assert!(setup.lists_nothing(&["sent", "--channel", "sms", "--json"]));
    let table = String::from_utf8(setup.command(&["sent"]).stdout).unwrap();
    assert!(table.contains(id) && table.contains("http 200"), "{table}");
    let what = setup.json(&["explain", &seq, "--json"]);
    assert_eq!(what["actions"][0]["fate"], "delivered", "{what}");
    assert_eq!(what["actions"][0]["at_ms"], delivered);
    assert_eq!(daemon.terminate().code(), Some(0));
}

#[test]
fn the_ssrf_guard_stops_a_rules_call_to_loopback_unless_allowed() {
    let receiver = HttpReceiver::ok();
    // No [http] section: private targets are refused.
    let setup = Setup::standard();
    call_rule(&setup, &receiver.url("/hook"));
    let daemon = setup.start();
    assert_eq!(daemon.post("bank", &withdrawal("w1")).status, 200);
    let dead = one_dead_letter(&setup).unwrap();
    let error = dead[0]["attempts"][0]["error"].as_str().unwrap();
    assert!(error.contains("SSRF guard"), "{error}");
    assert!(receiver.requests().is_empty());
    assert_eq!(daemon.terminate().code(), Some(0));

    // Allowed by config: the call goes through.
    let allowed = Setup::standard_with(ALLOW_PRIVATE);
    call_rule(&allowed, &receiver.url("/hook"));
    let daemon = allowed.start();
    let started = Instant::now();
    assert_eq!(daemon.post("bank", &withdrawal("w2")).status, 200);
    assert_eq!(receiver.wait_for(1, Duration::from_secs(20)).len(), 1);
    assert!(started.elapsed() < Duration::from_secs(20));
    drop(daemon);
}

#[test]
fn two_stores_give_the_same_event_and_rule_different_codes() {
    let receiver = HttpReceiver::ok();
    let code_rule = |setup: &Setup| {
        crate::support::write_rule(
            setup,
            "code.rhai",
            &format!(
                "const ON = [\"bank.*\"];\nhttp(#{{ method: \"POST\", url: \"{}\", json: #{{ code: code(\"WELCOME\", 8), id: event.payload_id }} }});\n",
                receiver.url("/code")
            ),
        );
    };
    let codes = |n: usize| -> Vec<String> {
        receiver
            .wait_for(n, Duration::from_secs(20))
            .iter()
            .map(|r| {
                let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                body["code"].as_str().unwrap().to_owned()
            })
            .collect()
    };
    let (a, b) = (
        Setup::standard_with(ALLOW_PRIVATE),
        Setup::standard_with(ALLOW_PRIVATE),
    );
    code_rule(&a);
    code_rule(&b);
    // The same event and rule in two stores: two codes, neither guessable from the other.
    for (n, setup) in [&a, &b].into_iter().enumerate() {
        let daemon = setup.start();
        assert_eq!(daemon.post("bank", &withdrawal("w1")).status, 200);
        assert_eq!(
            receiver.wait_for(n + 1, Duration::from_secs(20)).len(),
            n + 1
        );
        assert_eq!(daemon.terminate().code(), Some(0));
    }
    let first = codes(2);
    assert!(
        first[0].starts_with("WELCOME") && first[1].starts_with("WELCOME"),
        "{first:?}"
    );
    assert_ne!(first[0], first[1], "two stores gave the same code");
}
