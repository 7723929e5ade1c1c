//! The log's larger blocks in segment files (`log/segments.rs`): where they go, that they read
//! back across restarts, that damage is named, and that nothing is left behind by a crash or
//! a prune.

use std::path::Path;
use std::time::Duration;

use gancho_core::failpoint;
use gancho_testkit::crash::crash_in_child;

use super::*;
use crate::prune_tests::request;
use crate::tests::{append, event, open};

fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("log/segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

fn grouped(from: u64, n: u64) -> Vec<gancho_core::NewEvent> {
    (from..from + n)
        .map(|i| {
            event(
                "open",
                1_700_000_000 + i as i64,
                &format!("u{}@x", i % 50),
                i,
            )
        })
        .collect()
}

#[test]
fn a_grouped_request_is_kept_in_a_segment_and_reads_back_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    // A single event stays in sled; 500 at once make blocks that go to a segment.
    assert_eq!(append(&store, grouped(0, 1)).stored, vec![1]);
    assert!(segment_files(dir.path()).is_empty());
    let report = append(&store, grouped(1, 500));
    assert_eq!(report.stored, (2..=501).collect::<Vec<_>>());
    assert!(!segment_files(dir.path()).is_empty());
    for seq in [1, 2, 250, 501] {
        assert_eq!(store.event(seq).unwrap().seq, seq);
    }
    store.shutdown().unwrap();
    drop(store);

    let store = open(dir.path());
    assert_eq!(store.read_range(1, 501).unwrap().len(), 501);
    let q = EventQuery {
        source: Some("mailjet".to_owned()),
        kind: Some("open".to_owned()),
        key: Some(KeyFilter {
            name: "email".into(),
            value: "u7@x".into(),
        }),
        since: None,
        until: None,
        limit: 0,
    };
    assert!(store.wait_indexed(501, Duration::from_secs(30)));
    assert_eq!(store.events(&q).unwrap().len(), 10);
    // The same events again are duplicates; new ones go on after them.
    assert_eq!(append(&store, grouped(1, 500)).duplicates.len(), 500);
    assert_eq!(append(&store, grouped(501, 500)).stored[0], 502);
    assert_eq!(store.event(1001).unwrap().seq, 1001);
}

#[test]
fn a_damaged_segment_is_an_error_that_names_it_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    append(&store, grouped(0, 500));
    // Indexed: the open does not read the blocks back (it reads the unindexed tail, and
    // damage there stops the open, as a damaged sled page does).
    assert!(store.wait_indexed(500, Duration::from_secs(30)));
    store.shutdown().unwrap();
    drop(store);
    let files = segment_files(dir.path());
    assert!(files.len() > 1, "unit tests cut segments at 16 KiB");
    let file = files.last().unwrap().clone();
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();

    let store = open(dir.path());
    let errors: Vec<String> = (1..=500)
        .filter_map(|seq| store.get(seq).err())
        .map(|e| e.to_string())
        .collect();
    assert!(!errors.is_empty(), "no read saw the damage");
    assert!(
        errors
            .iter()
            .all(|e| e.contains("log segment") && e.contains("checksum")),
        "{errors:?}"
    );
    // The blocks in other segments still read.
    assert!(store.get(1).unwrap().is_some());
}

#[test]
fn a_crash_before_the_commit_record_loses_that_group_only_and_its_blocks_are_written_again() {
    let dir = tempfile::tempdir().unwrap();
    crash_in_child(
        module_path!(),
        "a_crash_before_the_commit_record_loses_that_group_only_and_its_blocks_are_written_again",
        dir.path(),
        |dir| {
            let store = open(dir);
            append(&store, grouped(0, 500));
            failpoint::set("log.group.before_commit_record", "crash").unwrap();
            append(&store, grouped(500, 500));
        },
    );
    // The lost group's blocks were appended to the segment after the first group's: bytes no
    // committed pointer refers to.
    let store = open(dir.path());
    assert_eq!(store.last_seq().unwrap(), 500);
    assert_eq!(store.read_range(1, 1000).unwrap().len(), 500);
    // The lost group's seqs are given again, and its blocks written again, readable.
    assert_eq!(append(&store, grouped(500, 500)).stored[0], 501);
    assert_eq!(store.read_range(1, 1000).unwrap().len(), 1000);
    store.shutdown().unwrap();
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.read_range(1, 1000).unwrap().len(), 1000);
}

#[test]
fn a_segment_past_the_end_of_the_log_is_deleted_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    append(&store, grouped(0, 500));
    store.shutdown().unwrap();
    drop(store);
    // What a crash leaves when it stops a group after its blocks went to a new segment.
    let stray = dir.path().join("log/segments/00000000000000000501.seg");
    std::fs::write(&stray, b"half a block").unwrap();
    let store = open(dir.path());
    assert!(!stray.exists());
    assert_eq!(append(&store, grouped(500, 500)).stored[0], 501);
    assert_eq!(store.read_range(1, 1000).unwrap().len(), 1000);
}

#[test]
fn pruning_every_block_of_a_segment_deletes_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    // Segments before a restart, and after it (unit tests cut segments at 16 KiB).
    append(&store, grouped(0, 500));
    store.shutdown().unwrap();
    drop(store);
    let first_round = segment_files(dir.path());
    let store = open(dir.path());
    append(&store, grouped(500, 500));
    let all = segment_files(dir.path());
    assert!(all.len() > first_round.len());
    assert!(store.wait_indexed(1000, Duration::from_secs(30)));
    // Events are from 1,700,000,000 s on: prune those of the first round only.
    let report = store
        .prune(&request(1_700_000_000 + 500, 1000, &[]))
        .unwrap();
    assert_eq!(report.events, 500);
    assert_eq!(report.segments_deleted as usize, first_round.len());
    assert_eq!(
        segment_files(dir.path()).len(),
        all.len() - first_round.len()
    );
    assert!(store.get(1).unwrap().is_none());
    assert_eq!(store.read_range(1, 1000).unwrap().len(), 500);
    // The writer's segment is kept even once empty; a restart deletes it.
    let report = store.prune(&request(i64::MAX / 1000, 1000, &[])).unwrap();
    assert_eq!(report.events, 500);
    assert_eq!(
        segment_files(dir.path()).len(),
        1,
        "the writer's segment stays"
    );
    store.shutdown().unwrap();
    drop(store);
    let store = open(dir.path());
    assert!(segment_files(dir.path()).is_empty());
    assert!(store.read_range(1, 1000).unwrap().is_empty());
    assert_eq!(append(&store, grouped(1000, 500)).stored[0], 1001);
}

#[test]
fn a_group_that_fails_after_starting_a_segment_leaves_no_block_in_it() {
    let dir = tempfile::tempdir().unwrap();
    // Alone in a process: the fail point is global, and other tests append meanwhile.
    gancho_testkit::crash::run_in_child(
        module_path!(),
        "a_group_that_fails_after_starting_a_segment_leaves_no_block_in_it",
        dir.path(),
        |dir| {
            let store = open(dir);
            append(&store, grouped(0, 500));
            // The next group places its blocks (starting a segment past its first seq), then
            // fails.
            failpoint::set("log.group.write", "1*error").unwrap();
            let failed = store.appender().append_blocking(Submission {
                events: grouped(500, 500),
                rejected: vec![],
            });
            failpoint::remove("log.group.write");
            assert!(failed.is_err());
            // The segment it started is gone: its name is a seq that will be given again.
            assert!(
                segment_ids(dir).iter().all(|&id| id <= 500),
                "{:?}",
                segment_ids(dir)
            );
            // A smaller group takes the same seqs: its blocks must not land in a segment
            // named after a seq it does not reach.
            assert_eq!(append(&store, grouped(500, 200)).stored[0], 501);
            assert_eq!(store.read_range(1, 1000).unwrap().len(), 700);
            store.shutdown().unwrap();
        },
    );
    let store = open(dir.path());
    assert_eq!(store.read_range(1, 1000).unwrap().len(), 700);
    let ids = segment_ids(dir.path());
    assert!(ids.iter().all(|&id| id <= 700), "{ids:?}");
}

fn segment_ids(dir: &Path) -> Vec<u64> {
    segment_files(dir)
        .iter()
        .map(|f| f.file_stem().unwrap().to_str().unwrap().parse().unwrap())
        .collect()
}
