//! Listings stream: `gancho events --limit 0 --json` over many events costs the daemon no
//! memory that grows with the answer, and the command prints them as they come.

use std::time::{Duration, Instant};

use crate::support::Setup;

const EVENTS: usize = 200_000;
const PER_REQUEST: usize = 1_000;

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
fn listing_200000_events_as_json_does_not_grow_the_daemon_and_streams_every_one() {
    let setup = Setup::standard();
    let daemon = setup.start();
    for request in 0..EVENTS / PER_REQUEST {
        let items: Vec<String> = (0..PER_REQUEST)
            .map(|i| {
                let n = request * PER_REQUEST + i;
                format!(
                    r#"{{"id":"w{n}","kind":"withdrawal","at":1764320000,"account":"ES76{:04}","amount":{n},"atm":"Madrid, Gran Vía 1"}}"#,
                    n % 5000
                )
            })
            .collect();
        let body = format!("[{}]", items.join(","));
        assert_eq!(daemon.post("bank", body.as_bytes()).status, 200);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while setup.json(&["status", "--json"])["index_lag"] != 0 {
        assert!(Instant::now() < deadline, "indexing did not catch up");
        std::thread::sleep(Duration::from_millis(200));
    }
    let pid = daemon.pid();
    let before = rss_kb(pid);
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while sampling.load(std::sync::atomic::Ordering::Acquire) {
                peak = peak.max(rss_kb(pid));
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        })
    };
    let out = setup.command(&["events", "--limit", "0", "--json"]);
    sampling.store(false, std::sync::atomic::Ordering::Release);
    let peak = sampler.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(events.len(), EVENTS);
    assert_eq!(events[0]["seq"], 1);
    assert_eq!(events[EVENTS - 1]["data"]["id"], format!("w{}", EVENTS - 1));
    let grew_mb = peak.saturating_sub(before) / 1024;
    eprintln!(
        "listing {EVENTS} events ({} MB of JSON): daemon RSS {} MB before, peak {} MB",
        out.stdout.len() / 1_000_000,
        before / 1024,
        peak / 1024
    );
    assert!(grew_mb < 50, "the daemon grew by {grew_mb} MB");
    // A reader that stops early (`| head`) ends the command quietly, not with a panic.
    let mut child = std::process::Command::new(crate::support::gancho_bin())
        .arg("--config")
        .arg(&setup.config)
        .args(["events", "--limit", "0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut head = [0u8; 100];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut head).unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The same through the indexes, and with the daemon stopped.
    let some = setup.events(&[
        "--source",
        "bank",
        "--type",
        "withdrawal",
        "--key",
        "account=ES760007",
    ]);
    assert_eq!(some.len(), EVENTS / 5000);
    assert_eq!(daemon.terminate().code(), Some(0));
    let out = setup.command(&["events", "--limit", "0"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), EVENTS);
}
