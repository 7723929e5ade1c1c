//! The admin listener (`[admin]`): the bearer token on every route but the probes, the API
//! answering what the CLI answers, readiness, and the Prometheus metrics after a known load.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::support::{Request, Response, Setup, write_rule};

const TOKEN: &str = "an-admin-token-0123456789";

/// An `[admin]` section on a free port with [`TOKEN`], and `extra` keys.
fn admin_section(extra: &str) -> String {
    format!("[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n{extra}\n")
}

fn admin_addr(daemon: &crate::support::Daemon) -> SocketAddr {
    daemon
        .admin
        .unwrap_or_else(|| panic!("no admin listener: {}", daemon.log()))
}

fn send(addr: SocketAddr, request: &Request) -> Response {
    request
        .send(addr)
        .expect("HTTP request to the admin listener")
}

fn get(addr: SocketAddr, path: &str) -> Response {
    send(
        addr,
        &Request::get(path).header("Authorization", &format!("Bearer {TOKEN}")),
    )
}

fn post(addr: SocketAddr, path: &str) -> Response {
    send(
        addr,
        &Request::post(path, b"").header("Authorization", &format!("Bearer {TOKEN}")),
    )
}

/// A rule that logs each withdrawal.
const LOG_RULE: &str = "const ON = [\"bank.withdrawal\"];\nlog(event.id);\n";

/// The routes that need the token, with their methods.
const GUARDED: [(&str, &str); 19] = [
    ("GET", "/admin/events"),
    ("GET", "/admin/events?source=bank&cursor=x"),
    ("GET", "/admin/events/1"),
    ("GET", "/admin/events/stream"),
    ("GET", "/admin/outbox"),
    ("GET", "/admin/dead"),
    ("POST", "/admin/dead/some-id/retry"),
    ("POST", "/admin/dead/retry-all"),
    ("GET", "/admin/sent"),
    ("GET", "/admin/quarantine"),
    ("GET", "/admin/status"),
    ("GET", "/admin/rules"),
    ("GET", "/admin/rules/alert"),
    ("POST", "/admin/rules/alert/disable"),
    ("POST", "/admin/rules/alert/enable"),
    ("GET", "/metrics"),
    ("GET", "/admin/no-such-route"),
    ("DELETE", "/admin/rules"),
    ("GET", "/admin/timers?colour=red"),
];

#[test]
fn every_admin_route_but_the_probes_needs_the_token() {
    let setup = Setup::standard_with(&admin_section(""));
    write_rule(&setup, "alert.rhai", LOG_RULE);
    let daemon = setup.start();
    let admin = admin_addr(&daemon);
    assert_ne!(admin, daemon.addr);
    let wrong = "an-admin-token-0123456780";
    for (method, path) in GUARDED {
        let bare = Request {
            method: method.to_owned(),
            ..Request::get(path)
        };
        for request in [
            bare.clone(),
            bare.clone()
                .header("Authorization", &format!("Bearer {wrong}")),
            bare.clone().header("Authorization", TOKEN),
            bare.clone()
                .header("Authorization", &format!("Basic {TOKEN}")),
        ] {
            let answer = send(admin, &request);
            assert_eq!(answer.status, 401, "{method} {path}: {}", answer.body);
            assert_eq!(answer.header("www-authenticate"), Some("Bearer"));
            let reason = answer.json();
            assert!(reason["error"].is_string(), "{reason}");
            // Nothing of the token, right or given, is echoed back.
            assert!(!answer.body.contains("0123456"), "{}", answer.body);
        }
    }
    // A refused disable changed nothing.
    let rules = setup.json(&["rules", "--json"]);
    assert_eq!(rules["rules"][0]["disabled"], false, "{rules}");

    // The probes are open, on both listeners.
    for addr in [admin, daemon.addr] {
        assert_eq!(send(addr, &Request::get("/healthz")).status, 200);
        let ready = send(addr, &Request::get("/readyz"));
        assert_eq!(ready.status, 200, "{}", ready.body);
        assert_eq!(ready.json()["ready"], true);
    }
    // The public listener serves webhooks and probes only.
    for path in ["/admin/status", "/metrics", "/admin/rules"] {
        let answer = send(
            daemon.addr,
            &Request::get(path).header("Authorization", &format!("Bearer {TOKEN}")),
        );
        assert_eq!(answer.status, 404, "{path} on the public port");
    }
}

#[test]
fn without_a_token_the_admin_listener_does_not_start() {
    let setup = Setup::standard_with("[admin]\nlisten = \"127.0.0.1:0\"\n");
    let daemon = setup.start();
    assert_eq!(daemon.admin, None, "{}", daemon.log());
    assert!(
        daemon
            .log()
            .contains("no [admin] token: the admin listener (API, metrics) does not start"),
        "{}",
        daemon.log()
    );
    // The public readiness probe is there all the same.
    assert_eq!(send(daemon.addr, &Request::get("/readyz")).status, 200);
}

#[test]
fn a_short_admin_token_is_refused_at_start() {
    let setup = Setup::standard_with("[admin]\ntoken = \"short\"\n");
    let out = setup.command(&["check-config"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("admin.token"), "{err}");
    assert!(err.contains("at least 16 characters"), "{err}");
    assert!(!err.contains("short\""), "the token is not echoed: {err}");
}

#[test]
fn the_admin_api_answers_what_the_cli_answers_and_controls_rules() {
    let setup = Setup::standard_with(&admin_section(""));
    write_rule(&setup, "alert.rhai", LOG_RULE);
    let daemon = setup.start();
    let admin = admin_addr(&daemon);
    assert_eq!(
        daemon
            .post("bank", &crate::support::withdrawal("w1"))
            .status,
        200
    );
    wait_for_engine(admin, 1);

    let status = get(admin, "/admin/status");
    assert_eq!(status.status, 200, "{}", status.body);
    let status = status.json();
    let cli = setup.json(&["status", "--json"]);
    assert_eq!(status["status"]["durable"], cli["durable"], "{status}");
    assert_eq!(status["status"]["engine_cursor"], cli["engine_cursor"]);
    assert!(
        status["store_bytes"]["log"].as_u64().is_some_and(|b| b > 0),
        "{status}"
    );
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert!(status["uptime_seconds"].is_u64(), "{status}");

    let rules = get(admin, "/admin/rules").json();
    let cli = setup.json(&["rules", "--json"]);
    assert_eq!(rules["rules"][0]["name"], "alert");
    assert_eq!(rules["rules"], cli["rules"]);
    // Pages of rules, by name.
    write_rule(&setup, "beta.rhai", LOG_RULE);
    write_rule(&setup, "gamma.rhai", LOG_RULE);
    wait_until("three rules are loaded", || {
        get(admin, "/admin/rules").json()["rules"]
            .as_array()
            .is_some_and(|r| r.len() == 3)
    });
    let first = get(admin, "/admin/rules?limit=2").json();
    let names = |page: &serde_json::Value| -> Vec<String> {
        page["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names(&first), ["alert", "beta"]);
    let cursor = first["next_cursor"].as_str().unwrap();
    let second = get(admin, &format!("/admin/rules?limit=2&cursor={cursor}")).json();
    assert_eq!(names(&second), ["gamma"]);
    assert!(second["next_cursor"].is_null());
    assert_eq!(get(admin, "/admin/rules?cursor=nope").status, 400);
    let rule = get(admin, "/admin/rules/alert");
    assert_eq!(rule.status, 200);
    assert_eq!(rule.json()["name"], "alert");
    assert_eq!(get(admin, "/admin/rules/nothing").status, 404);

    let disabled = post(admin, "/admin/rules/alert/disable");
    assert_eq!(disabled.status, 200, "{}", disabled.body);
    wait_until("the rule is disabled", || {
        setup.json(&["rules", "--json"])["rules"][0]["disabled"] == true
    });
    assert_eq!(post(admin, "/admin/rules/alert/enable").status, 200);
    wait_until("the rule is enabled again", || {
        setup.json(&["rules", "--json"])["rules"][0]["disabled"] == false
    });
}

#[test]
fn readyz_answers_503_while_the_engine_is_held_back() {
    let setup = Setup::standard_with(&admin_section("ready_max_lag = 2"));
    write_rule(
        &setup,
        "slow.rhai",
        "const ON = [\"bank.withdrawal\"];\nlog(event.id);\n",
    );
    // The engine's first run sleeps 5 s: the log runs ahead of it meanwhile.
    let daemon = setup.start_with_env(&[(
        "GANCHO_FAILPOINTS",
        "engine.run.slow.bank.withdrawal=1*sleep(5000)->off",
    )]);
    let admin = admin_addr(&daemon);
    assert_eq!(
        daemon
            .post("bank", &crate::support::withdrawal("w0"))
            .status,
        200
    );
    wait_until("the engine sleeps", || {
        daemon
            .log()
            .contains("fail point engine.run.slow.bank.withdrawal: sleeping")
    });
    for i in 1..=4 {
        let id = format!("w{i}");
        assert_eq!(
            daemon.post("bank", &crate::support::withdrawal(&id)).status,
            200
        );
    }
    // The indexer runs at idle priority: on a busy machine it may be behind too, and readiness
    // names the first stage that is. Let it catch up (the engine sleeps for 5 s).
    wait_until("the indexer catches up", || {
        get(admin, "/admin/status").json()["status"]["index_lag"] == 0
    });
    for addr in [daemon.addr, admin] {
        let ready = send(addr, &Request::get("/readyz"));
        assert_eq!(ready.status, 503, "{}", ready.body);
        let reason = ready.json();
        assert_eq!(reason["ready"], false);
        assert!(
            reason["reason"]
                .as_str()
                .is_some_and(|r| r.contains("the engine is") && r.contains("ready_max_lag is 2")),
            "{reason}"
        );
    }
    // Webhooks are still taken meanwhile: readiness is advice to a balancer.
    wait_until("ready again", || {
        send(daemon.addr, &Request::get("/readyz")).status == 200
    });
    assert_eq!(send(admin, &Request::get("/readyz")).status, 200);
}

#[test]
fn the_metrics_count_a_known_load_and_promtool_accepts_them() {
    let setup = Setup::standard_with(&admin_section(""));
    write_rule(
        &setup,
        "notify.rhai",
        "const ON = [\"bank.withdrawal\"];\n\
         if event.amount > 1000 { throw \"too much\"; }\n\
         sms(#{ to: \"+34600000001\", text: `withdrawal ${event.id}` });\n",
    );
    let daemon = setup.start();
    let admin = admin_addr(&daemon);
    let now = gancho_core::Clock::now(&gancho_core::SystemClock).timestamp();
    let withdrawal = |id: &str, amount: u32| {
        format!(
            r#"{{"id":"{id}","kind":"withdrawal","at":{now},"account":"ES01","amount":{amount}}}"#
        )
    };
    // 5 events, one of which the rule fails on; one duplicate.
    for (id, amount) in [("w1", 10), ("w2", 20), ("w3", 30), ("w5", 5000)] {
        assert_eq!(
            daemon
                .post("bank", withdrawal(id, amount).as_bytes())
                .status,
            200
        );
    }
    let again = daemon.post("bank", withdrawal("w1", 10).as_bytes());
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["duplicates"], 1);
    // Refusals: a wrong password, a body that is not JSON, a wrong content type, and in a
    // batch an item without its type (quarantined).
    let wrong = daemon.request(
        &Request::post("/hooks/mailjet", b"{}").basic_auth(crate::support::MAILJET_USER, "nope"),
    );
    assert_eq!(wrong.status, 401);
    assert_eq!(daemon.post("bank", b"{not json").status, 400);
    let text =
        daemon.request(&Request::post("/hooks/bank", b"x").header("Content-Type", "text/plain"));
    assert_eq!(text.status, 415);
    let batch = format!(
        r#"[{}, {{"id":"u1","at":1,"account":"ES01"}}]"#,
        withdrawal("w4", 40)
    );
    let untyped = daemon.post("bank", batch.as_bytes());
    assert_eq!(untyped.status, 200, "{}", untyped.body);
    assert_eq!(untyped.json()["quarantined"], 1);

    wait_for_engine(admin, 5);
    wait_until("the four SMS are delivered", || {
        setup.json(&["sent", "--json"]).as_array().map(Vec::len) == Some(4)
    });

    let scraped = get(admin, "/metrics");
    assert_eq!(scraped.status, 200, "{}", scraped.body);
    assert!(
        scraped
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        scraped.headers
    );
    let text = &scraped.body;
    let m = Metrics::parse(text);
    let bank = [("source", "bank")];
    assert_eq!(
        m.value("gancho_events_received_total", &bank),
        5.0,
        "{text}"
    );
    assert_eq!(m.value("gancho_events_duplicate_total", &bank), 1.0);
    for (reason, count) in [
        ("malformed", 1.0),
        ("content_type", 1.0),
        ("invalid", 1.0),
        ("unauthorized", 0.0),
    ] {
        let labels = [("source", "bank"), ("reason", reason)];
        assert_eq!(
            m.value("gancho_events_rejected_total", &labels),
            count,
            "{reason}"
        );
    }
    assert_eq!(
        m.value(
            "gancho_events_rejected_total",
            &[("source", "mailjet"), ("reason", "unauthorized")]
        ),
        1.0
    );
    // The counters agree with what the CLI lists.
    let quarantined = setup.quarantine().len() as f64;
    assert_eq!(quarantined, 1.0);
    assert_eq!(m.value("gancho_quarantine_items", &[]), quarantined);
    assert_eq!(
        m.value("gancho_events_received_total", &bank),
        setup.events(&["--source", "bank"]).len() as f64
    );
    let rule = [("rule", "notify")];
    assert_eq!(m.value("gancho_rule_runs_total", &rule), 5.0);
    assert_eq!(m.value("gancho_rule_errors_total", &rule), 1.0);
    assert_eq!(m.value("gancho_rule_seconds_count", &rule), 5.0);
    let cli_rule = &setup.json(&["rules", "--json"])["rules"][0];
    assert_eq!(cli_rule["errors"].as_u64(), Some(1), "{cli_rule}");
    let sms = [("channel", "sms")];
    assert_eq!(
        m.value(
            "gancho_deliveries_total",
            &[("channel", "sms"), ("outcome", "delivered")]
        ),
        4.0
    );
    assert_eq!(m.value("gancho_delivery_seconds_count", &sms), 4.0);
    assert_eq!(m.value("gancho_outbox_pending", &sms), 0.0);
    assert_eq!(m.value("gancho_dead_letters", &sms), 0.0);
    assert_eq!(m.value("gancho_engine_lag_events", &[]), 0.0);
    assert_eq!(m.value("gancho_timers_pending", &[]), 0.0);
    assert_eq!(m.value("gancho_store_failed", &[]), 0.0);
    assert!(m.value("gancho_store_bytes", &[("db", "log")]) > 0.0);
    assert_eq!(m.value("gancho_ingest_request_seconds_count", &[]), 9.0);

    promtool_check_metrics(text);

    // metrics_public is off: the token is needed.
    assert_eq!(send(admin, &Request::get("/metrics")).status, 401);
}

#[test]
fn metrics_public_opens_metrics_only() {
    let setup = Setup::standard_with(&admin_section("metrics_public = true"));
    let daemon = setup.start();
    let admin = admin_addr(&daemon);
    let open = send(admin, &Request::get("/metrics"));
    assert_eq!(open.status, 200, "{}", open.body);
    assert!(open.body.contains("gancho_store_failed 0"), "{}", open.body);
    assert_eq!(send(admin, &Request::get("/admin/status")).status, 401);
}

/// Runs `promtool check metrics` on `text` when promtool is installed; skips (saying so)
/// otherwise, unless `GANCHO_REQUIRE_PROMTOOL=1`.
fn promtool_check_metrics(text: &str) {
    let Some(promtool) = promtool() else {
        return;
    };
    use std::io::Write as _;
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics refused the exposition:\n{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `promtool` binary, if installed. Missing: `None`, after saying the test skips that
/// part, unless `GANCHO_REQUIRE_PROMTOOL=1` (CI), which makes it a failure.
pub fn promtool() -> Option<std::path::PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("promtool"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("GANCHO_REQUIRE_PROMTOOL").as_deref() != Ok("1"),
            "GANCHO_REQUIRE_PROMTOOL=1 but promtool is not installed (apt-get install prometheus)"
        );
        eprintln!("skipped: promtool is not installed (Debian's prometheus package)");
    }
    found
}

/// Waits until the engine has processed `seq`, as `/admin/rules` says.
fn wait_for_engine(admin: SocketAddr, seq: u64) {
    wait_until("the engine catches up", || {
        get(admin, "/admin/rules").json()["cursor"]
            .as_u64()
            .is_some_and(|c| c >= seq)
    });
}

/// Waits up to 30 s for `done` (`gancho_testkit::wait_until`), failing with `what`.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let met = gancho_testkit::wait_until(Duration::from_secs(30), || done().then_some(()));
    assert!(met.is_some(), "timed out waiting: {what}");
}

/// A Prometheus text exposition, parsed into samples.
struct Metrics(Vec<(String, BTreeMap<String, String>, f64)>);

impl Metrics {
    fn parse(text: &str) -> Metrics {
        let mut samples = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter(|l| !l.is_empty())
                .map(|l| {
                    let (k, v) = l.split_once('=').unwrap();
                    (k.to_owned(), v.trim_matches('"').to_owned())
                })
                .collect();
            samples.push((name.to_owned(), labels, value.parse().unwrap()));
        }
        Metrics(samples)
    }

    /// The value of the one sample of `name` with exactly `labels`; 0 when absent (a counter
    /// never incremented may not be exposed).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.0
            .iter()
            .find(|(n, l, _)| n == name && *l == want)
            .map_or(0.0, |(_, _, v)| *v)
    }
}

#[test]
fn the_alert_rules_of_the_operations_guide_pass_promtool() {
    let guide =
        std::fs::read_to_string(crate::support::repo_root().join("docs/operations.md")).unwrap();
    let (_, section) = guide
        .split_once("### Alert rules")
        .expect("docs/operations.md has an Alert rules section");
    let (_, block) = section.split_once("```yaml\n").expect("a yaml block");
    let (rules, _) = block.split_once("```").unwrap();
    for alert in [
        "gancho_engine_lag_events",
        "gancho_dead_letters",
        "gancho_rule_errors_total",
        "gancho_store_failed",
    ] {
        assert!(rules.contains(alert), "no alert on {alert}");
    }
    let Some(promtool) = promtool() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gancho.rules.yml");
    std::fs::write(&file, rules).unwrap();
    let out = std::process::Command::new(promtool)
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check rules refused the guide's rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every page of `path` (which has a query string or not), following `next_cursor`: the items
/// in order and how many pages it took.
fn all_pages(admin: SocketAddr, path: &str, limit: usize) -> (Vec<serde_json::Value>, usize) {
    let join = if path.contains('?') { '&' } else { '?' };
    let (mut items, mut pages) = (Vec::new(), 0);
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            None => format!("{path}{join}limit={limit}"),
            Some(c) => format!("{path}{join}limit={limit}&cursor={c}"),
        };
        let answer = get(admin, &url);
        assert_eq!(answer.status, 200, "{url}: {}", answer.body);
        let page = answer.json();
        let got = page["items"].as_array().unwrap();
        // The quarantine hands a record (one request's items) over whole.
        assert!(
            got.len() <= limit || path.starts_with("/admin/quarantine"),
            "{url}: {page}"
        );
        items.extend(got.iter().cloned());
        pages += 1;
        assert!(pages < 100, "{url}: the cursors do not end");
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return (items, pages),
        }
    }
}

#[test]
fn every_listing_pages_with_its_cursor_and_answers_as_the_cli_does() {
    use gancho_testkit::{HttpReceiver, Reply};
    // w1-w3 are refused for good (dead letters), w4-w5 for now (retried: pending).
    let receiver = HttpReceiver::start(|request| {
        let body = String::from_utf8_lossy(&request.body);
        match body.contains("w4") || body.contains("w5") {
            true => Reply::status(503),
            false => Reply::status(422).body("unknown account"),
        }
    });
    let setup = Setup::standard_with(&format!(
        "{}\n[http]\nallow_private = true\n[retry]\ninitial = \"1h\"\n",
        admin_section("")
    ));
    crate::support::call_rule(&setup, &receiver.url("/hook"));
    write_rule(
        &setup,
        "later.rhai",
        "const ON = [\"bank.withdrawal\"];\n\
         after(\"later:\" + event.id, hours(48), \"later\", #{ id: event.id });\n\
         fn later(t) { log(t.id); }\n",
    );
    let daemon = setup.start();
    let admin = admin_addr(&daemon);
    for i in 1..=5 {
        let id = format!("w{i}");
        assert_eq!(
            daemon.post("bank", &crate::support::withdrawal(&id)).status,
            200
        );
    }
    for i in 1..=3 {
        let item = format!(r#"[{{"id":"q{i}","at":1,"account":"ES01"}}]"#);
        assert_eq!(daemon.post("bank", item.as_bytes()).status, 200);
    }
    // Three more in one request: one quarantine record, longer than a page.
    let batch = r#"[{"id":"r1","at":1},{"id":"r2","at":1},{"id":"r3","at":1}]"#;
    assert_eq!(daemon.post("bank", batch.as_bytes()).status, 200);
    wait_until("3 dead letters and 2 pending", || {
        setup.json(&["dead", "--json"]).as_array().map(Vec::len) == Some(3)
            && receiver.wait_for(5, Duration::from_millis(1)).len() >= 5
    });

    // Events: newest first, two a page, as many as the CLI lists.
    let (events, pages) = all_pages(admin, "/admin/events", 2);
    let cli: Vec<u64> = setup
        .events(&[])
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .rev()
        .collect();
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, cli);
    assert_eq!(seqs.len(), 5);
    assert_eq!(pages, 3);
    let (filtered, _) = all_pages(
        admin,
        "/admin/events?source=bank&type=withdrawal&key=account=ES76w3&since=3650d",
        3,
    );
    assert_eq!(filtered.len(), 1);
    assert_eq!(filtered[0]["id"], "p:w3");
    let (typed, _) = all_pages(admin, "/admin/events?source=bank&type=withdrawal", 2);
    assert_eq!(typed, events);
    let (none, _) = all_pages(admin, "/admin/events?key=account=nobody", 3);
    assert!(none.is_empty());

    // One event, by seq and by id, with what its rules did.
    let first = &events[4];
    let by_seq = get(admin, &format!("/admin/events/{}", first["seq"]));
    assert_eq!(by_seq.status, 200, "{}", by_seq.body);
    let by_seq = by_seq.json();
    assert_eq!(by_seq["event"]["id"], "p:w1", "{by_seq}");
    assert_eq!(by_seq["runs"].as_array().map(Vec::len), Some(2), "{by_seq}");
    let by_id = get(admin, "/admin/events/p:w1").json();
    assert_eq!(by_id["event"]["seq"], first["seq"]);
    assert_eq!(get(admin, "/admin/events/999999").status, 404);
    assert_eq!(get(admin, "/admin/events/p:nothing").status, 404);

    // Dead letters and the outbox, in queue order, as the CLI lists them.
    let (dead, pages) = all_pages(admin, "/admin/dead", 2);
    assert_eq!(pages, 2);
    let cli_dead = setup.json(&["dead", "--json"]);
    let ids = |items: &[serde_json::Value]| -> Vec<String> {
        items
            .iter()
            .map(|i| i["action"]["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&dead), ids(cli_dead.as_array().unwrap()));
    let (pending, _) = all_pages(admin, "/admin/outbox?channel=http", 1);
    let cli_outbox = setup.json(&["outbox", "--json"]);
    let pending_ids: Vec<String> = pending
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect();
    let cli_ids: Vec<String> = cli_outbox
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(pending_ids, cli_ids);
    assert_eq!(pending_ids.len(), 2);
    let (other, _) = all_pages(admin, "/admin/outbox?channel=email", 1);
    assert!(other.is_empty());

    // Timers and quarantine.
    let (timers, _) = all_pages(admin, "/admin/timers?rule=later", 2);
    assert_eq!(timers.len(), 5);
    assert!(timers.iter().all(|t| t["rule"] == "later"));
    assert_eq!(
        timers.len(),
        setup.json(&["timers", "--json"]).as_array().unwrap().len()
    );
    let (quarantined, _) = all_pages(admin, "/admin/quarantine", 2);
    assert_eq!(quarantined.len(), 6, "{quarantined:?}");
    assert_eq!(quarantined.len(), setup.quarantine().len());
    assert!(
        quarantined[0]["item"].to_string().contains("r"),
        "newest first: {quarantined:?}"
    );
    assert!(quarantined[5]["item"].to_string().contains("q1"));
    // A cursor past a filter's range (of the whole listing, used for one rule) lists nothing.
    let page = get(admin, "/admin/timers?limit=1").json();
    let cursor = page["next_cursor"].as_str().unwrap();
    let past = get(admin, &format!("/admin/timers?rule=a&cursor={cursor}"));
    assert_eq!(past.status, 200, "{}", past.body);
    assert!(past.json()["items"].as_array().unwrap().is_empty());

    // Cursors are checked: not one, or one of another listing.
    let page = get(admin, "/admin/events?limit=1").json();
    let cursor = page["next_cursor"].as_str().unwrap();
    for bad in [
        format!("/admin/dead?cursor={cursor}"),
        "/admin/events?cursor=not-a-cursor".to_owned(),
        "/admin/events?colour=red".to_owned(),
        "/admin/dead?since=1h".to_owned(),
        "/admin/outbox?channel=pigeon".to_owned(),
        "/admin/events?since=yesterday".to_owned(),
    ] {
        let answer = get(admin, &bad);
        assert_eq!(answer.status, 400, "{bad}: {}", answer.body);
        assert!(answer.json()["error"].is_string());
    }

    // Retry through the API: one, then all; the history lists them.
    receiver.set_handler(|_| Reply::status(200));
    let one = &dead[0]["action"]["id"].as_str().unwrap().to_owned();
    assert_eq!(post(admin, "/admin/dead/no-such-id/retry").status, 404);
    let retried = post(admin, &format!("/admin/dead/{one}/retry"));
    assert_eq!(retried.status, 200, "{}", retried.body);
    assert_eq!(retried.json()["retried"], 1);
    let all = post(admin, "/admin/dead/retry-all");
    assert_eq!(all.status, 200, "{}", all.body);
    assert_eq!(all.json()["retried"], 2);
    wait_until("the three retried are delivered", || {
        all_pages(admin, "/admin/sent?channel=http", 2).0.len() == 3
    });
    let (sent, _) = all_pages(admin, "/admin/sent?since=1h", 2);
    let cli_sent = setup.json(&["sent", "--json"]);
    let mut cli_ids: Vec<String> = cli_sent
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    cli_ids.reverse();
    let sent_ids: Vec<String> = sent
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(sent_ids, cli_ids, "newest first");
    assert!(all_pages(admin, "/admin/dead", 10).0.is_empty());
    assert!(all_pages(admin, "/admin/sent?channel=sms", 10).0.is_empty());
}

/// Reads from an SSE response until `want` is in what came, or `timeout`; what came.
fn read_until(stream: &mut std::net::TcpStream, seen: &mut String, want: &str, timeout: Duration) {
    use std::io::Read as _;
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 8192];
    while !seen.contains(want) {
        assert!(
            Instant::now() < deadline,
            "no {want:?} within {timeout:?} in:\n{seen}"
        );
        match stream.read(&mut buf) {
            Ok(0) => panic!("the stream ended: {seen}"),
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(err) => panic!("{err}"),
        }
    }
}

/// Opens `GET /admin/events/stream` with `extra` headers; the stream past the answer's head.
fn open_stream(admin: SocketAddr, extra: &str) -> (std::net::TcpStream, String) {
    use std::io::Write as _;
    let mut stream = std::net::TcpStream::connect(admin).unwrap();
    write!(
        stream,
        "GET /admin/events/stream HTTP/1.1\r\nHost: {admin}\r\nAuthorization: Bearer {TOKEN}\r\n{extra}\r\n"
    )
    .unwrap();
    let mut seen = String::new();
    read_until(&mut stream, &mut seen, "\r\n\r\n", Duration::from_secs(10));
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert!(
        seen.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{seen}"
    );
    (stream, seen)
}

#[test]
fn the_event_stream_sends_a_posted_event_within_a_second_then_what_the_rules_decided() {
    let setup = Setup::standard_with(&admin_section(""));
    write_rule(&setup, "alert.rhai", LOG_RULE);
    let daemon = setup.start();
    let admin = admin_addr(&daemon);
    let (mut stream, mut seen) = open_stream(admin, "");
    // Connected: a moment for the stream's first poll, then the post.
    std::thread::sleep(Duration::from_millis(300));
    let posted = Instant::now();
    assert_eq!(
        daemon
            .post("bank", &crate::support::withdrawal("w1"))
            .status,
        200
    );
    read_until(
        &mut stream,
        &mut seen,
        r#""id":"p:w1""#,
        Duration::from_secs(1).saturating_sub(posted.elapsed()),
    );
    assert!(seen.contains("event: event\nid: 1-0\ndata: {"), "{seen}");
    // Then the rule's run, as traced.
    read_until(
        &mut stream,
        &mut seen,
        "event: decision",
        Duration::from_secs(30),
    );
    read_until(
        &mut stream,
        &mut seen,
        r#""rule":"alert""#,
        Duration::from_secs(5),
    );
    assert!(seen.contains(r#"],"seq":1}"#), "{seen}");

    assert!(seen.contains("event: decision\nid: 1-1\n"), "{seen}");
    // A client that reconnects with Last-Event-ID resumes after it: with the event but not its
    // decision received, it gets the decision and not the event again.
    let (mut again, mut seen_again) = open_stream(admin, "Last-Event-ID: 1-0\r\n");
    read_until(
        &mut again,
        &mut seen_again,
        "event: decision\nid: 1-1\n",
        Duration::from_secs(10),
    );
    assert!(!seen_again.contains("event: event"), "{seen_again}");
    let (mut from_start, mut seen_start) = open_stream(admin, "Last-Event-ID: 0\r\n");
    read_until(
        &mut from_start,
        &mut seen_start,
        r#""id":"p:w1""#,
        Duration::from_secs(10),
    );
    let (_, bad) = {
        use std::io::{Read as _, Write as _};
        let mut s = std::net::TcpStream::connect(admin).unwrap();
        write!(
            s,
            "GET /admin/events/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nLast-Event-ID: soon\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        ((), answer)
    };
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
}

#[test]
fn the_openapi_document_lists_exactly_the_routes_served() {
    let setup = Setup::standard_with(&admin_section(""));
    write_rule(&setup, "alert.rhai", LOG_RULE);
    let daemon = setup.start();
    let admin = admin_addr(&daemon);
    assert_eq!(
        send(admin, &Request::get("/admin/openapi.json")).status,
        401
    );
    let doc = get(admin, "/admin/openapi.json");
    assert_eq!(doc.status, 200, "{}", doc.body);
    let doc = doc.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let mut documented = Vec::new();
    for (path, methods) in doc["paths"].as_object().unwrap() {
        for (method, operation) in methods.as_object().unwrap() {
            documented.push((method.to_uppercase(), path.clone()));
            let open = matches!(path.as_str(), "/healthz" | "/readyz");
            assert_eq!(
                operation["security"].is_array(),
                !open,
                "{method} {path}: {operation}"
            );
        }
    }
    documented.sort();
    // Every route served is documented...
    let mut served: Vec<(String, String)> = GUARDED
        .iter()
        .filter(|(_, path)| !path.contains("no-such-route") && !path.contains('?'))
        .filter(|(method, _)| *method != "DELETE")
        .map(|(method, path)| {
            let path = path
                .replace("/rules/alert", "/rules/{name}")
                .replace("/events/1", "/events/{id}")
                .replace("/dead/some-id/", "/dead/{id}/");
            ((*method).to_owned(), path)
        })
        .chain(
            [
                ("GET", "/healthz"),
                ("GET", "/readyz"),
                ("GET", "/admin/openapi.json"),
                ("GET", "/admin/timers"),
            ]
            .map(|(m, p)| (m.to_owned(), p.to_owned())),
        )
        .collect();
    served.sort();
    served.dedup();
    assert_eq!(documented, served);
    // ... and every route documented is served (the stream is checked by its own test).
    for (method, path) in &documented {
        if path == "/admin/events/stream" {
            continue;
        }
        let concrete = path.replace("{name}", "alert").replace("{id}", "1");
        let request = Request {
            method: method.clone(),
            ..Request::get(&concrete)
        }
        .header("Authorization", &format!("Bearer {TOKEN}"));
        let answer = send(admin, &request);
        assert!(
            !answer.body.contains("no such route") && answer.status != 405,
            "{method} {concrete}: {} {}",
            answer.status,
            answer.body
        );
    }
}
