use chrono::{TimeZone, Utc};
use gancho_core::{EventId, Keys, NewEvent};
use serde_json::json;
use serde_json::value::RawValue;

use super::*;
use crate::kv::Db;

fn raw(value: serde_json::Value) -> Box<RawValue> {
    RawValue::from_string(value.to_string()).unwrap()
}

pub(crate) fn event(kind: &str, at: i64, email: &str, n: u64) -> NewEvent {
    let data = raw(json!({"event": kind, "time": at, "email": email, "n": n}));
    let mut keys = Keys::new();
    keys.insert("email".to_owned(), email.to_owned());
    NewEvent {
        id: EventId::from_content(data.get()),
        source: "mailjet".to_owned(),
        kind: kind.to_owned(),
        time: Utc.timestamp_opt(at, 0).unwrap(),
        received: Utc.timestamp_opt(at + 1, 0).unwrap(),
        keys,
        data,
    }
}

/// Appends events (no rejected items) and waits until they are durable.
pub(crate) fn append(store: &Store, events: Vec<NewEvent>) -> AppendReport {
    store
        .appender()
        .append_blocking(Submission {
            events,
            rejected: vec![],
        })
        .unwrap()
}

pub(crate) fn open(dir: &std::path::Path) -> Store {
    Store::open(dir, &StoreConfig::default()).unwrap()
}

#[test]
fn appended_events_get_increasing_seqs_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let report = append(
        &store,
        vec![event("sent", 100, "a@x", 1), event("open", 200, "a@x", 2)],
    );
    assert_eq!(report.stored, vec![1, 2]);
    store.shutdown().unwrap();
    drop(store);

    let store = open(dir.path());
    assert_eq!(store.last_seq().unwrap(), 2);
    let got = store.get(2).unwrap().unwrap();
    assert_eq!(got.kind, "open");
    let report = append(&store, vec![event("click", 300, "a@x", 3)]);
    assert_eq!(report.stored, vec![3]);
}

#[test]
fn duplicates_are_stored_once_within_a_batch_and_across_batches() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let appender = store.appender();
    let e = event("open", 200, "a@x", 1);
    let report = appender
        .append_blocking(Submission {
            events: vec![e.clone(), e.clone()],
            rejected: vec![],
        })
        .unwrap();
    assert_eq!(report.stored, vec![1]);
    assert_eq!(report.duplicates, vec![1]);
    let report = appender
        .append_blocking(Submission {
            events: vec![e],
            rejected: vec![],
        })
        .unwrap();
    assert!(report.stored.is_empty());
    assert_eq!(report.duplicates, vec![1]);
    assert_eq!(store.last_seq().unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_of_the_same_event_store_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut tasks = Vec::new();
    for i in 0..64u64 {
        let appender = store.appender();
        tasks.push(tokio::spawn(async move {
            appender
                .append(Submission {
                    events: vec![
                        event("open", 200, "same@x", 0),
                        event("open", 200, "a@x", i + 1),
                    ],
                    rejected: vec![],
                })
                .await
                .unwrap()
        }));
    }
    let mut stored = 0;
    for t in tasks {
        stored += t.await.unwrap().stored.len();
    }
    assert_eq!(stored, 65);
    assert_eq!(store.last_seq().unwrap(), 65);
}

#[test]
fn query_by_key_and_since_uses_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut events = Vec::new();
    for i in 0..50i64 {
        let email = if i % 2 == 0 { "even@x" } else { "odd@x" };
        events.push(event("open", 1_000 + i * 60, email, i as u64));
        events.push(event("sent", 1_000 + i * 60, email, i as u64));
    }
    store
        .appender()
        .append_blocking(Submission {
            events,
            rejected: vec![],
        })
        .unwrap();
    let q = EventQuery {
        source: Some("mailjet".into()),
        kind: Some("open".into()),
        key: Some(KeyFilter {
            name: "email".into(),
            value: "even@x".into(),
        }),
        since: Some(Utc.timestamp_opt(1_000 + 40 * 60, 0).unwrap()),
        until: None,
        limit: 0,
    };
    let got = store.events(&q).unwrap();
    // i in 40..50, even: 40, 42, 44, 46, 48.
    assert_eq!(got.len(), 5);
    assert!(
        got.iter()
            .all(|e| e.kind == "open" && e.keys["email"] == "even@x")
    );
    assert!(got.windows(2).all(|w| w[0].seq < w[1].seq));

    let limited = store
        .events(&EventQuery {
            limit: 2,
            ..q.clone()
        })
        .unwrap();
    assert_eq!(limited, got[3..].to_vec());

    // The same query answered by walking the log agrees with the index.
    let by_log = store
        .events(&EventQuery {
            source: None,
            ..q.clone()
        })
        .unwrap();
    assert_eq!(by_log, got);

    // An end to the time range: the index and the log agree on it too.
    let until = EventQuery {
        until: Some(Utc.timestamp_opt(1_000 + 44 * 60, 0).unwrap()),
        ..q.clone()
    };
    let bounded = store.events(&until).unwrap();
    assert_eq!(
        bounded,
        got[..3].to_vec(),
        "40, 42 and 44: 44 is at the bound"
    );
    let bounded_by_log = store
        .events(&EventQuery {
            source: None,
            ..until
        })
        .unwrap();
    assert_eq!(bounded_by_log, bounded);
}

#[test]
fn quarantine_keeps_item_and_reason_with_the_events_of_the_same_submission() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let report = store
        .appender()
        .append_blocking(Submission {
            events: vec![event("open", 1, "a@x", 1)],
            rejected: vec![Rejected {
                source: "mailjet".into(),
                received: Utc.timestamp_opt(5, 0).unwrap(),
                reason: "missing field `event`".into(),
                item: raw(json!({"time": 1})),
            }],
        })
        .unwrap();
    assert_eq!(report.stored, vec![1]);
    assert_eq!(report.quarantined, vec![1]);
    store.shutdown().unwrap();
    drop(store);
    let store = open(dir.path());
    let items = store.quarantine(0).unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].reason, "missing field `event`");
    assert_eq!(items[0].item.get(), r#"{"time":1}"#);
}

#[test]
fn appends_after_shutdown_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.shutdown().unwrap();
    let err = store
        .appender()
        .append_blocking(Submission::default())
        .unwrap_err();
    assert!(matches!(err, StoreError::Closed));
}

/// Removes the index database, as if the process had died before the indexer ran.
fn forget_indexes(dir: &std::path::Path) {
    std::fs::remove_dir_all(dir.join("indexes")).unwrap();
}

#[test]
fn dedup_holds_before_during_and_after_indexing() {
    let dir = tempfile::tempdir().unwrap();
    // In a process of its own: the fail point that holds the indexer is global.
    gancho_testkit::crash::run_in_child(
        module_path!(),
        "dedup_holds_before_during_and_after_indexing",
        dir.path(),
        |dir| {
            let point = "index.batch.before_publish";
            gancho_core::failpoint::set(point, "pause").unwrap();
            let store = open(dir);
            let appender = store.appender();
            let e = event("open", 200, "a@x", 1);
            let append = |e: &NewEvent| {
                appender
                    .append_blocking(Submission {
                        events: vec![e.clone()],
                        rejected: vec![],
                    })
                    .unwrap()
            };
            let first = append(&e);
            assert_eq!(first.stored, vec![1]);
            // The indexer holds the batch with the event: read, not yet in the indexes.
            assert!(gancho_core::failpoint::wait_hits(
                point,
                1,
                Duration::from_secs(30)
            ));
            assert_eq!(store.status().indexed, 0);
            assert_eq!(append(&e).duplicates, first.stored, "during indexing");
            gancho_core::failpoint::release(point);
            assert!(store.wait_indexed(1, Duration::from_secs(30)));
            assert_eq!(append(&e).duplicates, first.stored, "after indexing");
            assert_eq!(store.status().indexed, 1);
            store.shutdown().unwrap();
        },
    );
}

#[test]
fn events_the_indexer_had_not_reached_at_open_are_duplicates_and_new_ones_are_not() {
    let dir = tempfile::tempdir().unwrap();
    // In a process of its own: the fail point that holds the indexer is global.
    gancho_testkit::crash::run_in_child(
        module_path!(),
        "events_the_indexer_had_not_reached_at_open_are_duplicates_and_new_ones_are_not",
        dir.path(),
        |dir| {
            let events = |from: u64| -> Vec<NewEvent> {
                (from..from + 2000)
                    .map(|i| event("open", 1_000 + i as i64, &format!("u{i}@x"), i))
                    .collect()
            };
            {
                let store = open(dir);
                append(&store, events(0));
                store.shutdown().unwrap();
            }
            forget_indexes(dir);
            // The indexer is held before it publishes anything: every event stored before the
            // open is in the writer's backlog only.
            gancho_core::failpoint::set(HOLD, "pause").unwrap();
            let store = open(dir);
            let again = append(&store, events(0));
            assert!(again.stored.is_empty());
            assert_eq!(again.duplicates, (1..=2000).collect::<Vec<u64>>());
            let new = append(&store, events(2000));
            assert_eq!(new.stored, (2001..=4000).collect::<Vec<u64>>());
            assert_eq!(store.status().indexed, 0);
            gancho_core::failpoint::release(HOLD);
            assert!(store.wait_indexed(4000, Duration::from_secs(30)));
            assert_eq!(append(&store, events(1000)).duplicates.len(), 2000);
            store.shutdown().unwrap();
        },
    );
}

#[test]
fn a_restart_before_indexing_loses_neither_dedup_nor_query_answers() {
    let dir = tempfile::tempdir().unwrap();
    let events: Vec<_> = (0..300)
        .map(|i| event("open", 1_000 + i, &format!("u{}@x", i % 7), i as u64))
        .collect();
    {
        let store = open(dir.path());
        append(&store, events.clone());
        store.shutdown().unwrap();
    }
    forget_indexes(dir.path());
    let store = open(dir.path());
    // Whatever the indexer has done by now, queries see every event.
    let q = EventQuery {
        source: Some("mailjet".into()),
        kind: Some("open".into()),
        key: Some(KeyFilter {
            name: "email".into(),
            value: "u3@x".into(),
        }),
        since: None,
        until: None,
        limit: 0,
    };
    let want: Vec<u64> = (0..300u64).filter(|i| i % 7 == 3).map(|i| i + 1).collect();
    let got: Vec<u64> = store.events(&q).unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(got, want);
    // The pending ids were rebuilt from the log: every event is a duplicate now.
    let report = append(&store, events.clone());
    assert!(report.stored.is_empty());
    assert_eq!(report.duplicates.len(), 300);
    // And the indexer rebuilds the indexes.
    assert!(store.wait_indexed(300, std::time::Duration::from_secs(30)));
    let got: Vec<u64> = store.events(&q).unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(got, want);
}

#[test]
fn events_spread_over_many_blocks_are_each_readable() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    // About 1 KiB each: a group of 500 spans several 48 KiB blocks.
    let events: Vec<_> = (0..500u64)
        .map(|i| {
            let mut e = event("sent", 5_000 + i as i64, "big@x", i);
            e.data = raw(json!({"n": i, "padding": "x".repeat(1000)}));
            e.id = EventId::from_content(e.data.get());
            e
        })
        .collect();
    let report = store
        .appender()
        .append_blocking(Submission {
            events,
            rejected: vec![],
        })
        .unwrap();
    assert_eq!(report.stored, (1..=500).collect::<Vec<_>>());
    for seq in [1, 2, 47, 48, 49, 250, 499, 500] {
        let e = store.get(seq).unwrap().unwrap();
        assert_eq!(e.seq, seq);
        assert_eq!(e.data_value().unwrap()["n"], seq - 1);
    }
    assert!(store.get(501).unwrap().is_none());
    assert!(store.get(0).unwrap().is_none());
    store.shutdown().unwrap();
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.last_seq().unwrap(), 500);
}

#[test]
fn a_group_cut_short_by_a_crash_is_discarded_whole() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        append(&store, vec![event("open", 1, "a@x", 1)]);
        store.shutdown().unwrap();
    }
    // What a crash in the middle of the next group leaves: a block and a quarantined item
    // written, the commit record not.
    {
        let db = Db::open(&dir.path().join("log"), 64 << 20).unwrap();
        let tree = db.tree("events").unwrap();
        let record = codec::encode_event(&event("open", 2, "b@x", 2)).unwrap();
        tree.insert(codec::log_key(2), codec::encode_block(&[record]))
            .unwrap();
        tree.insert(codec::quarantine_key(1), &b"{}"[..]).unwrap();
        db.flush().unwrap();
    }
    let store = open(dir.path());
    assert_eq!(store.last_seq().unwrap(), 1);
    assert!(store.quarantine(0).unwrap().is_empty());
    let report = append(&store, vec![event("open", 2, "b@x", 2)]);
    assert_eq!(report.stored, vec![2]);
}

#[test]
fn limit_keeps_the_newest_by_seq_even_when_event_times_run_backwards() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    // A late delivery: seq 2 happened before seq 1.
    append(
        &store,
        vec![
            event("open", 10_000, "a@x", 1),
            event("open", 9_000, "a@x", 2),
        ],
    );
    let q = EventQuery {
        source: Some("mailjet".into()),
        kind: Some("open".into()),
        key: None,
        since: None,
        until: None,
        limit: 1,
    };
    let before: Vec<u64> = store.events(&q).unwrap().iter().map(|e| e.seq).collect();
    assert!(store.wait_indexed(2, std::time::Duration::from_secs(10)));
    let after: Vec<u64> = store.events(&q).unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(before, vec![2]);
    assert_eq!(after, vec![2]);
}

#[test]
fn windows_select_by_type_keys_time_and_seq_and_count_without_listing() {
    let dir = tempfile::tempdir().unwrap();
    // In a process of its own: the fail point that holds the indexer is global.
    gancho_testkit::crash::run_in_child(
        module_path!(),
        "windows_select_by_type_keys_time_and_seq_and_count_without_listing",
        dir.path(),
        windows_in,
    );
}

const HOLD: &str = "index.batch.before_publish";

fn windows_in(dir: &std::path::Path) {
    gancho_core::failpoint::set(HOLD, "pause").unwrap();
    let store = open(dir);
    let mut events: Vec<NewEvent> = (0..10)
        .map(|i| {
            event(
                "open",
                1_000 + i,
                if i % 2 == 0 { "a@x.io" } else { "b@x.io" },
                0,
            )
        })
        .collect();
    events.push(event("click", 1_005, "a@x.io", 0));
    append(&store, events);
    let window = |keys: &[(&str, &str)], from: i64, to: i64, max_seq: u64| Window {
        source: "mailjet".to_owned(),
        kind: "open".to_owned(),
        keys: keys
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        from_ms: from * 1000,
        to_ms: to * 1000,
        max_seq,
    };
    // Before and after indexing: the unindexed tail is read from the log, the answer is equal.
    for indexed in [false, true] {
        if indexed {
            gancho_core::failpoint::release(HOLD);
            assert!(store.wait_indexed(11, Duration::from_secs(30)));
        } else {
            // The indexer holds the batch: every answer comes from the log's tail.
            assert!(gancho_core::failpoint::wait_hits(
                HOLD,
                1,
                Duration::from_secs(30)
            ));
            assert_eq!(store.status().indexed, 0);
        }
        let all = window(&[], 1_000, 1_009, 100);
        assert_eq!(store.count(&all, usize::MAX).unwrap(), 10);
        assert_eq!(store.count(&all, 3).unwrap(), 3);
        // Both ends included.
        let a = window(&[("email", "a@x.io")], 1_002, 1_008, 100);
        let seqs: Vec<u64> = store
            .window(&a, Order::Oldest, 10)
            .unwrap()
            .iter()
            .map(|(_, seq)| *seq)
            .collect();
        assert_eq!(seqs, [3, 5, 7, 9]);
        assert_eq!(store.count(&a, usize::MAX).unwrap(), 4);
        let newest = store.window(&a, Order::Newest, 1).unwrap();
        assert_eq!(newest, [(1_008_000, 9)]);
        // Only the history up to a seq.
        assert_eq!(store.count(&window(&[], 1_000, 1_009, 4), 100).unwrap(), 4);
        // Two keys must both match; an empty range matches nothing.
        let none = window(&[("email", "a@x.io"), ("email", "b@x.io")], 0, 2_000, 100);
        assert_eq!(store.count(&none, 100).unwrap(), 0);
        assert_eq!(
            store.count(&window(&[], 1_009, 1_000, 100), 100).unwrap(),
            0
        );
    }
}

#[test]
fn readers_see_no_event_before_it_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    // Alone in a process: it holds the flusher with a (global) fail point.
    gancho_testkit::crash::run_in_child(
        module_path!(),
        "readers_see_no_event_before_it_is_durable",
        dir.path(),
        |dir| {
            let point = "log.fdatasync";
            let store = open(dir);
            append(&store, vec![event("open", 100, "a@x", 1)]);
            gancho_core::failpoint::set(point, "pause").unwrap();
            // Written and flushed, its fdatasync held: not durable, so not acknowledged.
            let appender = store.appender();
            let pending = std::thread::spawn(move || {
                appender.append_blocking(Submission {
                    events: vec![event("open", 200, "b@x", 2)],
                    rejected: vec![],
                })
            });
            assert!(gancho_core::failpoint::wait_hits(
                point,
                1,
                Duration::from_secs(30)
            ));
            assert_eq!(store.status().durable, 1);
            assert!(store.get(2).unwrap().is_none(), "read before it is durable");
            let all = EventQuery {
                source: None,
                kind: None,
                key: None,
                since: None,
                until: None,
                limit: 0,
            };
            assert_eq!(store.events(&all).unwrap().len(), 1);
            assert_eq!(store.read_range(1, 10).unwrap().len(), 1);
            gancho_core::failpoint::release(point);
            assert_eq!(pending.join().unwrap().unwrap().stored, vec![2]);
            assert_eq!(store.events(&all).unwrap().len(), 2);
            store.shutdown().unwrap();
        },
    );
}

#[test]
fn a_requests_invalid_items_make_one_quarantine_record_with_the_first_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let rejected = |n: usize, tag: &str| -> Vec<Rejected> {
        (0..n)
            .map(|i| Rejected {
                source: "mailjet".into(),
                received: Utc.timestamp_opt(5, 0).unwrap(),
                reason: format!("{tag} item {i} is bad"),
                item: raw(json!({"n": i})),
            })
            .collect()
    };
    let report = store
        .appender()
        .append_blocking(Submission {
            events: vec![event("open", 1, "a@x", 1)],
            rejected: rejected(150, "first"),
        })
        .unwrap();
    assert_eq!(report.quarantined.len(), 150);
    let second = store
        .appender()
        .append_blocking(Submission {
            events: vec![],
            rejected: rejected(2, "second"),
        })
        .unwrap();
    assert_eq!(second.quarantined, vec![2, 2]);
    store.shutdown().unwrap();
    drop(store);
    // Two values in the log, not 152.
    {
        let db = Db::open(&dir.path().join("log"), 8 << 20).unwrap();
        let tree = db.tree("events").unwrap();
        assert_eq!(tree.scan_prefix([codec::QUARANTINE]).count(), 2);
    }
    let store = open(dir.path());
    let all = store.quarantine(0).unwrap();
    assert_eq!(all.len(), 152);
    assert_eq!(all[0].reason, "first item 0 is bad");
    assert_eq!(all[99].reason, "first item 99 is bad");
    assert!(
        all[100]
            .reason
            .contains("not kept: item 101 of the request's 150"),
        "{}",
        all[100].reason
    );
    assert_eq!(all[149].item.get(), r#"{"n":149}"#);
    assert_eq!(
        (all[150].id, all[151].reason.as_str()),
        (2, "second item 1 is bad")
    );
    // The newest, across records.
    let newest = store.quarantine(3).unwrap();
    assert_eq!(newest.len(), 3);
    assert_eq!(newest[0].item.get(), r#"{"n":149}"#);
    assert_eq!(newest[2].reason, "second item 1 is bad");
}

#[test]
fn past_its_cap_the_quarantine_drops_its_oldest_records_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        quarantine_max_bytes: 20_000,
        ..StoreConfig::default()
    };
    let store = Store::open(dir.path(), &config).unwrap();
    // Ten requests of 40 invalid items (about 4 KB each).
    for r in 0..10 {
        let rejected = (0..40)
            .map(|i| Rejected {
                source: "mailjet".into(),
                received: Utc.timestamp_opt(5, 0).unwrap(),
                reason: "bad".into(),
                item: raw(json!({"request": r, "n": i, "pad": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"})),
            })
            .collect();
        store
            .appender()
            .append_blocking(Submission {
                events: vec![],
                rejected,
            })
            .unwrap();
    }
    let kept = store.quarantine(0).unwrap();
    let dropped = store.quarantine_dropped().unwrap();
    assert!(dropped >= 5, "{dropped} dropped");
    assert_eq!(kept.len() as u64, (10 - dropped) * 40);
    // The newest stay.
    assert!(kept.last().unwrap().item.get().contains(r#""request":9"#));
    store.shutdown().unwrap();
    drop(store);
    // After a restart the cap still holds, and so does the count.
    let store = Store::open(dir.path(), &config).unwrap();
    assert_eq!(store.quarantine_dropped().unwrap(), dropped);
    assert_eq!(store.quarantine(0).unwrap().len(), kept.len());
}
