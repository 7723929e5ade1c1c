//! SIGTERM stops accepting, answers the requests in flight, makes them durable, exits 0.

use std::sync::{Arc, Mutex};

use crate::support::{Request, Setup};

#[test]
fn sigterm_finishes_in_flight_requests_and_exits_0() {
    let setup = Setup::standard();
    let daemon = setup.start();
    let addr = daemon.addr;
    let acked = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..4u64)
        .map(|client| {
            let acked = acked.clone();
            std::thread::spawn(move || {
                for n in 0..10_000u64 {
                    let id = client * 100_000 + n;
                    let body = format!(r#"{{"kind":"withdrawal","at":1764320000,"id":"w-{id}","account":"A{client}"}}"#);
                    match Request::post("/hooks/bank", body.as_bytes()).send(addr) {
                        Ok(r) if r.status == 200 => acked.lock().unwrap().push(id),
                        Ok(r) => {
                            assert_eq!(r.status, 503, "unexpected answer while stopping: {}", r.body);
                            break;
                        }
                        Err(_) => break,
                    }
                }
            })
        })
        .collect();
    while acked.lock().unwrap().len() < 50 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let status = daemon.terminate();
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    for client in clients {
        client.join().unwrap();
    }
    // The socket file is gone, and every acknowledged event is in the store.
    assert!(!setup.dir.path().join("data/gancho.sock").exists());
    let stored: Vec<String> = setup
        .events(&["--source", "bank"])
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    for id in acked.lock().unwrap().iter() {
        assert!(
            stored.contains(&format!("p:w-{id}")),
            "acknowledged w-{id} missing"
        );
    }
    // Nothing else was received after the stop began: the port is closed.
    assert!(Request::post("/hooks/bank", b"{}").send(addr).is_err());
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
