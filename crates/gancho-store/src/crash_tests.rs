//! Crash points of the store's protocols (`docs/architecture.md`, gancho-store's invariants):
//! each test runs the writes in a child process that a fail point stops (`crash`: every write
//! before the point on disk, none after it), then reopens the store and checks the invariant.

use std::path::Path;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use gancho_core::failpoint;
use gancho_core::{EventId, Keys, NewEvent};
use gancho_testkit::crash::crash_in_child;
use serde_json::value::RawValue;

use super::*;
use crate::tests::{append, open};

fn event(n: u64) -> NewEvent {
    let kind = if n.is_multiple_of(3) { "sent" } else { "open" };
    let email = format!("r{}@x", n % 7);
    let text = format!(r#"{{"event":"{kind}","n":{n},"email":"{email}"}}"#);
    let data = RawValue::from_string(text).unwrap();
    let mut keys = Keys::new();
    keys.insert("email".to_owned(), email);
    NewEvent {
        id: EventId::from_content(data.get()),
        source: "mailjet".to_owned(),
        kind: kind.to_owned(),
        time: Utc.timestamp_opt(1_700_000_000 + n as i64, 0).unwrap(),
        received: Utc.timestamp_opt(1_700_000_000 + n as i64, 0).unwrap(),
        keys,
        data,
    }
}

fn events(range: std::ops::Range<u64>) -> Vec<NewEvent> {
    range.map(event).collect()
}

/// Appends `events` in groups of `group` (each acknowledged before the next).
fn append_groups(store: &Store, events: Vec<NewEvent>, group: usize) {
    let mut events = events.into_iter().peekable();
    while events.peek().is_some() {
        append(store, events.by_ref().take(group).collect());
    }
}

fn seqs(events: &[gancho_core::Event]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

/// The store in `dir` holds exactly `expected` (seqs 1..), each found once by the indexes
/// once indexing has caught up, and each refused as a duplicate; and a restart keeps it so.
fn check_log_and_indexes(dir: &Path, expected: &[NewEvent]) {
    assert_open_deletes_orphans(dir);
    for _ in 0..2 {
        let store = open(dir);
        let n = expected.len() as u64;
        assert_eq!(
            store.last_seq().unwrap(),
            n,
            "acknowledged events are all there"
        );
        for (i, e) in expected.iter().enumerate() {
            let got = store.get(i as u64 + 1).unwrap().unwrap();
            assert_eq!(
                got.id,
                e.id,
                "seq {} is the event acknowledged with it",
                i + 1
            );
        }
        assert!(
            store.wait_indexed(n, Duration::from_secs(30)),
            "the indexes did not catch up"
        );
        assert_eq!(store.status().indexed, n);
        for kind in ["open", "sent"] {
            let want: Vec<u64> = (1..=n)
                .filter(|&s| expected[s as usize - 1].kind == kind)
                .collect();
            let query = EventQuery {
                source: Some("mailjet".into()),
                kind: Some(kind.into()),
                key: None,
                since: None,
                until: None,
                limit: 0,
            };
            assert_eq!(seqs(&store.events(&query).unwrap()), want, "by type {kind}");
            for r in 0..7 {
                let email = format!("r{r}@x");
                let want: Vec<u64> = want
                    .iter()
                    .copied()
                    .filter(|&s| expected[s as usize - 1].keys["email"] == email)
                    .collect();
                let by_key = EventQuery {
                    key: Some(KeyFilter {
                        name: "email".into(),
                        value: email.clone(),
                    }),
                    ..query.clone()
                };
                assert_eq!(
                    seqs(&store.events(&by_key).unwrap()),
                    want,
                    "{kind} {email}"
                );
            }
        }
        let again = append(&store, expected.to_vec());
        assert!(again.stored.is_empty(), "dedup lost events: {again:?}");
        assert_eq!(again.duplicates.len(), expected.len());
        store.shutdown().unwrap();
    }
}

/// The indexes of the index database `db` alone, as the store opens them (without fsync).
fn open_indexes(
    db: crate::kv::Db,
) -> (
    std::sync::Arc<crate::index::Index>,
    crate::index::IndexWriter,
    u64,
) {
    crate::index::open(
        db,
        crate::keys::KEY_RULE,
        None,
        crate::index::Pacing::DEFAULT.memory_shape(),
        Default::default(),
        1 << 20,
    )
    .unwrap()
}

/// Once the indexes are opened, every run file belongs to a live run (one with a record) and
/// every run has its file: what a crash left of an unfinished or merged-away run is deleted at
/// open.
fn assert_open_deletes_orphans(dir: &Path) {
    let db = crate::kv::Db::open(&dir.join("indexes"), 8 << 20).unwrap();
    let tree = db.tree("index").unwrap();
    let runs_dir = db.path().join(crate::index::RUNS_DIR);
    drop(open_indexes(db));
    // Run records (`index/layout.rs`: R and the run's id) and run files (`ID.run`, in hex).
    let id = |key: &[u8]| u64::from_be_bytes(key[1..9].try_into().unwrap());
    let runs: std::collections::BTreeSet<u64> = tree
        .scan_prefix(b"R")
        .keys()
        .map(|key| id(&key.unwrap()))
        .collect();
    let files: std::collections::BTreeSet<u64> = std::fs::read_dir(&runs_dir)
        .unwrap()
        .map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            u64::from_str_radix(name.strip_suffix(".run").unwrap(), 16).unwrap()
        })
        .collect();
    let orphans: Vec<_> = files.difference(&runs).collect();
    assert!(
        orphans.is_empty(),
        "files of runs without a record: {orphans:?}"
    );
    let missing: Vec<_> = runs.difference(&files).collect();
    assert!(missing.is_empty(), "runs without a file: {missing:?}");
}

#[test]
fn crash_before_a_groups_commit_record_keeps_the_earlier_groups_and_none_of_it() {
    let dir = tempfile::tempdir().unwrap();
    crash_in_child(
        module_path!(),
        "crash_before_a_groups_commit_record_keeps_the_earlier_groups_and_none_of_it",
        dir.path(),
        |dir| {
            let store = open(dir);
            append_groups(&store, events(0..300), 50);
            failpoint::set("log.group.before_commit_record", "crash").unwrap();
            append(&store, events(300..400));
        },
    );
    check_log_and_indexes(dir.path(), &events(0..300));
    // The lost group's seqs are free again: nobody was told them.
    let store = open(dir.path());
    assert_eq!(append(&store, events(300..301)).stored, vec![301]);
}

#[test]
fn crash_after_a_flush_before_its_sync_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    crash_in_child(
        module_path!(),
        "crash_after_a_flush_before_its_sync_loses_nothing_acknowledged",
        dir.path(),
        |dir| {
            let store = open(dir);
            append_groups(&store, events(0..200), 40);
            failpoint::set("log.fdatasync", "crash").unwrap();
            append(&store, events(200..250));
        },
    );
    // The unacknowledged group may or may not be there (it was flushed): all of it or none.
    let store = open(dir.path());
    let last = store.last_seq().unwrap();
    store.shutdown().unwrap();
    drop(store);
    assert!(last == 200 || last == 250, "a group stored in part: {last}");
    check_log_and_indexes(dir.path(), &events(0..last));
}

/// Indexes checkpointed once, then a second checkpoint stopped at `point`.
fn crash_in_second_checkpoint(test: &str, point: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    crash_in_child(module_path!(), test, dir.path(), |dir| {
        let store = open(dir);
        append_groups(&store, events(0..3000), 500);
        store.shutdown().unwrap();
        drop(store);
        let store = open(dir);
        append_groups(&store, events(3000..6000), 500);
        failpoint::set(point, "crash").unwrap();
        // Stopping checkpoints the memory runs.
        let _ = store.shutdown();
    });
    check_log_and_indexes(dir.path(), &events(0..6000));
}

#[test]
fn crash_between_a_runs_blocks_and_its_record() {
    crash_in_second_checkpoint(
        "crash_between_a_runs_blocks_and_its_record",
        "index.run.before_record",
    );
}

#[test]
fn crash_between_a_checkpoints_run_and_its_watermark() {
    crash_in_second_checkpoint(
        "crash_between_a_checkpoints_run_and_its_watermark",
        "index.checkpoint.before_watermark",
    );
}

#[test]
fn crash_between_a_checkpoints_watermark_and_its_sync() {
    crash_in_second_checkpoint(
        "crash_between_a_checkpoints_watermark_and_its_sync",
        "index.checkpoint.before_sync",
    );
}

/// Sessions of 1,000 events each (a disk run at each stop, or more if a checkpoint fell due
/// meanwhile) until a size tier is full, then the merge, in this thread (the indexer would run
/// it at idle priority, whenever the machine lets it), until `actions` at `point` stops it.
fn crash_in_merge(test: &str, point: &'static str, actions: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    crash_in_child(module_path!(), test, dir.path(), |dir| {
        for session in 0..20 {
            let store = open(dir);
            append_groups(&store, events(session * 1000..(session + 1) * 1000), 250);
            store.shutdown().unwrap();
            drop(store);
            let db = crate::kv::Db::open(&dir.join("indexes"), 64 << 20).unwrap();
            let (_index, mut writer, _) = open_indexes(db);
            if writer.merge_pending() {
                failpoint::set(point, actions).unwrap();
                while !writer.merge_step(10_000).unwrap() {}
                writer.collect_garbage().unwrap();
                panic!("the merge ended without reaching {point}");
            }
        }
        panic!("20 sessions and no size tier to merge");
    });
    let store = open(dir.path());
    let last = store.last_seq().unwrap();
    store.shutdown().unwrap();
    drop(store);
    check_log_and_indexes(dir.path(), &events(0..last));
}

#[test]
fn crash_between_a_merged_runs_blocks_and_its_record() {
    crash_in_merge(
        "crash_between_a_merged_runs_blocks_and_its_record",
        "index.run.before_record",
        "crash",
    );
}

#[test]
fn crash_between_a_merged_runs_record_and_the_removal_of_the_old_ones() {
    crash_in_merge(
        "crash_between_a_merged_runs_record_and_the_removal_of_the_old_ones",
        "index.merge.remove_record",
        "crash",
    );
}

#[test]
fn crash_between_two_removals_of_merged_away_runs() {
    crash_in_merge(
        "crash_between_two_removals_of_merged_away_runs",
        "index.merge.remove_record",
        "2*off->crash",
    );
}

#[test]
fn crash_while_deleting_merged_away_runs() {
    crash_in_merge(
        "crash_while_deleting_merged_away_runs",
        "index.gc.delete_run",
        "1*off->crash",
    );
}
