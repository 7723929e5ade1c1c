//! Retention: what a prune deletes, what it keeps, and that the space is used again.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use serde_json::json;

use super::tests::{append, event, open};
use super::*;

const DAY: i64 = 86_400;

fn all_of(store: &Store, kind: &str) -> Vec<u64> {
    let query = EventQuery {
        source: Some("mailjet".into()),
        kind: Some(kind.into()),
        ..EventQuery::default()
    };
    store
        .events(&query)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect()
}

fn window_count(store: &Store, kind: &str, email: &str) -> usize {
    let window = Window {
        source: "mailjet".into(),
        kind: kind.into(),
        keys: vec![("email".into(), email.into())],
        from_ms: i64::MIN,
        to_ms: i64::MAX,
        max_seq: u64::MAX,
    };
    store.count(&window, usize::MAX).unwrap()
}

pub(crate) fn request(before_s: i64, processed: u64, keep: &[u64]) -> PruneRequest {
    PruneRequest {
        events_before_ms: Some(before_s * 1000),
        processed,
        keep: keep.iter().copied().collect::<HashSet<u64>>(),
        quarantine_before_ms: None,
    }
}

#[test]
fn a_prune_deletes_old_processed_events_from_reads_indexes_and_dedup_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    // Seqs 1-4 are 40 days old, 5 is recent; 6 is old but not processed yet.
    let old: Vec<_> = (0..4).map(|n| event("open", 10 * DAY, "a@x", n)).collect();
    append(&store, old.clone());
    append(&store, vec![event("open", 50 * DAY, "a@x", 10)]);
    append(&store, vec![event("open", 10 * DAY, "a@x", 11)]);
    assert!(store.wait_indexed(6, Duration::from_secs(10)));

    // Seq 2 is referenced by a pending timer.
    let report = store.prune(&request(20 * DAY, 5, &[2])).unwrap();
    assert_eq!((report.events, report.kept), (3, 1), "{report:?}");
    let check = |store: &Store| {
        for seq in [1, 3, 4] {
            assert!(store.get(seq).unwrap().is_none(), "{seq} is still readable");
        }
        for seq in [2, 5, 6] {
            assert!(store.get(seq).unwrap().is_some(), "{seq} went");
        }
        assert_eq!(all_of(store, "open"), vec![2, 5, 6]);
        assert_eq!(window_count(store, "open", "a@x"), 3);
        let walked = store.events(&EventQuery::default()).unwrap();
        assert_eq!(
            walked.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![2, 5, 6]
        );
    };
    check(&store);
    assert_eq!(store.pruned(), 3);
    store.shutdown().unwrap();
    drop(store);
    let store = open(dir.path());
    check(&store);

    // A pruned event's id is forgotten: posted again, it is a new event; a kept one is not.
    let again = append(&store, vec![old[0].clone(), old[1].clone()]);
    assert_eq!(again.stored, vec![7], "{again:?}");
    assert_eq!(again.duplicates, vec![2]);
    // Pruning again removes nothing more; the unprocessed one goes once processed.
    assert_eq!(store.prune(&request(20 * DAY, 6, &[2])).unwrap().events, 1);
    assert!(store.get(6).unwrap().is_none());
}

#[test]
fn pruning_every_event_never_gives_a_seq_twice() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for n in 0..3 {
        append(&store, vec![event("open", DAY, "a@x", n)]);
    }
    assert!(store.wait_indexed(3, Duration::from_secs(10)));
    let report = store.prune(&request(2 * DAY, 3, &[])).unwrap();
    assert_eq!((report.events, report.blocks_deleted), (3, 3), "{report:?}");
    assert_eq!(store.last_seq().unwrap(), 3);
    store.shutdown().unwrap();
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.last_seq().unwrap(), 3);
    let report = append(&store, vec![event("open", DAY, "a@x", 9)]);
    assert_eq!(report.stored, vec![4]);
    assert_eq!(all_of(&store, "open"), vec![4]);
}

#[test]
fn quarantine_records_past_their_retention_go_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for (at, tag) in [(100, "old"), (200, "older than the cutoff"), (900, "new")] {
        store
            .appender()
            .append_blocking(Submission {
                events: vec![],
                rejected: vec![Rejected {
                    source: "mailjet".into(),
                    received: Utc.timestamp_opt(at, 0).unwrap(),
                    reason: tag.into(),
                    item: serde_json::value::RawValue::from_string(json!({"at": at}).to_string())
                        .unwrap(),
                }],
            })
            .unwrap();
    }
    let report = store
        .prune(&PruneRequest {
            quarantine_before_ms: Some(500_000),
            ..PruneRequest::default()
        })
        .unwrap();
    assert_eq!(report.quarantine_records, 2);
    let left = store.quarantine(0).unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].reason, "new");
}

/// Bytes of the files under `dir`.
fn folder_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        total += match meta.is_dir() {
            true => folder_bytes(&entry.path()),
            false => meta.len(),
        };
    }
    total
}

#[test]
fn the_space_of_pruned_events_is_used_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let round = |store: &Store, round: u64| {
        // 100,000 events in groups of 200, each 40 days older than the last round's prune.
        for group in 0..500 {
            let events = (0..200)
                .map(|i| {
                    let n = round * 1_000_000 + group * 1000 + i;
                    event("open", DAY, &format!("u{}@x", n % 5000), n)
                })
                .collect();
            append(store, events);
        }
        let last = store.last_seq().unwrap();
        assert!(store.wait_indexed(last, Duration::from_secs(60)));
        last
    };
    let last = round(&store, 1);
    // The index runs are written again without the pruned entries, in the background.
    let rewritten = |store: &Store| {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while store.index_rewrites_pending() {
            assert!(
                std::time::Instant::now() < deadline,
                "the index runs were not rewritten"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let report = store.prune(&request(40 * DAY, last, &[])).unwrap();
    assert_eq!(report.events, 100_000);
    rewritten(&store);
    store.shutdown().unwrap();
    drop(store);
    let before = folder_bytes(dir.path());
    let segments_before = folder_bytes(&dir.path().join("log/segments"));
    let (log, index) = (
        folder_bytes(&dir.path().join("log")),
        folder_bytes(&dir.path().join("indexes")),
    );
    eprintln!("log {log}, indexes {index}");
    let store = open(dir.path());
    let last = round(&store, 2);
    store.prune(&request(40 * DAY, last, &[])).unwrap();
    rewritten(&store);
    store.shutdown().unwrap();
    drop(store);
    let after = folder_bytes(dir.path());
    let segments_after = folder_bytes(&dir.path().join("log/segments"));
    let (log, index) = (
        folder_bytes(&dir.path().join("log")),
        folder_bytes(&dir.path().join("indexes")),
    );
    eprintln!("log {log}, indexes {index}");
    eprintln!("after the first prune: {before} bytes; after a second round: {after}");
    // The log's blocks are in segment files: those of the first round went once pruned (at
    // the reopen: the newest segment is the writer's), so one round's worth is left.
    assert!(
        segments_after <= segments_before + segments_before / 10,
        "the log's segments grew from {segments_before} to {segments_after} bytes"
    );
    // sled grows a database a 4 MiB segment at a time, and which round tips the log or the
    // indexes' records into one more segment varies from run to run: up to two segments more
    // (measured: +4 MiB in most runs, +8 MiB in one of five) is not growth.
    let (sled_before, sled_after) = (before - segments_before, after - segments_after);
    assert!(
        sled_after <= sled_before + 9 * 1024 * 1024,
        "the databases grew from {sled_before} to {sled_after} bytes"
    );
}

/// A store of 300 events a day old, seqs 1-300, indexed.
fn store_of_old_events(dir: &std::path::Path) -> Store {
    let store = open(dir);
    for group in 0..6 {
        let events = (0..50)
            .map(|i| event("open", DAY, &format!("u{i}@x"), group * 50 + i))
            .collect();
        append(&store, events);
    }
    assert!(store.wait_indexed(300, Duration::from_secs(10)));
    store
}

/// After a crash at `point` in a prune of seqs 1-200, the events are all there or all gone
/// for readers, and a prune finishes the job.
fn crash_in_a_prune(test: &str, point: &str, gone_after_crash: bool) {
    let dir = tempfile::tempdir().unwrap();
    gancho_testkit::crash::crash_in_child(module_path!(), test, dir.path(), |dir| {
        let store = store_of_old_events(dir);
        gancho_core::failpoint::set(point, "crash").unwrap();
        store.prune(&request(2 * DAY, 200, &[])).unwrap();
    });
    let store = open(dir.path());
    let left = |store: &Store| all_of(store, "open").len();
    assert_eq!(left(&store), if gone_after_crash { 100 } else { 300 });
    for seq in [1, 200] {
        assert_eq!(store.get(seq).unwrap().is_none(), gone_after_crash, "{seq}");
    }
    let report = store.prune(&request(2 * DAY, 200, &[])).unwrap();
    assert_eq!(report.events, if gone_after_crash { 0 } else { 200 });
    assert!(report.blocks_deleted > 0, "{report:?}");
    assert_eq!(left(&store), 100);
    assert_eq!(store.get(201).unwrap().map(|e| e.seq), Some(201));
    let walked = store.events(&EventQuery::default()).unwrap();
    assert_eq!(walked.first().map(|e| e.seq), Some(201));
}

#[test]
fn crash_before_a_prunes_set_is_durable_prunes_nothing() {
    crash_in_a_prune(
        "crash_before_a_prunes_set_is_durable_prunes_nothing",
        "prune.before_set",
        false,
    );
}

#[test]
fn crash_between_a_prunes_set_and_its_blocks_leaves_the_events_gone() {
    crash_in_a_prune(
        "crash_between_a_prunes_set_and_its_blocks_leaves_the_events_gone",
        "prune.before_blocks",
        true,
    );
}

#[test]
fn indexes_rebuilt_after_a_prune_index_what_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_of_old_events(dir.path());
    // Whole blocks (of 50 events here) are walked: up to the last one processed entirely.
    let report = store.prune(&request(2 * DAY, 170, &[50])).unwrap();
    assert_eq!(report.events, 149);
    store.shutdown().unwrap();
    drop(store);
    // The index database lost, as an operator may delete it: rebuilt from the log at open.
    std::fs::remove_dir_all(dir.path().join("indexes")).unwrap();
    let store = open(dir.path());
    assert!(
        store.wait_indexed(300, Duration::from_secs(30)),
        "indexing stopped at the pruned events: {:?}",
        store.status()
    );
    let mut left = vec![50];
    left.extend(151..=300);
    assert_eq!(all_of(&store, "open"), left);
}

#[test]
fn an_id_posted_again_after_its_event_was_pruned_is_then_a_duplicate_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let old = event("open", DAY, "a@x", 1);
    append(&store, vec![old.clone()]);
    assert!(store.wait_indexed(1, Duration::from_secs(10)));
    // Pruned while its index entries are still in the memory tier (no checkpoint yet).
    assert_eq!(store.prune(&request(2 * DAY, 1, &[])).unwrap().events, 1);
    assert_eq!(append(&store, vec![old.clone()]).stored, vec![2]);
    assert!(store.wait_indexed(2, Duration::from_secs(10)));
    for round in 0..2 {
        let again = append(&store, vec![old.clone()]);
        assert!(again.stored.is_empty(), "round {round}: {again:?}");
        assert_eq!(again.duplicates, vec![2], "round {round}");
        // After the memory runs are written out and the store reopened, the same.
        store.shutdown().unwrap();
        drop(store);
        store = open(dir.path());
    }
}
