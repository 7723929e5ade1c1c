//! `docs/operations.md`, done as it says: each instruction it gives an operator is carried out
//! here, on the real binary, and must have the effect the document promises.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::{Request, Setup, call_rule, gancho_bin, repo_root, signal, withdrawal};
use gancho_testkit::{HttpReceiver, Reply, wait_until};

fn json_len(setup: &Setup, args: &[&str]) -> usize {
    setup.json(args).as_array().unwrap().len()
}

/// Runs a command, which must succeed.
fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether `tool` is installed; if not, the test is skipped with a line saying so, unless
/// `GANCHO_REQUIRE_SYSTEMD=1` (CI installs it).
fn have(tool: &str) -> bool {
    let found = Command::new(tool).arg("--version").output().is_ok();
    if !found {
        assert!(
            std::env::var("GANCHO_REQUIRE_SYSTEMD").as_deref() != Ok("1"),
            "{tool} is missing and GANCHO_REQUIRE_SYSTEMD=1"
        );
        eprintln!("skipped: {tool} is not installed (apt-get install systemd)");
    }
    found
}

/// "Install as a systemd service": the steps, into a scratch root instead of `/`.
#[test]
fn the_install_steps_create_the_user_and_a_unit_systemd_accepts_without_a_warning() {
    if !have("systemd-sysusers") || !have("systemd-analyze") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let repo = repo_root();
    let at = |path: &str| root.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(at("/usr/lib/sysusers.d")).unwrap();
    std::fs::create_dir_all(at("/etc/systemd/system")).unwrap();
    std::fs::create_dir_all(at("/usr/local/bin")).unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    run(
        "install",
        &[
            "-m",
            "0755",
            &s(&gancho_bin()),
            &s(&at("/usr/local/bin/gancho")),
        ],
    );
    run(
        "install",
        &[
            "-m",
            "0644",
            &s(&repo.join("deploy/gancho.sysusers")),
            &s(&at("/usr/lib/sysusers.d/gancho.conf")),
        ],
    );
    run("systemd-sysusers", &[&format!("--root={}", s(root))]);
    let passwd = std::fs::read_to_string(at("/etc/passwd")).unwrap();
    let user = passwd
        .lines()
        .find(|l| l.starts_with("gancho:"))
        .unwrap_or_else(|| panic!("no gancho user: {passwd}"));
    assert!(
        user.ends_with(":/var/lib/gancho:/usr/sbin/nologin"),
        "{user}"
    );
    run("install", &["-d", "-m", "0750", &s(&at("/etc/gancho"))]);
    run(
        "install",
        &[
            "-m",
            "0640",
            &s(&repo.join("deploy/gancho.toml")),
            &s(&at("/etc/gancho/gancho.toml")),
        ],
    );
    let check = Command::new(at("/usr/local/bin/gancho"))
        .args([
            "--config",
            &s(&at("/etc/gancho/gancho.toml")),
            "check-config",
        ])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    // The unit as shipped, its ExecStart pointed at the binary just installed: systemd must
    // accept every line (it reports a line it cannot parse as a warning and exits 0).
    let unit = std::fs::read_to_string(repo.join("deploy/gancho.service"))
        .unwrap()
        .replace("/usr/local/bin/gancho", &s(&at("/usr/local/bin/gancho")));
    let unit_path = at("/etc/systemd/system/gancho.service");
    std::fs::write(&unit_path, unit).unwrap();
    let verify = Command::new("systemd-analyze")
        .args(["verify", &s(&unit_path)])
        .output()
        .unwrap();
    let complaints = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && complaints.trim().is_empty(),
        "{complaints}"
    );
}

/// "Commands": the same answers from the running daemon and, once it is stopped, from the
/// store; `rules` needs the running engine and says what to use instead.
#[test]
fn commands_answer_from_the_daemon_and_from_the_store_once_it_is_stopped() {
    let receiver = HttpReceiver::start(|_| Reply::status(422).body("unknown account"));
    let setup = Setup::standard_with("[http]\nallow_private = true\n");
    call_rule(&setup, &receiver.url("/hook"));
    let daemon = setup.start();
    for id in ["w1", "w2"] {
        assert_eq!(daemon.post("bank", &withdrawal(id)).status, 200);
    }
    let bad = br#"[{"kind":"withdrawal","id":"w3","at":1764320000},{"id":"no kind"}]"#;
    assert_eq!(daemon.post("bank", bad).status, 200);
    let dead = wait_until(Duration::from_secs(30), || {
        (json_len(&setup, &["dead", "--json"]) == 3).then_some(())
    });
    assert!(dead.is_some(), "{}", daemon.log());
    let running = [
        setup.json(&["events", "--json", "--limit", "0"]),
        setup.json(&["quarantine", "--json"]),
        setup.json(&["outbox", "--json"]),
        setup.json(&["dead", "--json"]),
    ];
    assert!(setup.command(&["rules"]).status.success());
    assert_eq!(daemon.terminate().code(), Some(0));

    let stopped = [
        setup.json(&["events", "--json", "--limit", "0"]),
        setup.json(&["quarantine", "--json"]),
        setup.json(&["outbox", "--json"]),
        setup.json(&["dead", "--json"]),
    ];
    assert_eq!(running, stopped);
    assert_eq!(stopped[0].as_array().unwrap().len(), 3);
    assert_eq!(stopped[1].as_array().unwrap().len(), 1);
    // `gancho rules` too: the rules as they compile, with the counters stored.
    let rules = setup.json(&["rules", "--json"]);
    assert_eq!(rules["stopped"], true, "{rules}");
    let runs: u64 = rules["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["runs"].as_u64().unwrap())
        .sum();
    assert!(runs > 0, "the counters were not stored: {rules}");
    let text = String::from_utf8(setup.command(&["rules"]).stdout).unwrap();
    assert!(
        text.starts_with("daemon stopped; engine at event"),
        "{text}"
    );

    // `gancho dead retry --all`, with the daemon stopped: due at once after the start.
    let out = setup.command(&["dead", "retry", "--all"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("3 dead letter(s)"));
    assert_eq!(json_len(&setup, &["dead", "--json"]), 0);
    assert_eq!(json_len(&setup, &["outbox", "--json"]), 3);
    receiver.set_handler(|_| Reply::status(200));
    let daemon = setup.start();
    let delivered = wait_until(Duration::from_secs(30), || {
        (json_len(&setup, &["outbox", "--json"]) == 0).then_some(())
    });
    assert!(delivered.is_some(), "{}", daemon.log());
    let calls = receiver.requests();
    let ok: Vec<_> = calls.iter().filter(|r| r.path == "/hook").collect();
    assert_eq!(ok.len(), 6, "three refused, then three delivered");
    assert_eq!(daemon.terminate().code(), Some(0));
}

/// "Backups": stop, copy the data folder, start: the copy is the same gancho.
#[test]
fn a_copy_of_the_stopped_data_folder_starts_with_every_event_and_dedup_intact() {
    let setup = Setup::standard();
    let daemon = setup.start();
    for i in 0..50 {
        assert_eq!(
            daemon.post("bank", &withdrawal(&format!("w{i}"))).status,
            200
        );
    }
    // "`SIGTERM` ... or `SIGINT`": either stops it cleanly.
    signal(daemon.pid(), "INT");
    assert_eq!(daemon.wait_exit(Duration::from_secs(30)).code(), Some(0));
    let backup = tempfile::tempdir().unwrap();
    let copy = backup.path().join("data");
    let data = setup.dir.path().join("data");
    run(
        "cp",
        &["-a", data.to_str().unwrap(), copy.to_str().unwrap()],
    );
    // The original is lost; the backup is copied back.
    std::fs::remove_dir_all(&data).unwrap();
    run(
        "cp",
        &["-a", copy.to_str().unwrap(), data.to_str().unwrap()],
    );
    let restored = &setup;
    let daemon = restored.start();
    assert_eq!(restored.events(&["--source", "bank"]).len(), 50);
    assert_eq!(daemon.post("bank", &withdrawal("w7")).status, 200);
    assert_eq!(
        restored.events(&["--source", "bank"]).len(),
        50,
        "a duplicate"
    );
    assert_eq!(daemon.post("bank", &withdrawal("w50")).status, 200);
    assert_eq!(restored.events(&["--source", "bank"]).len(), 51);
    assert_eq!(daemon.terminate().code(), Some(0));
}

/// "An `index/` folder left by a gancho from before the sorted-run indexes is no longer read:
/// delete it."
#[test]
fn an_old_index_folder_is_not_read_and_deleting_it_loses_nothing() {
    let setup = Setup::standard();
    let daemon = setup.start();
    assert_eq!(daemon.post("bank", &withdrawal("w1")).status, 200);
    assert_eq!(daemon.terminate().code(), Some(0));
    let old = setup.dir.path().join("data/store/index");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::write(old.join("db"), b"an old sled database").unwrap();
    let daemon = setup.start();
    assert_eq!(setup.events(&["--source", "bank"]).len(), 1);
    assert_eq!(daemon.terminate().code(), Some(0));
    std::fs::remove_dir_all(&old).unwrap();
    let daemon = setup.start();
    assert_eq!(daemon.post("bank", &withdrawal("w1")).status, 200);
    assert_eq!(setup.events(&["--source", "bank"]).len(), 1);
    assert_eq!(daemon.terminate().code(), Some(0));
}

/// "Deploy a rule by writing it beside the folder and `mv` it in, after `gancho check` passes
/// on it"; `systemctl reload gancho` (SIGHUP) reads the folder at once.
#[test]
fn a_rule_checked_then_moved_in_runs_and_sighup_reloads_the_folder() {
    let receiver = HttpReceiver::ok();
    let setup = Setup::standard_with("[http]\nallow_private = true\n");
    std::fs::create_dir_all(setup.dir.path().join("rules")).unwrap();
    let daemon = setup.start();
    let staging = setup.dir.path().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::write(
        staging.join("notify.rhai"),
        format!(
            "const ON = [\"bank.*\"];\nhttp(#{{ method: \"POST\", url: \"{}\", json: #{{ id: event.id }} }});\n",
            receiver.url("/hook")
        ),
    )
    .unwrap();
    let check = setup.command(&["check", staging.to_str().unwrap()]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    std::fs::rename(
        staging.join("notify.rhai"),
        setup.dir.path().join("rules/notify.rhai"),
    )
    .unwrap();
    signal(daemon.pid(), "HUP");
    let loaded = wait_until(Duration::from_secs(30), || {
        let rules = setup.json(&["rules", "--json"]);
        rules["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "notify" && r["loaded"] == true)
            .then_some(())
    });
    assert!(loaded.is_some(), "{}", daemon.log());
    assert!(
        daemon.log().contains("SIGHUP: reloading the rules"),
        "{}",
        daemon.log()
    );
    assert_eq!(daemon.post("bank", &withdrawal("w1")).status, 200);
    assert_eq!(receiver.wait_for(1, Duration::from_secs(30)).len(), 1);
    assert_eq!(daemon.request(&Request::get("/healthz")).status, 200);
    assert_eq!(daemon.terminate().code(), Some(0));
}

#[test]
fn log_format_json_writes_one_json_object_per_line() {
    let setup = Setup::standard_with_top("log_format = \"json\"");
    let daemon = setup.start();
    assert_eq!(daemon.post("bank", &withdrawal("w1")).status, 200);
    signal(daemon.pid(), "HUP");
    std::thread::sleep(Duration::from_millis(300));
    let log = daemon.log();
    assert_eq!(daemon.terminate().code(), Some(0));
    let lines: Vec<&str> = log.lines().filter(|l| !l.is_empty()).collect();
    assert!(lines.len() >= 3, "{log}");
    for line in &lines {
        let object: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|err| panic!("not a JSON object ({err}): {line}"));
        assert!(object["timestamp"].is_string(), "{line}");
        assert!(object["level"].is_string(), "{line}");
        assert!(object["fields"]["message"].is_string(), "{line}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains(r#""message":"gancho is ready""#)),
        "{log}"
    );
}

/// SIGHUP rotates a source's password and switches e-mail from files to SMTP without a
/// restart; an invalid config is refused whole; what needs a restart is named.
#[test]
fn sighup_rotates_a_source_password_and_reloads_the_actions_config() {
    use crate::support::{MAILJET_PASSWORD, MAILJET_USER};
    let setup = Setup::standard();
    crate::support::write_rule(
        &setup,
        "alert.rhai",
        "const ON = [\"bank.withdrawal\"];\nemail(#{ to: \"owner@example.com\", subject: \"Withdrawal\", text: event.id });\n",
    );
    let original = std::fs::read_to_string(&setup.config).unwrap();
    let daemon = setup.start();
    let mailjet = |password: &str| {
        daemon
            .request(
                &Request::post(
                    "/hooks/mailjet",
                    br#"{"event":"open","time":1433103519,"MessageID":1,"email":"a@x"}"#,
                )
                .basic_auth(MAILJET_USER, password),
            )
            .status
    };
    assert_eq!(mailjet(MAILJET_PASSWORD), 200);
    // Before: e-mail goes to files.
    assert_eq!(daemon.post("bank", &withdrawal("w1")).status, 200);
    let mail_dir = setup.dir.path().join("data/mail");
    let mails = wait_until(Duration::from_secs(30), || {
        std::fs::read_dir(&mail_dir)
            .ok()
            .map(|d| d.count())
            .filter(|n| *n == 1)
    });
    assert_eq!(mails, Some(1), "{}", daemon.log());

    let smtp = gancho_testkit::SmtpServer::start();
    let rotated = original.replace(
        &format!("password = \"{MAILJET_PASSWORD}\""),
        "password = \"n3w-s3cret\"",
    );
    assert_ne!(rotated, original);
    std::fs::write(
        &setup.config,
        format!(
            "{rotated}\n[email]\nsmtp_url = \"{}\"\nfrom = \"Bank <alerts@bank.example.com>\"\n",
            smtp.url()
        ),
    )
    .unwrap();
    signal(daemon.pid(), "HUP");
    let reloaded = wait_until(Duration::from_secs(30), || {
        daemon
            .log()
            .contains("SIGHUP: config reloaded")
            .then_some(())
    });
    assert!(reloaded.is_some(), "{}", daemon.log());
    assert!(
        daemon.log().contains("credentials_changed=mailjet"),
        "{}",
        daemon.log()
    );
    assert_eq!(
        mailjet(MAILJET_PASSWORD),
        401,
        "the old password still works"
    );
    assert_eq!(mailjet("n3w-s3cret"), 200);
    // After: e-mail goes to the SMTP server.
    assert_eq!(daemon.post("bank", &withdrawal("w2")).status, 200);
    let sent = smtp.wait_for_mails(1, Duration::from_secs(30));
    assert_eq!(sent.len(), 1, "{}", daemon.log());
    assert_eq!(std::fs::read_dir(&mail_dir).unwrap().count(), 1);

    // An invalid config is refused whole: the new password stays, nothing else changes.
    std::fs::write(
        &setup.config,
        rotated.replace("n3w-s3cret", "other") + "\n[retry]\ninitial = \"soon\"\n",
    )
    .unwrap();
    signal(daemon.pid(), "HUP");
    let refused = wait_until(Duration::from_secs(30), || {
        daemon
            .log()
            .contains("SIGHUP: the new config is refused whole")
            .then_some(())
    });
    assert!(refused.is_some(), "{}", daemon.log());
    assert!(daemon.log().contains("retry.initial"), "{}", daemon.log());
    assert_eq!(mailjet("other"), 401);
    assert_eq!(mailjet("n3w-s3cret"), 200);

    // What a reload cannot apply is named, and keeps its running value.
    std::fs::write(
        &setup.config,
        rotated.replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:1\""),
    )
    .unwrap();
    signal(daemon.pid(), "HUP");
    let named = wait_until(Duration::from_secs(30), || {
        daemon.log().contains("need a restart").then_some(())
    });
    assert!(named.is_some(), "{}", daemon.log());
    assert!(daemon.log().contains("keys=listen"), "{}", daemon.log());
    assert_eq!(mailjet("n3w-s3cret"), 200);
}

/// The variables of a running process, from `/proc`.
fn environ_of(pid: u32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    raw.split(|b| *b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

#[test]
fn the_daemon_runs_with_a_short_allocator_purge_delay_as_the_same_process_unless_told_otherwise() {
    let setup = Setup::standard();
    // Executed again with the variable set, as the process the test started (same PID), and
    // serving as usual.
    let daemon = setup.start();
    assert!(
        environ_of(daemon.pid()).contains(&"MIMALLOC_PURGE_DELAY=10".to_owned()),
        "{:?}",
        environ_of(daemon.pid())
    );
    let reply = daemon.post_mailjet(&crate::support::fixture("mailjet/open.json"));
    assert_eq!(reply.status, 200, "{}", reply.body);
    drop(daemon);
    // An operator's own value wins.
    let daemon = setup.start_with_env(&[("MIMALLOC_PURGE_DELAY", "250")]);
    let env = environ_of(daemon.pid());
    assert!(
        env.contains(&"MIMALLOC_PURGE_DELAY=250".to_owned()),
        "{env:?}"
    );
    assert!(!env.contains(&"MIMALLOC_PURGE_DELAY=10".to_owned()));
}
