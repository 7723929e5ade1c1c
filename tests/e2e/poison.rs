//! Poison events: a run that kills the engine (here an abort, injected for one rule and one
//! event type) is tried three times, then set aside and listed by `gancho poisoned`, while the
//! other rules run on its event and processing goes on.

use std::time::{Duration, Instant};

use crate::support::{Reaped, Setup, wait_with_timeout, write_rule};

const BOMB: (&str, &str) = ("GANCHO_FAILPOINTS", "engine.run.bomb.bank.poison=abort");

fn item(id: &str, kind: &str) -> String {
    format!(r#"{{"id":"{id}","kind":"{kind}","at":1764320000,"account":"A","amount":1}}"#)
}

/// A life of the daemon that may die before it is ready: its stderr goes to `log`.
fn life(setup: &Setup, log: &std::path::Path) -> Reaped {
    let child = crate::support::daemon_command(setup, &[BOMB])
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    Reaped(child)
}

#[test]
fn a_run_that_kills_the_engine_is_tried_three_times_then_set_aside_and_the_rest_goes_on() {
    let setup = Setup::standard();
    // Both rules run on every bank event; only `bomb` dies, and only on `bank.poison`.
    for rule in ["bomb", "calm"] {
        write_rule(
            &setup,
            &format!("{rule}.rhai"),
            "const ON = [\"bank.*\"];\nlet n = 1;\n",
        );
    }
    let daemon = setup.start_with_env(&[BOMB]);
    let body = format!(
        "[{},{},{}]",
        item("w1", "withdrawal"),
        item("p1", "poison"),
        item("w2", "withdrawal")
    );
    // The events are durable before the 200 is written, and the engine may abort the process
    // before the HTTP worker writes it: an answer cut short is as good as a 200 here.
    let answer = crate::support::Request::post("/hooks/bank", body.as_bytes()).send(daemon.addr);
    if let Ok(answer) = answer {
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    let first = daemon.wait_exit(Duration::from_secs(30));
    assert!(!first.success(), "the engine was to die");
    let mut deaths = 1;
    let mut logs = Vec::new();
    // What systemd would do: start it again, until it stays up past the poison.
    let kept_up = loop {
        assert!(deaths <= 4, "it died {deaths} times:\n{}", logs.join("\n"));
        let log = setup.dir.path().join(format!("life{deaths}.log"));
        let mut child = life(&setup, &log);
        let deadline = Instant::now() + Duration::from_secs(30);
        let outcome = loop {
            if let Ok(Some(status)) = child.try_wait() {
                break Err(status);
            }
            let out = setup.command(&["status", "--json"]);
            if out.status.success() {
                let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                if status["engine_cursor"].as_u64() >= Some(3) {
                    break Ok(());
                }
            }
            assert!(
                Instant::now() < deadline,
                "{}",
                std::fs::read_to_string(&log).unwrap()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        logs.push(std::fs::read_to_string(&log).unwrap());
        match outcome {
            Ok(()) => break child,
            Err(_) => deaths += 1,
        }
    };
    assert_eq!(deaths, 3, "{}", logs.join("\n"));
    let poisoned = setup.json(&["poisoned", "--json"]);
    let runs = poisoned.as_array().unwrap();
    assert_eq!(runs.len(), 1, "{poisoned}");
    assert_eq!(runs[0]["seq"], 2);
    assert_eq!(runs[0]["rule"], "bomb");
    assert_eq!(runs[0]["type"], "bank.poison");
    assert_eq!(runs[0]["deaths"], 3);
    let text = setup.command(&["poisoned"]);
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("rule bomb"),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );
    let rules = setup.json(&["rules", "--json"]);
    let rule = |name: &str| {
        rules["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(rule("calm")["errors"], 0, "{rules}");
    let bomb = rule("bomb");
    assert!(
        bomb["last_error"].as_str().unwrap().contains("set aside"),
        "{bomb}"
    );
    // A clean stop, and a start that does not try it again.
    let mut child = kept_up;
    crate::support::signal(child.id(), "TERM");
    let status = wait_with_timeout(&mut child.0, Duration::from_secs(30)).unwrap();
    assert_eq!(status.code(), Some(0), "{}", logs.join("\n"));
    let daemon = setup.start_with_env(&[BOMB]);
    assert_eq!(
        daemon
            .post("bank", item("w3", "withdrawal").as_bytes())
            .status,
        200
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while setup.json(&["status", "--json"])["engine_cursor"].as_u64() < Some(4) {
        assert!(Instant::now() < deadline, "{}", daemon.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(daemon.terminate().code(), Some(0));
}
