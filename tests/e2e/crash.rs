//! `kill -9` in the middle of a stream of webhooks loses no acknowledged event and stores none
//! twice, even when the provider retries everything after the restart.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{MAILJET_PASSWORD, MAILJET_USER, Request, Setup};

const CLIENTS: u64 = 8;

fn body(id: u64) -> Vec<u8> {
    format!(
        r#"{{"event":"open","time":{},"MessageID":{},"email":"user{id}@example.com","mj_campaign_id":7173}}"#,
        1_764_320_000 + id,
        19_421_777_396_190_490 + id
    )
    .into_bytes()
}

fn message_ids(events: &[serde_json::Value]) -> Vec<u64> {
    events
        .iter()
        .map(|e| {
            e["keys"]["MessageID"]
                .as_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
                - 19_421_777_396_190_490
        })
        .collect()
}

#[test]
fn kill_9_loses_no_acknowledged_event_and_duplicates_none() {
    let setup = Setup::standard();
    let daemon = setup.start();
    let addr = daemon.addr;

    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let attempted = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (acked, attempted, stop) = (acked.clone(), attempted.clone(), stop.clone());
            std::thread::spawn(move || {
                for n in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let id = client * 1_000_000 + n;
                    attempted.lock().unwrap().insert(id);
                    let request = Request::post("/hooks/mailjet", &body(id))
                        .basic_auth(MAILJET_USER, MAILJET_PASSWORD);
                    match request.send(addr) {
                        Ok(response) if response.status == 200 => {
                            acked.lock().unwrap().insert(id);
                        }
                        // The daemon died under us: stop like a provider would, and retry later.
                        _ => break,
                    }
                }
            })
        })
        .collect();

    let deadline = Instant::now() + Duration::from_secs(20);
    while acked.lock().unwrap().len() < 400 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    daemon.kill();
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let attempted = attempted.lock().unwrap().clone();
    assert!(
        acked.len() >= 100,
        "only {} events were acknowledged before the kill",
        acked.len()
    );

    // With the daemon dead, the command opens the store itself.
    let stored = message_ids(&setup.events(&[]));
    eprintln!(
        "kill -9 after {} acknowledged, {} attempted, {} found stored",
        acked.len(),
        attempted.len(),
        stored.len()
    );
    let stored_set: BTreeSet<u64> = stored.iter().copied().collect();
    assert_eq!(stored.len(), stored_set.len(), "an event was stored twice");
    let lost: Vec<_> = acked.difference(&stored_set).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged events were lost: {lost:?}",
        lost.len()
    );

    // The provider retries everything it sent, acknowledged or not: each is stored once.
    let daemon = setup.start();
    for &id in &attempted {
        let response = daemon.post_mailjet(&body(id));
        assert_eq!(response.status, 200, "{}", response.body);
    }
    let stored = message_ids(&setup.events(&[]));
    let mut counts: HashMap<u64, usize> = HashMap::new();
    for id in &stored {
        *counts.entry(*id).or_default() += 1;
    }
    assert!(
        counts.values().all(|&n| n == 1),
        "duplicates after the retries"
    );
    assert_eq!(counts.keys().copied().collect::<BTreeSet<_>>(), attempted);
    // Sequence numbers stay unique and increasing across the crash.
    let seqs: Vec<u64> = setup
        .events(&[])
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
}
