//! SIGTERM stops accepting, answers the requests in flight, makes them durable, exits 0.

use std::time::Duration;

use crate::support::{Request, Setup, signal};
use gancho_testkit::wait_until;

#[test]
fn sigterm_finishes_in_flight_requests_and_exits_0() {
    const CLIENTS: usize = 4;
    let setup = Setup::standard_with_top(&format!("http_workers = {}", CLIENTS + 1));
    // Each request waits 10 s in its handler before it is appended: in flight when SIGTERM
    // comes, and still while the test checks that no new connection is taken.
    let mut daemon =
        setup.start_with_env(&[("GANCHO_FAILPOINTS", "ingress.before_append=sleep(10000)")]);
    let addr = daemon.addr;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| {
            std::thread::spawn(move || {
                let body = format!(
                    r#"{{"kind":"withdrawal","at":1764320000,"id":"w-{n}","account":"A{n}"}}"#
                );
                Request::post("/hooks/bank", body.as_bytes()).send(addr)
            })
        })
        .collect();
    let in_flight = wait_until(Duration::from_secs(30), || {
        let log = daemon.log();
        (log.matches("fail point ingress.before_append: sleeping")
            .count()
            == CLIENTS)
            .then_some(())
    });
    assert!(
        in_flight.is_some(),
        "the requests are not in flight:\n{}",
        daemon.log()
    );
    signal(daemon.pid(), "TERM");
    // Once the stop began, no new connection is taken, while the others are still answered.
    let stopping = wait_until(Duration::from_secs(30), || {
        daemon.log().contains("SIGTERM: stopping").then_some(())
    });
    assert!(stopping.is_some(), "{}", daemon.log());
    let refused = wait_until(Duration::from_secs(2), || {
        std::net::TcpStream::connect(addr).is_err().then_some(())
    });
    assert!(
        refused.is_some(),
        "the port still takes connections while stopping"
    );
    assert!(daemon.alive(), "checked before the daemon stopped");
    for client in clients {
        let response = client
            .join()
            .unwrap()
            .expect("an in-flight request got no answer");
        assert_eq!(response.status, 200, "{}", response.body);
    }
    let status = daemon.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    // The socket file is gone, and every acknowledged event is in the store.
    assert!(!setup.dir.path().join("data/gancho.sock").exists());
    let stored: Vec<String> = setup
        .events(&["--source", "bank"])
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    for n in 0..CLIENTS {
        assert!(
            stored.contains(&format!("p:w-{n}")),
            "acknowledged w-{n} missing"
        );
    }
}

#[test]
fn the_service_manager_is_told_when_gancho_is_ready_and_when_it_stops() {
    use std::os::unix::net::UnixDatagram;
    let setup = Setup::standard();
    // Stands where systemd's notification socket would be (`Type=notify`).
    let path = setup.dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let daemon = setup.start_with_env(&[("NOTIFY_SOCKET", path.to_str().unwrap())]);
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("READY=1"));
    // Ready means ready: the port answers.
    assert_eq!(daemon.request(&Request::get("/healthz")).status, 200);
    assert_eq!(daemon.terminate().code(), Some(0));
    let n = socket.recv(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
}

/// Plays systemd with `WatchdogSec=2s`: the daemon pings `WATCHDOG=1` every second while its
/// threads are idle or working, and stops once one is stuck (the engine, held by a fail point
/// inside a rule run), so systemd would restart it.
#[test]
fn the_watchdog_pings_while_the_threads_make_progress_and_stops_when_one_is_stuck() {
    use std::os::unix::net::UnixDatagram;
    let setup = Setup::standard();
    crate::support::write_rule(
        &setup,
        "slow.rhai",
        "const ON = [\"bank.withdrawal\"];\nlog(event.id);\n",
    );
    let path = setup.dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let daemon = setup.start_with_env(&[
        ("NOTIFY_SOCKET", path.to_str().unwrap()),
        ("WATCHDOG_USEC", "2000000"),
        (
            "GANCHO_FAILPOINTS",
            "engine.run.slow.bank.withdrawal=1*off->pause",
        ),
    ]);
    let mut buf = [0u8; 512];
    let mut next = |timeout: Duration| -> Option<String> {
        socket.set_read_timeout(Some(timeout)).unwrap();
        match socket.recv(&mut buf) {
            Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(err) => panic!("{err}"),
        }
    };
    assert!(next(Duration::from_secs(30)).unwrap().contains("READY=1"));
    // Idle, then working: the pings keep coming, about one a second.
    let mut pings = 0;
    let started = std::time::Instant::now();
    while pings < 4 {
        if pings == 2 {
            // The first withdrawal runs (the point lets it pass): work is not being stuck.
            assert_eq!(
                daemon
                    .post("bank", &crate::support::withdrawal("w1"))
                    .status,
                200
            );
        }
        let message = next(Duration::from_secs(5)).expect("a watchdog ping");
        assert!(message.contains("WATCHDOG=1"), "{message}");
        pings += 1;
    }
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "4 pings took {:?}",
        started.elapsed()
    );
    // The second one holds the engine inside the run: stuck after a second.
    assert_eq!(
        daemon
            .post("bank", &crate::support::withdrawal("w2"))
            .status,
        200
    );
    let stuck = wait_until(Duration::from_secs(30), || {
        daemon
            .log()
            .contains("a thread is stuck: the watchdog pings stop")
            .then_some(())
    });
    assert!(stuck.is_some(), "{}", daemon.log());
    assert!(daemon.log().contains("engine ("), "{}", daemon.log());
    // What was sent before it was seen stuck is drained; nothing comes after.
    while next(Duration::from_millis(10)).is_some() {}
    assert_eq!(next(Duration::from_secs(3)), None, "a ping while stuck");
}
