//! A public port: slow clients, oversized bodies, too many connections and a process short of
//! file descriptors get an answer or a wait, never a daemon that stops serving.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use crate::support::{Request, Setup, gancho_bin, withdrawal};
use gancho_testkit::wait_until;

/// Reads what the server sends until it closes the connection.
fn read_to_close(stream: &mut TcpStream) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .expect("the server closes the connection");
    String::from_utf8_lossy(&raw).into_owned()
}

#[test]
fn a_body_sent_a_byte_at_a_time_gets_408_and_the_connection_is_closed() {
    let setup = Setup::standard_with_top("body_timeout = \"2s\"");
    let daemon = setup.start();
    let mut stream = TcpStream::connect(daemon.addr).unwrap();
    write!(
        stream,
        "POST /hooks/bank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{"
    )
    .unwrap();
    // A byte every half second: the body would take over eight minutes.
    let slow = stream.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut slow = slow;
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(500));
            if slow.write_all(b" ").is_err() {
                break;
            }
        }
    });
    let answer = read_to_close(&mut stream);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains(r#""error":"the body did not arrive within 2s""#),
        "{answer}"
    );
    writer.join().unwrap();
    // Nothing of it was stored, and the daemon serves on.
    assert_eq!(daemon.post("bank", &withdrawal("w1")).status, 200);
    assert_eq!(setup.events(&["--source", "bank"]).len(), 1);
}

#[test]
fn a_client_that_sends_a_too_large_body_before_reading_gets_the_413_not_a_reset() {
    let setup = Setup::standard();
    let daemon = setup.start();
    for declared in [true, false] {
        let mut stream = TcpStream::connect(daemon.addr).unwrap();
        let body = vec![b' '; 3 * 1024 * 1024];
        let head = if declared {
            format!(
                "POST /hooks/bank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
        } else {
            "POST /hooks/bank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_owned()
        };
        stream.write_all(head.as_bytes()).unwrap();
        if declared {
            stream.write_all(&body).unwrap();
        } else {
            for chunk in body.chunks(64 * 1024) {
                write!(stream, "{:x}\r\n", chunk.len()).unwrap();
                stream.write_all(chunk).unwrap();
                stream.write_all(b"\r\n").unwrap();
            }
            stream.write_all(b"0\r\n\r\n").unwrap();
        }
        let answer = read_to_close(&mut stream);
        assert!(answer.starts_with("HTTP/1.1 413"), "{declared}: {answer}");
        assert!(
            answer.contains("body is larger than the limit of 1048576 bytes"),
            "{declared}: {answer}"
        );
    }
    assert_eq!(daemon.post("bank", &withdrawal("w1")).status, 200);
}

/// The daemon started by a shell after `setup_shell` (a `ulimit`, a `umask`), which it
/// inherits across `exec`.
fn daemon_after(setup: &Setup, setup_shell: &str) -> crate::support::Reaped {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(format!("{setup_shell} && exec \"$0\" --config \"$1\" run"))
        .arg(gancho_bin())
        .arg(&setup.config)
        .env("GANCHO_LOG", "info");
    crate::support::Reaped(crate::support::as_daemon(&mut command).spawn().unwrap())
}

/// Open descriptors of a process.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn connections_past_max_connections_wait_to_be_accepted() {
    let setup = Setup::standard_with_top("max_connections = 20\nhttp_workers = 2");
    let daemon = setup.start();
    let before = open_fds(daemon.pid());
    let idle: Vec<TcpStream> = (0..60)
        .map(|_| TcpStream::connect(daemon.addr).unwrap())
        .collect();
    // It takes connections up to its limit ...
    let took = wait_until(Duration::from_secs(30), || {
        (open_fds(daemon.pid()) >= before + 20).then_some(())
    });
    assert!(took.is_some(), "{} open", open_fds(daemon.pid()));
    // ... and no more while they stay open, but for the few its accept thread has in hand
    // when the workers report full (4 to 8 measured, for limits of 20 to 100).
    std::thread::sleep(Duration::from_millis(500));
    let open = open_fds(daemon.pid());
    assert!(
        open <= before + 20 + 10,
        "{open} descriptors open, {before} before"
    );
    drop(idle);
    let served = wait_until(Duration::from_secs(30), || {
        Request::post("/hooks/bank", &withdrawal("w1"))
            .send(daemon.addr)
            .ok()
            .filter(|r| r.status == 200)
    });
    assert!(served.is_some(), "{}", daemon.log());
}

#[test]
fn running_out_of_file_descriptors_for_a_while_does_not_fail_the_store() {
    let setup = Setup::standard_with_top("body_timeout = \"60s\"");
    // The daemon under a low descriptor limit (`ulimit -n`, inherited across exec).
    let mut child = daemon_after(&setup, "ulimit -n 128");
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let stderr = child.stderr.take().unwrap();
    let sink = log.clone();
    std::thread::spawn(move || {
        let mut stderr = stderr;
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let addr = wait_until(Duration::from_secs(30), || {
        let log = log.lock().unwrap();
        let line = log.lines().find(|l| l.contains("gancho is ready"))?;
        let start = line.find("listen=")? + "listen=".len();
        line[start..]
            .split(' ')
            .next()?
            .parse::<std::net::SocketAddr>()
            .ok()
    })
    .expect("ready");
    assert_eq!(
        Request::post("/hooks/bank", &withdrawal("w0"))
            .send(addr)
            .unwrap()
            .status,
        200
    );
    // One request's head sent first, its body once the descriptors are used up.
    let body = withdrawal("w1");
    let mut post = TcpStream::connect(addr).unwrap();
    write!(
        post,
        "POST /hooks/bank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    let hog: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect(addr).ok())
        .collect();
    let full = wait_until(Duration::from_secs(30), || {
        (open_fds(child.id()) >= 120).then_some(())
    });
    assert!(full.is_some(), "{} descriptors open", open_fds(child.id()));
    post.write_all(&body).unwrap();
    // The group commit cannot open what it needs while the limit is reached: it waits.
    std::thread::sleep(Duration::from_secs(2));
    drop(hog);
    let answer = read_to_close(&mut post);
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "{answer}\n{}",
        log.lock().unwrap()
    );
    let served = wait_until(Duration::from_secs(30), || {
        Request::post("/hooks/bank", &withdrawal("w2"))
            .send(addr)
            .ok()
            .filter(|r| r.status == 200)
    });
    assert!(served.is_some(), "{}", log.lock().unwrap());
    let health = Request::get("/healthz").send(addr).unwrap();
    assert_eq!(health.status, 200, "{}", health.body);
    assert!(matches!(child.try_wait(), Ok(None)), "the daemon exited");
    crate::support::signal(child.id(), "TERM");
    let status = crate::support::wait_with_timeout(&mut child.0, Duration::from_secs(30)).unwrap();
    assert_eq!(status.code(), Some(0), "{}", log.lock().unwrap());
    assert_eq!(setup.events(&["--source", "bank"]).len(), 3);
}

#[test]
fn a_rule_nesting_a_value_as_deep_as_an_event_asks_fails_for_that_event_only() {
    let setup = Setup::standard();
    let rules = setup.dir.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(
        rules.join("nest.rhai"),
        "const ON = [\"bank.*\"];\nlet a = [];\nfor i in 0..event.n { a = [a]; }\n",
    )
    .unwrap();
    let daemon = setup.start();
    for (id, n) in [("w1", 10_000), ("w2", 1_000_000)] {
        let body =
            format!(r#"{{"id":"{id}","kind":"withdrawal","at":1764320000,"account":"A","n":{n}}}"#);
        assert_eq!(daemon.post("bank", body.as_bytes()).status, 200);
    }
    // Both runs fail at the 65th level, and the daemon goes on.
    let done = wait_until(Duration::from_secs(60), || {
        let status = setup.json(&["rules", "--json"]);
        (status["cursor"].as_u64() == Some(2)).then_some(status)
    });
    let status =
        done.unwrap_or_else(|| panic!("the engine did not get past them:\n{}", daemon.log()));
    let rule = &status["rules"][0];
    assert_eq!(rule["runs"], 2, "{rule}");
    assert_eq!(rule["errors"], 2, "{rule}");
    let error = rule["last_error"].as_str().unwrap();
    assert!(error.contains("a nests deeper than 64 levels"), "{error}");
    assert_eq!(daemon.post("bank", &withdrawal("w3")).status, 200);
    assert_eq!(daemon.terminate().code(), Some(0));
}

#[test]
fn terminal_escapes_in_posted_data_reach_the_operator_escaped() {
    let receiver = gancho_testkit::HttpReceiver::start(|_| {
        gancho_testkit::Reply::status(400).body("bad \u{1b}]0;pwned\u{7} request")
    });
    let setup = Setup::standard_with("[http]\nallow_private = true\n");
    let rules = setup.dir.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(
        rules.join("echo.rhai"),
        format!(
            "const ON = [\"bank.*\"];\nhttp(#{{ method: \"POST\", url: \"{}\", json: #{{}} }});\nthrow event.kind;\n",
            receiver.url("/x")
        ),
    )
    .unwrap();
    std::fs::write(
        rules.join("call.rhai"),
        format!(
            "const ON = [\"bank.*\"];\nhttp(#{{ method: \"POST\", url: \"{}\", json: #{{}} }});\n",
            receiver.url("/x")
        ),
    )
    .unwrap();
    let daemon = setup.start();
    let body = r#"{"id":"w1","kind":"withdrawal\u001b[2J","at":1764320000,"account":"\u001b]0;title\u0007"}"#;
    assert_eq!(daemon.post("bank", body.as_bytes()).status, 200);
    let dead = wait_until(Duration::from_secs(30), || {
        let dead = setup.json(&["dead", "--json"]);
        (dead.as_array().unwrap().len() == 1).then_some(())
    });
    assert!(dead.is_some(), "{}", daemon.log());
    for args in [&["events"][..], &["rules"], &["dead"]] {
        let out = setup.command(args);
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{7}'),
            "{args:?} printed a raw escape: {text:?}"
        );
        let escaped = match args[0] {
            "events" => "withdrawal\\u{1b}[2J",
            "rules" => "withdrawal\\u{1b}[2J",
            _ => "\\u{1b}]0;pwned\\u{7}",
        };
        assert!(text.contains(escaped), "{args:?}: {text}");
    }
    assert_eq!(daemon.terminate().code(), Some(0));
}

#[test]
fn the_data_folder_and_its_files_are_the_daemons_own_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt as _;
    let setup = Setup::standard();
    let data = setup.dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(data.join("left.txt"), b"x").unwrap();
    std::fs::set_permissions(
        data.join("left.txt"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    // Started under a permissive umask.
    let mut child = daemon_after(&setup, "umask 000");
    let db = data.join("store/log/db");
    let ready = wait_until(Duration::from_secs(30), || {
        data.join("gancho.sock").exists().then_some(())
    });
    assert!(ready.is_some() && db.exists());
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("left.txt")), 0o600);
    assert_eq!(mode(&db), 0o600, "a store file");
    assert_eq!(mode(&data.join("store")), 0o700);
    crate::support::signal(child.id(), "TERM");
    let status = crate::support::wait_with_timeout(&mut child.0, Duration::from_secs(30)).unwrap();
    assert_eq!(status.code(), Some(0));
}

/// Bytes of the files under `dir`.
fn folder_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            folder_bytes(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

#[test]
fn a_flood_of_invalid_items_costs_about_its_own_bytes() {
    let setup = Setup::standard();
    let daemon = setup.start();
    assert_eq!(daemon.post("bank", &withdrawal("w0")).status, 200);
    let log = setup.dir.path().join("data/store/log");
    let before = folder_bytes(&log);
    // 10,000 items without a type: about 1 MB.
    let items: Vec<String> = (0..10_000)
        .map(|i| format!(r#"{{"id":"bad-{i}","at":1764320000,"account":"ES7600000000000000{i:05}","note":"no kind here, {i:06}"}}"#))
        .collect();
    let body = format!("[{}]", items.join(","));
    let answer = daemon.post("bank", body.as_bytes());
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(
        answer.body.contains(r#""quarantined":10000"#),
        "{}",
        answer.body
    );
    assert_eq!(daemon.terminate().code(), Some(0));
    let grown = folder_bytes(&log).saturating_sub(before);
    eprintln!("{} bytes posted, the log grew by {grown}", body.len());
    // One record for the request (it was 172 MB for 1 MB, a record per item).
    assert!(
        grown < 16 << 20,
        "the log grew by {grown} bytes for {}",
        body.len()
    );
    let listed = setup.quarantine();
    assert_eq!(listed.len(), 10_000);
}
