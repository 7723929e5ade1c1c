//! Commits and their journal file (`journal.rs`, `applier.rs`): a record replayed at open, one
//! already applied skipped, a torn one dropped; the journal version 1 kept in the tree
//! completed; a newer format's journal left alone; reads that see a commit before it is
//! applied.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use super::*;
use crate::applier::encode_writes;
use crate::tests::{open, put, value};

/// The bytes of the journal file of the engine database in the store folder `dir`.
pub(crate) fn journal_bytes(dir: &std::path::Path) -> usize {
    std::fs::metadata(dir.join("engine").join(crate::journal::JOURNAL_FILE))
        .map_or(0, |m| m.len() as usize)
}

#[test]
fn a_commit_interrupted_after_its_journal_record_is_completed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let staged_writes = |changes: Vec<Change>, cursor: u64| {
        let mut staged = Vec::new();
        for change in changes {
            stage_change(change, &mut staged);
        }
        staged.push((
            CURSOR_KEY.to_vec(),
            Slot::Bytes(cursor.to_be_bytes().to_vec()),
        ));
        staged
    };
    {
        let state = open(&path);
        state.commit(vec![put("r", "a", 1)], 10).unwrap();
        assert!(state.wait_durable(Duration::from_secs(10)));
        state.close();
        // What a crash leaves: the record of commit 1 (applied and durable: the file was not
        // emptied yet), of commit 2 (journaled, its first write applied), and half of 3's.
        let (mut journal, applied) =
            crate::journal::Journal::open(&path.join("engine"), &state.tree, false, || Ok(()))
                .unwrap();
        assert_eq!(applied, 1);
        let (first, second, third) = (
            staged_writes(vec![put("r", "a", 9)], 5),
            staged_writes(vec![put("r", "a", 2), put("r", "b", 2)], 20),
            staged_writes(vec![put("r", "c", 3)], 30),
        );
        let records = [
            (1, encode_writes(&first).unwrap()),
            (2, encode_writes(&second).unwrap()),
            (3, encode_writes(&third).unwrap()),
        ];
        journal.append(&records).unwrap();
        let full = journal_bytes(&path) as u64;
        std::fs::OpenOptions::new()
            .write(true)
            .open(path.join("engine").join(crate::journal::JOURNAL_FILE))
            .unwrap()
            .set_len(full - 10)
            .unwrap();
        let (k, v) = &records[1].1[0];
        state.tree.insert(k, v.as_deref().unwrap()).unwrap();
        state.sync().unwrap();
    }
    let state = open(&path);
    // Commit 1 is not replayed over what came after it, commit 2 is completed, 3 is dropped.
    assert_eq!(state.cursor().unwrap(), 20);
    assert_eq!(value(&state, "a"), Some(2.into()));
    assert_eq!(value(&state, "b"), Some(2.into()));
    assert_eq!(value(&state, "c"), None);
    assert_eq!(journal_bytes(&path), 0);
    // Numbers go on after the last applied commit: a new commit is not taken for an old one.
    state.commit(vec![put("r", "d", 4)], 40).unwrap();
    assert!(state.wait_durable(Duration::from_secs(10)));
    state.close();
    drop(state);
    let state = open(&path);
    assert_eq!(
        (state.cursor().unwrap(), value(&state, "d")),
        (40, Some(4.into()))
    );
}

#[test]
fn a_journal_left_in_the_tree_by_version_1_is_completed_at_open() {
    use crate::journal::encode_journal;
    let journal_key = |commit: u64, chunk: u32| {
        let mut key = vec![b'J'];
        key.extend_from_slice(&commit.to_be_bytes());
        key.extend_from_slice(&chunk.to_be_bytes());
        key
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    {
        let state = open(&path);
        state.commit(vec![put("r", "a", 1)], 10).unwrap();
        // A crash after the journal record and the first of the batch's writes.
        let mut staged = Vec::new();
        for change in [put("r", "a", 2), put("r", "b", 2)] {
            stage_change(change, &mut staged);
        }
        staged.push((
            CURSOR_KEY.to_vec(),
            Slot::Bytes(20u64.to_be_bytes().to_vec()),
        ));
        let writes = encode_writes(&staged).unwrap();
        state
            .tree
            .insert(journal_key(99, 0), encode_journal(&writes[..1]))
            .unwrap();
        state
            .tree
            .insert(journal_key(99, 1), encode_journal(&writes[1..]))
            .unwrap();
        state
            .tree
            .insert(journal_key(99, u32::MAX), &2u32.to_be_bytes())
            .unwrap();
        // And a later commit that crashed before its marker: dropped, not applied.
        let mut later = Vec::new();
        stage_change(put("r", "c", 3), &mut later);
        state
            .tree
            .insert(
                journal_key(100, 0),
                encode_journal(&encode_writes(&later).unwrap()),
            )
            .unwrap();
        let (k, v) = &writes[0];
        state.tree.insert(k, v.as_deref().unwrap()).unwrap();
        state
            .tree
            .insert(crate::migrate::FORMAT.key, &1u32.to_be_bytes()[..])
            .unwrap();
        state.close();
    }
    let state = open(&path);
    assert_eq!(state.cursor().unwrap(), 20);
    assert_eq!(value(&state, "a"), Some(2.into()));
    assert_eq!(value(&state, "b"), Some(2.into()));
    assert_eq!(value(&state, "c"), None);
    assert_eq!(state.tree.scan_prefix([b'J']).count(), 0);
}

#[test]
fn a_store_of_a_newer_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    open(dir.path()).close();
    {
        let db = Db::open(&dir.path().join("engine"), 16 << 20).unwrap();
        let tree = db.tree("engine").unwrap();
        let newer = migrate::FORMAT.current + 1;
        tree.insert(migrate::FORMAT.key, &newer.to_be_bytes()[..])
            .unwrap();
        db.flush().unwrap();
    }
    // Whatever the newer build left in its journal is not this build's to replay or empty.
    let journal = dir.path().join("engine").join(crate::journal::JOURNAL_FILE);
    std::fs::write(&journal, b"a newer build's journal").unwrap();
    let config = StoreConfig {
        fsync: false,
        cache_capacity: 16 << 20,
        ..StoreConfig::default()
    };
    let err = EngineState::open(dir.path(), &config).unwrap_err();
    assert!(
        err.to_string().contains(&format!(
            "engine database is in format {}; this build reads formats 0 to {}",
            migrate::FORMAT.current + 1,
            migrate::FORMAT.current
        )),
        "{err}"
    );
    assert_eq!(std::fs::read(&journal).unwrap(), b"a newer build's journal");
}

#[test]
fn reads_see_a_commit_before_the_applier_has_written_it() {
    let dir = tempfile::tempdir().unwrap();
    // Alone in a process: it holds the applier with a (global) fail point.
    gancho_testkit::crash::run_in_child(
        module_path!(),
        "reads_see_a_commit_before_the_applier_has_written_it",
        dir.path(),
        |dir| {
            let point = "state.apply.before_writes";
            gancho_core::failpoint::set(point, "pause").unwrap();
            let state = open(dir);
            state.commit(vec![put("r", "a", 1)], 7).unwrap();
            assert!(gancho_core::failpoint::wait_hits(
                point,
                1,
                std::time::Duration::from_secs(30)
            ));
            // Journaled, not written: the overlay answers.
            assert_eq!(state.durable_cursor(), 0);
            assert_eq!(state.cursor().unwrap(), 7);
            assert_eq!(value(&state, "a"), Some(serde_json::Value::from(1)));
            state
                .commit(
                    vec![Change::DeleteState {
                        rule: "r".to_owned(),
                        key: "a".to_owned(),
                    }],
                    8,
                )
                .unwrap();
            assert_eq!(value(&state, "a"), None, "a delete is seen too");
            gancho_core::failpoint::release(point);
            assert!(state.wait_durable(std::time::Duration::from_secs(30)));
            assert_eq!(state.durable_cursor(), 8);
            assert_eq!(value(&state, "a"), None);
            state.close();
        },
    );
}
