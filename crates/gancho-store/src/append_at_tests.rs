//! `Appender::append_at`: events stored at the seqs given with them (cluster mode's stream
//! sequence numbers), the seqs between left without an event, and what a restart or a crash
//! leaves of that.

use std::time::Duration;

use gancho_core::NewEvent;

use crate::prune_tests::request;
use crate::tests::{event, open};
use crate::{AppendReport, EventQuery, KeyFilter, Store, StoreError};

fn append_at(store: &Store, events: &[(u64, NewEvent)]) -> Result<AppendReport, StoreError> {
    block_on(store.appender().append_at(events))
}

/// The store's futures need no runtime: the writer answers through a oneshot channel.
fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(future)
}

fn kinds(store: &Store, email: &str) -> Vec<(u64, String)> {
    store
        .events(&EventQuery {
            source: Some("mailjet".into()),
            kind: None,
            key: Some(KeyFilter {
                name: "email".into(),
                value: email.into(),
            }),
            since: None,
            until: None,
            limit: 0,
        })
        .unwrap()
        .into_iter()
        .map(|e| (e.seq, e.kind))
        .collect()
}

#[test]
fn events_take_the_seqs_given_and_the_seqs_between_hold_no_event() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let report = append_at(
        &store,
        &[
            (3, event("sent", 100, "a@x", 1)),
            (4, event("open", 200, "a@x", 2)),
            (7, event("click", 300, "a@x", 3)),
        ],
    )
    .unwrap();
    assert_eq!(report.stored, vec![3, 4, 7]);
    assert!(report.duplicates.is_empty() && report.skipped.is_empty());
    assert_eq!(store.last_seq().unwrap(), 7);
    for absent in [1, 2, 5, 6] {
        assert_eq!(store.get(absent).unwrap(), None, "seq {absent}");
    }
    assert_eq!(store.get(7).unwrap().unwrap().kind, "click");
    assert_eq!(store.pruned(), 4);
    // The indexer counts the seqs without an event as pruned: it reaches the end.
    assert!(store.wait_indexed(7, Duration::from_secs(10)));
    assert_eq!(
        kinds(&store, "a@x"),
        vec![(3, "sent".into()), (4, "open".into()), (7, "click".into())]
    );

    // The next events go on from the given seqs, whichever way they are appended.
    let report = crate::tests::append(&store, vec![event("open", 400, "b@x", 4)]);
    assert_eq!(report.stored, vec![8]);
    let report = append_at(&store, &[(10, event("open", 500, "b@x", 5))]).unwrap();
    assert_eq!(report.stored, vec![10]);
    assert_eq!(store.get(9).unwrap(), None);

    // All of it survives a restart.
    store.shutdown().unwrap();
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.last_seq().unwrap(), 10);
    assert_eq!(store.pruned(), 5);
    assert_eq!(store.get(8).unwrap().unwrap().kind, "open");
    assert!(store.wait_indexed(10, Duration::from_secs(10)));
    assert_eq!(
        kinds(&store, "b@x"),
        vec![(8, "open".into()), (10, "open".into())]
    );
}

#[test]
fn seqs_the_log_has_reached_are_skipped_and_a_known_id_leaves_its_seq_empty() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let first = event("sent", 100, "a@x", 1);
    append_at(
        &store,
        &[(1, first.clone()), (2, event("open", 200, "a@x", 2))],
    )
    .unwrap();

    // Read again after a restart: the same seqs, skipped, nothing stored twice.
    let report = append_at(
        &store,
        &[(1, first.clone()), (2, event("open", 200, "a@x", 2))],
    )
    .unwrap();
    assert_eq!(report.skipped, vec![1, 2]);
    assert!(report.stored.is_empty());

    // The same event at a new seq (a provider's retry the stream did not recognise): its seq
    // holds no event, the earlier one is reported.
    let report = append_at(
        &store,
        &[(3, first.clone()), (4, event("click", 300, "a@x", 3))],
    )
    .unwrap();
    assert_eq!(report.duplicates, vec![1]);
    assert_eq!(report.stored, vec![4]);
    assert_eq!(store.get(3).unwrap(), None);

    // Once the first copy is in the indexes (not only in the writer's memory), the same.
    assert!(store.wait_indexed(4, Duration::from_secs(10)));
    store.shutdown().unwrap();
    drop(store);
    let store = open(dir.path());
    let report = append_at(&store, &[(5, first)]).unwrap();
    assert_eq!(report.duplicates, vec![1]);
    assert_eq!(store.last_seq().unwrap(), 5);
    assert_eq!(store.pruned(), 2);
    assert_eq!(
        kinds(&store, "a@x"),
        vec![(1, "sent".into()), (2, "open".into()), (4, "click".into())]
    );
}

#[test]
fn a_seq_given_again_with_another_event_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    crate::tests::append(&store, vec![event("sent", 100, "a@x", 1)]);
    append_at(&store, &[(2, event("open", 200, "a@x", 2))]).unwrap();
    for seq in [1, 2] {
        let err = append_at(&store, &[(seq, event("click", 300, "b@x", 3))]).unwrap_err();
        assert!(matches!(err, StoreError::OutOfOrder(_)), "{err}");
    }
    // The same events again, whether indexed yet or not, are fine.
    let report = append_at(&store, &[(2, event("open", 200, "a@x", 2))]).unwrap();
    assert_eq!(report.skipped, vec![2]);
    assert!(store.wait_indexed(2, Duration::from_secs(10)));
    let report = append_at(
        &store,
        &[
            (1, event("sent", 100, "a@x", 1)),
            (2, event("open", 200, "a@x", 2)),
        ],
    )
    .unwrap();
    assert_eq!(report.skipped, vec![1, 2]);
}

#[test]
fn a_jump_of_billions_of_seqs_costs_nothing_per_seq() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let far = 5_000_000_000;
    append_at(
        &store,
        &[
            (1, event("sent", 100, "a@x", 1)),
            (far, event("open", 200, "a@x", 2)),
            (far + 100, event("click", 300, "a@x", 3)),
        ],
    )
    .unwrap();
    assert_eq!(store.last_seq().unwrap(), far + 100);
    assert_eq!(store.pruned(), far + 100 - 3);
    assert!(store.wait_indexed(far + 100, Duration::from_secs(10)));
    assert_eq!(
        kinds(&store, "a@x"),
        vec![
            (1, "sent".into()),
            (far, "open".into()),
            (far + 100, "click".into())
        ]
    );
    // Dedup still finds an event past the jump, from memory and after a restart.
    let report = append_at(&store, &[(far + 101, event("open", 200, "a@x", 2))]).unwrap();
    assert_eq!(report.duplicates, vec![far]);
    store.shutdown().unwrap();
    drop(store);
    let store = open(dir.path());
    let report = append_at(&store, &[(far + 102, event("click", 300, "a@x", 3))]).unwrap();
    assert_eq!(report.duplicates, vec![far + 100]);
    assert_eq!(store.get(far).unwrap().unwrap().kind, "open");
    assert_eq!(store.get(far - 1).unwrap(), None);
}

#[test]
fn seqs_that_do_not_grow_are_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for given in [
        vec![
            (2, event("sent", 100, "a@x", 1)),
            (2, event("open", 200, "a@x", 2)),
        ],
        vec![
            (3, event("sent", 100, "a@x", 1)),
            (1, event("open", 200, "a@x", 2)),
        ],
        vec![(0, event("sent", 100, "a@x", 1))],
    ] {
        let err = append_at(&store, &given).unwrap_err();
        assert!(matches!(err, StoreError::OutOfOrder(_)), "{err}");
    }
    assert_eq!(store.last_seq().unwrap(), 0);
}

#[test]
fn a_prune_keeps_the_seqs_without_an_event() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    append_at(
        &store,
        &[
            (2, event("sent", 100, "a@x", 1)),
            (5, event("open", 5_000, "a@x", 2)),
        ],
    )
    .unwrap();
    let report = store.prune(&request(1_000, 5, &[])).unwrap();
    assert_eq!(report.events, 1);
    // Seqs 1, 3 and 4 held no event, 2 was pruned.
    assert_eq!(store.pruned(), 4);
    let report = append_at(&store, &[(7, event("click", 6_000, "a@x", 3))]).unwrap();
    assert_eq!(report.stored, vec![7]);
    assert_eq!(store.pruned(), 5);
    assert_eq!(store.get(5).unwrap().unwrap().kind, "open");
}

#[test]
fn seqs_recorded_past_the_end_by_a_lost_group_are_given_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    append_at(&store, &[(2, event("sent", 100, "a@x", 1))]).unwrap();
    store.shutdown().unwrap();
    drop(store);
    // What a crash can leave: the set written with a group (seqs 3 to 8 without an event)
    // whose commit record was lost with the group.
    {
        let db = crate::kv::Db::open(&dir.path().join("log"), 1 << 20).unwrap();
        let tree = db.tree("events").unwrap();
        let set = crate::log::prune::read_purged(&tree).unwrap();
        tree.insert(
            crate::log::prune::PURGED_KEY,
            set.with(&[3, 4, 5, 6, 7, 8]).encode(),
        )
        .unwrap();
        db.flush().unwrap();
    }
    let store = open(dir.path());
    assert_eq!(store.pruned(), 1);
    let report = append_at(&store, &[(4, event("open", 200, "a@x", 2))]).unwrap();
    assert_eq!(report.stored, vec![4]);
    assert_eq!(store.get(4).unwrap().unwrap().kind, "open");
    assert_eq!(store.pruned(), 2);
}

#[test]
fn a_crash_before_the_commit_record_of_a_group_with_empty_seqs_gives_them_again() {
    let dir = tempfile::tempdir().unwrap();
    gancho_testkit::crash::crash_in_child(
        module_path!(),
        "a_crash_before_the_commit_record_of_a_group_with_empty_seqs_gives_them_again",
        dir.path(),
        |dir| {
            let store = open(dir);
            append_at(&store, &[(2, event("sent", 100, "a@x", 1))]).unwrap();
            gancho_core::failpoint::set("log.group.before_commit_record", "crash").unwrap();
            let _ = append_at(&store, &[(9, event("open", 200, "a@x", 2))]);
        },
    );
    let store = open(dir.path());
    assert_eq!(store.last_seq().unwrap(), 2);
    assert_eq!(store.pruned(), 1);
    // Given again, the lost group's seqs hold what they are given this time.
    let report = append_at(
        &store,
        &[
            (3, event("open", 200, "a@x", 2)),
            (9, event("click", 300, "a@x", 3)),
        ],
    )
    .unwrap();
    assert_eq!(report.stored, vec![3, 9]);
    assert_eq!(store.get(3).unwrap().unwrap().kind, "open");
    assert_eq!(store.pruned(), 6);
}

#[test]
fn a_group_that_fails_leaves_the_seqs_it_would_have_left_empty_free() {
    let dir = tempfile::tempdir().unwrap();
    gancho_testkit::crash::run_in_child(
        module_path!(),
        "a_group_that_fails_leaves_the_seqs_it_would_have_left_empty_free",
        dir.path(),
        |dir| {
            let store = open(dir);
            append_at(&store, &[(2, event("sent", 100, "a@x", 1))]).unwrap();
            gancho_core::failpoint::set("log.group.write", "1*error").unwrap();
            assert!(append_at(&store, &[(9, event("open", 200, "a@x", 2))]).is_err());
            gancho_core::failpoint::remove("log.group.write");
            assert_eq!(store.pruned(), 1);
            let report = append_at(&store, &[(5, event("open", 200, "a@x", 2))]).unwrap();
            assert_eq!(report.stored, vec![5]);
            assert_eq!(store.pruned(), 3);
            store.shutdown().unwrap();
        },
    );
    let store = open(dir.path());
    assert_eq!(store.last_seq().unwrap(), 5);
    assert_eq!(store.pruned(), 3);
    assert_eq!(store.get(5).unwrap().unwrap().kind, "open");
}
