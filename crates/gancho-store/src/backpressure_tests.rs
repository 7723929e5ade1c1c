//! The backlog bound: past `StoreConfig::max_index_lag` unindexed events the writer waits for
//! the indexer, and neither a shutdown nor a stalled indexer makes it wait for good.

use std::time::Duration;

use gancho_core::NewEvent;

use super::*;
use crate::tests::{append, event, open};

/// The fail point that holds the indexer before it publishes a batch.
const HOLD: &str = "index.batch.before_publish";

/// A store whose limit is 10,000 unindexed events, with the indexer held at its first batch and
/// 10,500 events appended, and a group of 500 more submitted from another thread: the receiver
/// gets how many it stored, once it is taken.
fn held_past_the_limit(dir: &std::path::Path) -> (Store, std::sync::mpsc::Receiver<usize>) {
    let config = StoreConfig {
        cache_capacity: 1 << 20,
        ..StoreConfig::default()
    };
    assert_eq!(config.max_index_lag(), 10_000);
    gancho_core::failpoint::set(HOLD, "pause").unwrap();
    let store = Store::open(dir, &config).unwrap();
    let group = |g: u64| -> Vec<NewEvent> {
        (0..500)
            .map(|i| event("open", 1_000, "a@x", g * 1000 + i))
            .collect()
    };
    // The indexer holds its first batch; the writer takes groups up to the limit.
    for g in 0..21 {
        assert_eq!(append(&store, group(g)).stored.len(), 500);
    }
    assert!(gancho_core::failpoint::wait_hits(
        HOLD,
        1,
        Duration::from_secs(30)
    ));
    assert_eq!(store.status().indexed, 0);
    // 10,500 behind: the next group waits for the indexer.
    let (tx, rx) = std::sync::mpsc::channel();
    let appender = store.appender();
    std::thread::spawn(move || {
        let report = appender.append_blocking(Submission {
            events: group(21),
            rejected: vec![],
        });
        tx.send(report.unwrap().stored.len()).unwrap();
    });
    assert!(
        rx.recv_timeout(Duration::from_millis(500)).is_err(),
        "a group was taken past the limit"
    );
    (store, rx)
}

#[test]
fn past_its_lag_limit_ingest_waits_for_the_indexer_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // In a process of its own: the fail point that holds the indexer is global.
    gancho_testkit::crash::run_in_child(
        module_path!(),
        "past_its_lag_limit_ingest_waits_for_the_indexer_and_loses_nothing",
        dir.path(),
        |dir| {
            let (store, stored) = held_past_the_limit(dir);
            gancho_core::failpoint::release(HOLD);
            assert_eq!(stored.recv_timeout(Duration::from_secs(30)).unwrap(), 500);
            assert!(store.wait_indexed(11_000, Duration::from_secs(30)));
            assert_eq!(store.last_seq().unwrap(), 11_000);
            store.shutdown().unwrap();
        },
    );
}

#[test]
fn a_shutdown_does_not_wait_for_an_indexer_that_holds_ingest_back() {
    let dir = tempfile::tempdir().unwrap();
    gancho_testkit::crash::run_in_child(
        module_path!(),
        "a_shutdown_does_not_wait_for_an_indexer_that_holds_ingest_back",
        dir.path(),
        |dir| {
            let (store, stored) = held_past_the_limit(dir);
            // Closing: the waiting group is written (the indexer still held), then the writer
            // stops; the indexer is let go only once that is seen.
            let closing = {
                let store = store.clone();
                std::thread::spawn(move || store.shutdown())
            };
            assert_eq!(stored.recv_timeout(Duration::from_secs(10)).unwrap(), 500);
            assert_eq!(store.status().indexed, 0);
            gancho_core::failpoint::release(HOLD);
            closing.join().unwrap().unwrap();
            drop(store);
            let store = open(dir);
            assert_eq!(store.last_seq().unwrap(), 11_000);
            store.shutdown().unwrap();
        },
    );
}

#[test]
fn an_indexer_that_does_not_move_is_not_waited_for_again_until_it_moves() {
    let dir = tempfile::tempdir().unwrap();
    gancho_testkit::crash::run_in_child(
        module_path!(),
        "an_indexer_that_does_not_move_is_not_waited_for_again_until_it_moves",
        dir.path(),
        |dir| {
            let (store, stored) = held_past_the_limit(dir);
            // The indexer stays held: after the stall limit the group is taken anyway.
            assert_eq!(stored.recv_timeout(Duration::from_secs(30)).unwrap(), 500);
            assert_eq!(store.status().indexed, 0);
            // And the next ones without a wait of their own while it has not moved.
            let started = std::time::Instant::now();
            for g in 30..33 {
                let events = (0..500)
                    .map(|i| event("open", 1_000, "c@x", g * 1000 + i))
                    .collect();
                assert_eq!(append(&store, events).stored.len(), 500);
            }
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{:?}",
                started.elapsed()
            );
            gancho_core::failpoint::release(HOLD);
            assert!(store.wait_indexed(12_500, Duration::from_secs(30)));
            store.shutdown().unwrap();
        },
    );
}
