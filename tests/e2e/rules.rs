//! Rules through the real daemon: webhooks in, decisions in the outbox; `gancho check` and
//! `gancho rules`.

use std::time::{Duration, Instant};

use crate::support::Setup;
use gancho_core::{Clock as _, SystemClock};
use gancho_testkit::{HttpReceiver, Reply, SmtpServer};

fn smtp_config(smtp: &SmtpServer) -> String {
    format!(
        "[email]\nsmtp_url = \"{}\"\nfrom = \"Shop <shop@example.com>\"\n",
        smtp.url()
    )
}

fn install_shipped_rules(setup: &Setup) {
    let to = setup.dir.path().join("rules");
    std::fs::create_dir_all(&to).unwrap();
    let from = crate::support::repo_root().join("rules");
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rhai") {
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
}

fn outbox(setup: &Setup) -> Vec<serde_json::Value> {
    setup
        .json(&["outbox", "--json", "--limit", "0"])
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
        let status = setup.json(&["rules", "--json"]);
        if status["cursor"].as_u64().unwrap() >= last {
            return;
        }
        assert!(Instant::now() < deadline, "engine stuck at {status}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Posts bank withdrawals (id, amount) from account ES01, at the current time.
fn post_withdrawals(daemon: &crate::support::Daemon, withdrawals: &[(&str, i64)]) {
    let now = now_secs();
    for (id, amount) in withdrawals {
        let body = format!(
            r#"{{"id":"{id}","kind":"withdrawal","at":{now},"account":"ES01","amount":{amount}}}"#
        );
        assert_eq!(daemon.post("bank", body.as_bytes()).status, 200);
    }
}

fn mailjet(event: &str, time: i64, email: &str) -> Vec<u8> {
    format!(
        r#"{{"event":"{event}","time":{time},"MessageID":288230387505203290,"email":"{email}","mj_campaign_id":7257,"CustomID":"spring"}}"#
    )
    .into_bytes()
}

#[test]
fn sent_then_open_over_http_mails_one_discount_and_a_second_open_none() {
    let smtp = SmtpServer::start();
    let setup = Setup::standard_with(&smtp_config(&smtp));
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
    // The discount reaches the SMTP server.
    let mails = smtp.wait_for_mails(1, Duration::from_secs(20));
    assert_eq!(mails.len(), 1, "{:?}", smtp.transactions());
    assert_eq!(mails[0].to, ["ana@example.com"]);
    assert_eq!(mails[0].from, "shop@example.com");
    assert_eq!(mails[0].header("Subject").unwrap(), "10% off, just for you");
    assert!(mails[0].data.contains("WELCOME-"), "{}", mails[0].data);

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
    wait_for_empty_outbox(&setup);
    assert_eq!(smtp.mails().len(), 1, "no second discount");
    assert_eq!(daemon.terminate().code(), Some(0));
    // With the daemon stopped, the outbox is read from the store directly: delivered, empty.
    assert!(outbox(&setup).is_empty());
}

fn wait_for_empty_outbox(setup: &Setup) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let items = outbox(setup);
        if items.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the outbox did not empty: {items:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_rule_broken_while_the_daemon_runs_is_reported_with_its_line_and_the_others_keep_running() {
    let twilio = HttpReceiver::start(|_| {
        Reply::json(
            201,
            r#"{"sid":"SMaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","status":"queued"}"#,
        )
    });
    let setup = Setup::standard_with(&format!(
        "[sms]\nprovider = \"twilio\"\nbase_url = \"{}\"\naccount_sid = \"ACtest\"\nauth_token = \"token\"\nfrom = \"+15017122661\"\n",
        twilio.url("")
    ));
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
        let status = setup.json(&["rules", "--json"]);
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

    // The other rules still decide: a bank withdrawal leads to one SMS, through Twilio.
    let withdrawal = br#"{"id":"w-1","kind":"withdrawal","at":1764320000,"account":"ES7612","phone":"+34600000001","amount":120,"currency":"EUR","atm":"Madrid, Gran Via 1"}"#;
    assert_eq!(daemon.post("bank", withdrawal).status, 200);
    let requests = twilio.wait_for(1, Duration::from_secs(20));
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].path,
        "/2010-04-01/Accounts/ACtest/Messages.json"
    );
    let form = requests[0].form();
    assert_eq!(form["To"], "+34600000001");
    assert_eq!(form["From"], "+15017122661");
    assert!(
        form["Body"].contains("120") && form["Body"].contains("Gran Via"),
        "{form:?}"
    );
    wait_for_empty_outbox(&setup);
    assert_eq!(twilio.requests().len(), 1);

    // `gancho check` names file, line and column, and fails.
    let out = setup.command(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("open-discount.rhai:3:"), "{text}");
    assert!(text.contains("ok     withdrawal-sms"), "{text}");
    drop(daemon);
}

#[test]
fn check_passes_on_the_shipped_rules_and_takes_files_and_folders() {
    let setup = Setup::standard();
    let shipped = crate::support::repo_root().join("rules");
    let out = setup.command(&["check", shipped.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("5 rule(s)"), "{text}");
    // Files as well as folders, and a missing path said once.
    let one = shipped.join("open-discount.rhai");
    let broken = setup.dir.path().join("broken.rhai");
    std::fs::write(&broken, "const ON = [\"bank.*\"];\nlet x = ;\n").unwrap();
    let out = setup.command(&["check", one.to_str().unwrap(), broken.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("ok     open-discount"), "{text}");
    assert!(text.contains("broken.rhai:2:"), "{text}");
    assert!(text.contains("2 rule(s) in"), "{text}");
    let missing = setup.dir.path().join("nowhere");
    let out = setup.command(&["check", missing.to_str().unwrap()]);
    let error = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(error.matches("no such").count(), 1, "{error}");
}

#[test]
fn check_cluster_flags_partitioned_queries_across_partitions_and_passes_the_shipped_rules() {
    // A json source must name its partition key for cluster mode; the shipped withdrawal rule
    // queries one that does not.
    let shipped = crate::support::repo_root().join("rules");
    let out = Setup::standard().command(&["check", "--cluster", shipped.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("withdrawal-sms.rhai:13:20: count: source \"bank\" has no partition_key"),
        "{text}"
    );
    let setup = Setup::new(
        "[sources.mailjet]\nkind = \"mailjet\"\nbasic_auth = { user = \"m\", password = \"s3cret\" }\n\
         [sources.bank]\nkind = \"json\"\ntype = \"/kind\"\nkeys = { account = \"/account\" }\n\
         partition_key = \"account\"\n",
    );
    let out = setup.command(&["check", "--cluster", shipped.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("5 rule(s)"), "{text}");
    // A partitioned rule that counts by a key other than Mailjet's `email` or `MessageID`.
    let dir = setup.dir.path().join("cluster-rules");
    std::fs::create_dir_all(&dir).unwrap();
    let rule = "const ON = [\"mailjet.bounce\"];\n\
                let n = count(\"mailjet.bounce\", #{ hard_bounce: true }, hours(1));\n";
    std::fs::write(dir.join("spread.rhai"), rule).unwrap();
    // Fine on one node ...
    let out = setup.command(&["check", dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // ... flagged for cluster mode, with its place and the way out.
    let out = setup.command(&["check", "--cluster", dir.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("spread.rhai:2:15: count: "), "{text}");
    assert!(text.contains("select by email, MessageID"), "{text}");
    // Declared global, it passes; a scope that is neither is an error everywhere.
    std::fs::write(
        dir.join("spread.rhai"),
        format!("const SCOPE = \"global\";\n{rule}"),
    )
    .unwrap();
    let out = setup.command(&["check", "--cluster", dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    std::fs::write(
        dir.join("spread.rhai"),
        format!("const SCOPE = \"all\";\n{rule}"),
    )
    .unwrap();
    let out = setup.command(&["check", dir.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("spread.rhai:1:1: SCOPE must be \"partition\" or \"global\""),
        "{text}"
    );
}

fn now_secs() -> i64 {
    SystemClock.now().timestamp()
}

#[test]
fn real_mailjet_payload_generations_join_on_the_message_in_either_arrival_order() {
    let smtp = SmtpServer::start();
    let setup = Setup::standard_with(&smtp_config(&smtp));
    install_shipped_rules(&setup);
    let daemon = setup.start();
    let t = now_secs() - 7200;
    // The open first (2020 format: `MessageID`, a number), then its sent in the 2015 format
    // (`mj_message_id`, a string, no `MessageID`), then an open of the 2013 format (no id).
    let open = format!(
        r#"{{"event":"open","time":{},"MessageID":19421777835146490,"email":"bea@example.com","mj_campaign_id":7257,"mj_contact_id":4,"CustomID":"helloworld","Payload":"","ip":"127.0.0.1","geo":"US","agent":"Mozilla/5.0"}}"#,
        t + 600
    );
    let sent = format!(
        r#"{{"event":"sent","time":{t},"email":"bea@example.com","mj_campaign_id":7257,"mj_contact_id":4,"customcampaign":"","mj_message_id":"19421777835146490","smtp_reply":"sent (250 2.0.0 OK)","CustomID":"helloworld","Payload":""}}"#
    );
    let no_id = format!(
        r#"{{"event":"open","time":{},"email":"cid@example.com","mj_campaign_id":7257,"mj_contact_id":5,"ip":"127.0.0.1","geo":"US","agent":"Mozilla/5.0"}}"#,
        t + 60
    );
    for body in [&open, &sent, &no_id] {
        assert_eq!(daemon.post_mailjet(body.as_bytes()).status, 200, "{body}");
    }
    wait_for_engine(&setup);
    let mails = smtp.wait_for_mails(1, Duration::from_secs(20));
    assert_eq!(mails.len(), 1, "{:?}", smtp.transactions());
    assert_eq!(mails[0].to, ["bea@example.com"]);
    wait_for_empty_outbox(&setup);
    assert_eq!(smtp.mails().len(), 1, "one discount, no reminder");
    let status = setup.json(&["rules", "--json"]);
    for rule in status["rules"].as_array().unwrap() {
        assert_eq!(rule["errors"], 0, "{rule}");
    }
    assert_eq!(daemon.terminate().code(), Some(0));
}

#[test]
fn gancho_rules_disable_and_enable_hold_across_restarts_and_with_the_daemon_stopped() {
    let setup = Setup::standard();
    crate::support::write_rule(
        &setup,
        "quiet.rhai",
        "const ON = [\"bank.*\"];\nlet x = 1;\n",
    );
    let runs = |setup: &Setup| -> (u64, String) {
        let status = setup.json(&["rules", "--json"]);
        let rule = &status["rules"][0];
        let state = match (rule["disabled"].as_bool(), rule["paused"].is_null()) {
            (Some(true), _) => "disabled",
            (_, false) => "paused",
            _ => "running",
        };
        (rule["runs"].as_u64().unwrap(), state.to_owned())
    };
    let wait_cursor = |setup: &Setup, seq: u64| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while setup.json(&["rules", "--json"])["cursor"].as_u64() < Some(seq) {
            assert!(Instant::now() < deadline, "the engine did not reach {seq}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let daemon = setup.start();
    assert_eq!(
        daemon
            .post("bank", &crate::support::withdrawal("w1"))
            .status,
        200
    );
    wait_cursor(&setup, 1);
    assert_eq!(runs(&setup), (1, "running".into()));
    let out = setup.command(&["rules", "disable", "quiet"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("rule quiet disabled"));
    assert_eq!(
        daemon
            .post("bank", &crate::support::withdrawal("w2"))
            .status,
        200
    );
    wait_cursor(&setup, 2);
    assert_eq!(runs(&setup), (1, "disabled".into()));
    let text = String::from_utf8(setup.command(&["rules"]).stdout).unwrap();
    assert!(text.contains("quiet                    disabled"), "{text}");
    // Across a restart, and switched on with the daemon stopped.
    assert_eq!(daemon.terminate().code(), Some(0));
    assert_eq!(runs(&setup), (1, "disabled".into()));
    let daemon = setup.start();
    assert_eq!(
        daemon
            .post("bank", &crate::support::withdrawal("w3"))
            .status,
        200
    );
    wait_cursor(&setup, 3);
    assert_eq!(runs(&setup), (1, "disabled".into()));
    assert_eq!(daemon.terminate().code(), Some(0));
    let out = setup.command(&["rules", "enable", "quiet"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let daemon = setup.start();
    assert_eq!(
        daemon
            .post("bank", &crate::support::withdrawal("w4"))
            .status,
        200
    );
    wait_cursor(&setup, 4);
    assert_eq!(runs(&setup), (2, "running".into()));
    assert_eq!(daemon.terminate().code(), Some(0));
}

#[test]
fn gancho_timers_and_gancho_state_show_what_rules_keep_and_state_can_be_cleared() {
    let setup = Setup::standard();
    crate::support::write_rule(
        &setup,
        "keeper.rhai",
        r#"const ON = ["bank.withdrawal"];
set_state("last:" + event.account, event.amount);
once("welcome:" + event.account);
after("nudge:" + event.account, days(3), "nudge", #{ account: event.account });
expect("bank.deposit", #{ account: event.account }, days(1), "no_deposit");
fn nudge(t) {}
fn no_deposit(w) {}
"#,
    );
    let daemon = setup.start();
    let now = now_secs();
    let body =
        format!(r#"{{"id":"k1","kind":"withdrawal","at":{now},"account":"ES01","amount":20}}"#);
    assert_eq!(daemon.post("bank", body.as_bytes()).status, 200);
    wait_for_engine(&setup);
    let timers = setup.json(&["timers", "--json"]);
    let timers = timers.as_array().unwrap();
    assert_eq!(timers.len(), 2, "{timers:?}");
    let nudge = timers.iter().find(|t| t["name"] == "nudge:ES01").unwrap();
    assert_eq!(nudge["due_ms"], (now + 3 * 86_400) * 1000);
    assert_eq!(nudge["callback"], "nudge");
    let expectation = timers.iter().find(|t| !t["expect"].is_null()).unwrap();
    assert_eq!(expectation["expect"]["kind"], "deposit");
    assert_eq!(expectation["callback"], "no_deposit");
    let text = String::from_utf8(setup.command(&["timers", "--rule", "keeper"]).stdout).unwrap();
    assert!(text.contains("unless bank.deposit account=ES01"), "{text}");

    let state = setup.json(&["state", "keeper", "--json"]);
    let keys: Vec<&str> = state
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["last:ES01", "once:welcome:ES01"], "{state}");
    let one = setup.json(&["state", "keeper", "last:ES01", "--json"]);
    assert_eq!(one[0]["value"], 20);
    let out = setup.command(&["state", "keeper", "--clear", "last:ES01"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 state value(s)"),
        "{out:?}"
    );
    assert_eq!(
        setup
            .json(&["state", "keeper", "--json"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let refused = setup.command(&["state", "keeper", "--clear"]);
    assert!(!refused.status.success());
    assert_eq!(daemon.terminate().code(), Some(0));
    // With the daemon stopped too.
    assert_eq!(
        setup.json(&["timers", "--json"]).as_array().unwrap().len(),
        2
    );
    let out = setup.command(&["state", "keeper", "--clear", "--all"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 state value(s)"),
        "{out:?}"
    );
    assert!(setup.lists_nothing(&["state", "keeper", "--json"]));
}

#[test]
fn an_orphaned_timer_is_listed_kept_and_runs_when_its_function_is_back() {
    let setup = Setup::standard();
    let rule = |callback: &str| {
        format!(
            "const ON = [\"bank.withdrawal\"];\nafter(\"later:\" + event.payload_id, seconds(4), \"{callback}\", #{{ id: event.payload_id }});\nfn {callback}(t) {{ set_state(\"fired:\" + t.data.id, true); }}\n"
        )
    };
    crate::support::write_rule(&setup, "later.rhai", &rule("later"));
    let daemon = setup.start();
    let now = now_secs();
    for id in ["o1", "o2"] {
        let body = format!(r#"{{"id":"{id}","kind":"withdrawal","at":{now},"account":"A"}}"#);
        assert_eq!(daemon.post("bank", body.as_bytes()).status, 200);
    }
    wait_for_engine(&setup);
    assert_eq!(
        setup.json(&["timers", "--json"]).as_array().unwrap().len(),
        2
    );
    // `gancho check` of the new version says what it would orphan.
    let staging = setup.dir.path().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::write(staging.join("later.rhai"), rule("renamed")).unwrap();
    let checked = setup.command(&["check", staging.join("later.rhai").to_str().unwrap()]);
    let text = String::from_utf8_lossy(&checked.stdout);
    assert!(checked.status.success(), "{text}");
    assert!(
        text.contains("2 pending timer(s) or expectation(s) of rule later call later()"),
        "{text}"
    );
    // The callback renamed before they come due (the folder is read every second).
    crate::support::write_rule(&setup, "later.rhai", &rule("renamed"));
    let deadline = Instant::now() + Duration::from_secs(20);
    let orphans = loop {
        let orphans = setup.json(&["timers", "--orphaned", "--json"]);
        if orphans.as_array().unwrap().len() == 2 {
            break orphans;
        }
        assert!(Instant::now() < deadline, "{orphans}\n{}", daemon.log());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(orphans[0]["name"], "later:o1");
    assert!(
        daemon.log().contains("kept as orphaned"),
        "{}",
        daemon.log()
    );
    let text = String::from_utf8(setup.command(&["timers", "--orphaned"]).stdout).unwrap();
    assert!(
        text.contains("later/later:o2") && text.contains("ORPHANED"),
        "{text}"
    );
    let out = setup.command(&["timers", "discard", "later/later:o2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The function back: the one left runs, once.
    crate::support::write_rule(&setup, "later.rhai", &rule("later"));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let state = setup.json(&["state", "later", "--json"]);
        let keys: Vec<&str> = state
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["key"].as_str().unwrap())
            .collect();
        if keys == ["fired:o1"] {
            break;
        }
        assert!(Instant::now() < deadline, "{state}\n{}", daemon.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(setup.lists_nothing(&["timers", "--json"]));
    assert_eq!(daemon.terminate().code(), Some(0));
}

#[test]
fn gancho_check_names_types_sources_and_keys_that_cannot_match() {
    let setup = Setup::standard();
    let dir = setup.dir.path().join("lint");
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();
    write("typo.rhai", "const ON = \"mailjet.opne\";\nlet x = 1;\n");
    write(
        "nosource.rhai",
        "const ON = [\"shop.order\"];\nlet x = 1;\n",
    );
    write(
        "badkey.rhai",
        "const ON = [\"mailjet.open\"];\nlet n = count(\"mailjet.sent\", #{ MessageId: event.keys.MessageID }, hours(24));\n",
    );
    write(
        "fine.rhai",
        "const ON = [\"mailjet.*\", \"bank.withdrawal\"];\nlet n = count(\"bank.withdrawal\", #{ account: event.keys.account }, hours(1));\n",
    );
    // What would fail only when it runs: a variable never defined, a misspelt function, a
    // callback that is not a one-parameter function of the file. Constants are fine in
    // functions; variables and `event` are not.
    write(
        "undefined.rhai",
        "const ON = [\"bank.withdrawal\"];\nlet n = amount + 1;\n",
    );
    write(
        "calls.rhai",
        r#"const ON = ["bank.withdrawal"];
const HOOK = "https://example.com/hook";
fn thanks(t) { http(#{ url: HOOK, json: t }); }
fn two(a, b) { }
emial(#{ to: "a@example.com", subject: "s", text: "t" });
after("a", hours(1), "thanks");
after("b", hours(1), "two");
after("c", hours(1), "thnaks");
let up = event.account.to_upper();
"#,
    );
    write(
        "inner.rhai",
        "const ON = [\"bank.withdrawal\"];\nfn later(t) { print(event.account); }\nafter(\"a\", hours(1), \"later\");\n",
    );
    let out = setup.command(&["check", dir.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("undefined.rhai:2:9: Undefined variable: amount"),
        "{text}"
    );
    assert!(
        text.contains("calls.rhai:5:1: no function emial: not gancho's, nor rhai's"),
        "{text}"
    );
    assert!(
        text.contains("calls.rhai:7:1: after: the callback two takes 2 parameters"),
        "{text}"
    );
    assert!(
        text.contains("calls.rhai:8:1: after: no function thnaks(x) in this file"),
        "{text}"
    );
    assert_eq!(text.matches("calls.rhai:").count(), 3, "{text}");
    assert!(
        text.contains("inner.rhai:2:21: Undefined variable: event (a function sees"),
        "{text}"
    );
    assert!(
        text.contains("typo.rhai:1:1: ON: \"mailjet.opne\": mailjet sends no type \"opne\""),
        "{text}"
    );
    assert!(
        text.contains("nosource.rhai:1:1: ON: \"shop.order\": no source \"shop\""),
        "{text}"
    );
    assert!(
        text.contains(
            "badkey.rhai:2:34: count: \"MessageId\" is not a correlation key of source \"mailjet\""
        ),
        "{text}"
    );
    assert!(text.contains("ok     fine"), "{text}");
    assert!(text.contains("7 rule(s) in"), "{text}");
}

#[test]
fn gancho_explain_shows_what_each_rule_saw_and_decided_and_what_became_of_it() {
    let setup = Setup::standard();
    crate::support::write_rule(
        &setup,
        "big.rhai",
        r#"const ON = ["bank.withdrawal"];
let n = count("bank.withdrawal", #{ account: event.account }, hours(1));
set_state("seen:" + event.account, n);
if n >= 2 { sms(#{ to: "+34600000001", text: "twice" }); }
if event.amount > 1000 { throw "too much"; }
"#,
    );
    let daemon = setup.start();
    post_withdrawals(&daemon, &[("e1", 10), ("e2", 20), ("e3", 5000)]);
    wait_for_engine(&setup);
    let what = setup.json(&["explain", "2", "--json"]);
    assert_eq!(what["event"]["data"]["id"], "e2", "{what}");
    // By the id the source gave it, as `gancho events` lists it.
    assert_eq!(
        setup.json(&["explain", "p:e2", "--json"])["event"]["seq"],
        what["event"]["seq"]
    );
    assert_eq!(what["event"]["seq"], 2);
    let unknown = setup.command(&["explain", "p:nope"]);
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("no event with id p:nope"),
        "{unknown:?}"
    );
    let run = &what["runs"][0];
    assert_eq!(run["rule"], "big");
    assert!(run["error"].is_null(), "{run}");
    let query = &run["queries"][0];
    assert_eq!(query["found"], 2, "{run}");
    assert_eq!(
        (&query["call"], &query["type"], &query["keys"]),
        (
            &serde_json::json!("count"),
            &serde_json::json!("bank.withdrawal"),
            &serde_json::json!([["account", "ES01"]])
        ),
        "{run}"
    );
    assert_eq!(run["changes"][0], "set state seen:ES01");
    assert_eq!(what["actions"].as_array().unwrap().len(), 1);
    // Without SMS provider the action is written to a file, and it says when.
    wait_for_empty_outbox(&setup);
    let what = setup.json(&["explain", "2", "--json"]);
    let fate = &what["actions"][0];
    assert_eq!(fate["fate"], "delivered", "{what}");
    assert!(
        fate["at_ms"].as_i64().unwrap() >= now_secs() * 1000 - 60_000,
        "{what}"
    );
    let text = String::from_utf8(setup.command(&["explain", "2"]).stdout).unwrap();
    assert!(text.contains(": delivered 20"), "{text}");
    assert!(
        text.contains("rule big on event 2: decided 1 action(s)"),
        "{text}"
    );
    assert!(
        text.contains("count bank.withdrawal account=ES01 from "),
        "{text}"
    );
    // A rule's failed runs (a batch that decides nothing is traced when its cursor is
    // committed, within a second).
    let deadline = Instant::now() + Duration::from_secs(10);
    let failed = loop {
        let failed = setup.json(&["explain", "--rule", "big", "--errors", "--json"]);
        if !failed.as_array().unwrap().is_empty() || Instant::now() > deadline {
            break failed;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let failed = failed.as_array().unwrap();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["seq"], 3);
    assert!(failed[0]["error"].as_str().unwrap().contains("too much"));
    assert_eq!(
        setup
            .json(&["explain", "--rule", "big", "--last", "2", "--json"])
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(daemon.terminate().code(), Some(0));
    // With the daemon stopped too.
    assert_eq!(
        setup.json(&["explain", "1", "--json"])["runs"][0]["rule"],
        "big"
    );
}

#[test]
fn gancho_rerun_runs_the_fixed_rule_once_on_each_event_it_failed_on() {
    let setup = Setup::standard();
    crate::support::write_rule(
        &setup,
        "big.rhai",
        r#"const ON = ["bank.withdrawal"];
if event.amount > 1000 { throw "too much"; }
sms(#{ to: "+34600000001", text: `withdrew ${event.amount}` });
"#,
    );
    let daemon = setup.start();
    post_withdrawals(&daemon, &[("e1", 10), ("e2", 5000), ("e3", 6000)]);
    wait_for_engine(&setup);
    // The fixed version (it also names a second type: how the test sees it loaded).
    crate::support::write_rule(
        &setup,
        "big.rhai",
        r#"const ON = ["bank.withdrawal", "bank.refund"];
sms(#{ to: "+34600000001", text: `withdrew ${event.amount}` });
"#,
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = setup.json(&["rules", "--json"]);
        if status["rules"][0]["on"].as_array().unwrap().len() == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the new version was not loaded");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = setup.command(&["rerun", "--rule", "big", "--failed", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let reran: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(reran.len(), 2, "{reran:?}");
    assert_eq!(reran[0]["seq"], 2);
    assert_eq!(reran[1]["seq"], 3);
    assert_eq!(reran[0]["outcome"], "decided 1 action(s)");
    // At most once: a second rerun finds nothing left to do.
    let again = setup.command(&["rerun", "--rule", "big", "--failed"]);
    let text = String::from_utf8(again.stdout).unwrap();
    assert!(
        text.contains("0 failed run(s) of rule big re-run"),
        "{text}"
    );
    // The event's trace shows both runs, and the re-run's action.
    let what = setup.json(&["explain", "2", "--json"]);
    let runs = what["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{what}");
    assert!(runs[0]["error"].as_str().unwrap().contains("too much"));
    assert_eq!(runs[1]["rerun"], true);
    assert_eq!(what["actions"].as_array().unwrap().len(), 1, "{what}");
    let text = String::from_utf8(setup.command(&["explain", "2"]).stdout).unwrap();
    assert!(
        text.contains("on event 2 (gancho rerun): decided 1 action(s)"),
        "{text}"
    );
    // Its decisions are delivered like live ones (no SMS provider: written to a file).
    wait_for_empty_outbox(&setup);
    let texts = std::fs::read_to_string(setup.dir.path().join("data/sms.jsonl")).unwrap();
    assert_eq!(texts.lines().count(), 3, "{texts}");
    assert!(texts.contains("withdrew 6000"), "{texts}");
    assert_eq!(daemon.terminate().code(), Some(0));
    // It needs the engine.
    let stopped = setup.command(&["rerun", "--rule", "big", "--failed"]);
    assert!(!stopped.status.success());
    assert!(
        String::from_utf8_lossy(&stopped.stderr).contains("start the daemon"),
        "{stopped:?}"
    );
}

#[test]
fn gancho_replay_runs_a_new_version_over_the_stored_history_and_changes_nothing_live() {
    let setup = Setup::standard();
    crate::support::write_rule(
        &setup,
        "big.rhai",
        r#"const ON = ["bank.withdrawal"];
sms(#{ to: "+34600000001", text: `withdrew ${event.amount}` });
"#,
    );
    let daemon = setup.start();
    post_withdrawals(&daemon, &[("e1", 10), ("e2", 20), ("e3", 30)]);
    wait_for_engine(&setup);
    wait_for_empty_outbox(&setup);
    let sent = || std::fs::read_to_string(setup.dir.path().join("data/sms.jsonl")).unwrap();
    assert_eq!(sent().lines().count(), 3);
    // A new version, kept out of the rules folder: a text on the third withdrawal in an hour.
    let new = setup.dir.path().join("big-v2.rhai");
    std::fs::write(
        &new,
        r#"const ON = ["bank.withdrawal"];
let n = count("bank.withdrawal", #{ account: event.account }, hours(1));
if n >= 3 { sms(#{ to: "+34600000001", text: `third: ${event.amount}` }); }
"#,
    )
    .unwrap();
    let new = new.to_str().unwrap();
    let replay = |args: &[&str]| {
        let mut all = vec!["replay", new, "--json"];
        all.extend_from_slice(args);
        let out = setup.command(&all);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    // Over everything stored: the third withdrawal.
    let decided = replay(&[]);
    assert_eq!(decided.len(), 1, "{decided:?}");
    assert_eq!(decided[0]["rule"], "big-v2");
    assert_eq!(decided[0]["channel"], "sms");
    assert_eq!(decided[0]["action"]["text"], "third: 30");
    // From the third event on: the two before it are history its window sees.
    assert_eq!(replay(&["--from", "3"]).len(), 1);
    // Without that history, its window holds only the event itself.
    assert!(replay(&["--from", "3", "--history", "0s"]).is_empty());
    assert_eq!(replay(&["--since", "1h"]).len(), 1);
    // Nothing live moved: no text sent, no action queued.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sent().lines().count(), 3);
    assert!(setup.lists_nothing(&["outbox", "--json"]));
    assert_eq!(daemon.terminate().code(), Some(0));
    // With the daemon stopped, from its store; a rule that fails exits 1 and says where.
    assert_eq!(replay(&[]).len(), 1);
    std::fs::write(
        setup.dir.path().join("broken.rhai"),
        "const ON = [\"bank.withdrawal\"];\nif event.amount > 15 { throw \"too much\"; }\n",
    )
    .unwrap();
    let broken = setup.dir.path().join("broken.rhai");
    let out = setup.command(&["replay", broken.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("broken.rhai") && err.contains("too much"),
        "{err}"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("3 event(s) replayed: 0 action(s) decided"),
        "{text}"
    );
}

#[test]
fn gancho_rerun_calls_a_failed_timer_callback_again_with_the_timer_it_had() {
    let setup = Setup::standard();
    let rule = |body: &str, on: &str| {
        format!(
            r#"const ON = [{on}];
after("t:" + event.id, seconds(1), "later", #{{ amount: event.amount }});
fn later(t) {{ {body} sms(#{{ to: "+34600000001", text: `later ${{t.data.amount}}` }}); }}
"#
        )
    };
    crate::support::write_rule(
        &setup,
        "late.rhai",
        &rule(
            r#"if t.data.amount > 1000 { throw "too much"; }"#,
            r#""bank.withdrawal""#,
        ),
    );
    let daemon = setup.start();
    post_withdrawals(&daemon, &[("e1", 5000)]);
    // The timer fires a second later, and its callback fails.
    let deadline = Instant::now() + Duration::from_secs(20);
    let failed = loop {
        let failed = setup.json(&["explain", "--rule", "late", "--errors", "--json"]);
        if let Some(run) = failed.as_array().unwrap().first() {
            break run.clone();
        }
        assert!(Instant::now() < deadline, "the callback did not fail");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(failed["error"].as_str().unwrap().contains("too much"));
    assert!(setup.lists_nothing(&["timers", "--json"]));
    crate::support::write_rule(
        &setup,
        "late.rhai",
        &rule("", r#""bank.withdrawal", "bank.refund""#),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while setup.json(&["rules", "--json"])["rules"][0]["on"]
        .as_array()
        .unwrap()
        .len()
        != 2
    {
        assert!(Instant::now() < deadline, "the new version was not loaded");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = setup.command(&["rerun", "--rule", "late", "--failed", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let line: serde_json::Value =
        serde_json::from_str(String::from_utf8(out.stdout).unwrap().trim()).unwrap();
    assert_eq!(line["seq"], failed["seq"]);
    assert_eq!(line["outcome"], "decided 1 action(s)", "{line}");
    wait_for_empty_outbox(&setup);
    let texts = std::fs::read_to_string(setup.dir.path().join("data/sms.jsonl")).unwrap();
    assert!(texts.contains("later 5000"), "{texts}");
    assert_eq!(daemon.terminate().code(), Some(0));
}
