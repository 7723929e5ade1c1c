//! What opening a store does with indexes that are damaged, ahead of the log or of another
//! format, and with a log of another format.

use super::*;
use crate::format::Format;
use crate::kv::Db;
use crate::tests::{append, event, open};

/// A store in `dir` with two opens (a@x, b@x), indexed, closed.
fn store_two_opens_indexed(dir: &std::path::Path) {
    let store = open(dir);
    append(
        &store,
        vec![event("open", 1, "a@x", 1), event("open", 2, "b@x", 2)],
    );
    assert!(store.wait_indexed(2, std::time::Duration::from_secs(10)));
    store.shutdown().unwrap();
}

/// Overwrites, in the closed store in `dir`, every index key starting with `prefix` with
/// `value`; returns how many there were.
fn overwrite_index_keys(dir: &std::path::Path, prefix: &[u8], value: &[u8]) -> usize {
    let db = Db::open(&dir.join("indexes"), 64 << 20).unwrap();
    let tree = db.tree("index").unwrap();
    let keys: Vec<_> = tree
        .scan_prefix(prefix)
        .keys()
        .map(|k| k.unwrap())
        .collect();
    for key in &keys {
        tree.insert(key, value).unwrap();
    }
    db.flush().unwrap();
    keys.len()
}

#[test]
fn an_index_ahead_of_the_log_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    store_two_opens_indexed(dir.path());
    // Lose the log's newest block and the commit record written after it, as a power loss
    // with fsync off could (sled keeps a prefix of its writes).
    {
        let db = Db::open(&dir.path().join("log"), 64 << 20).unwrap();
        let tree = db.tree("events").unwrap();
        tree.remove(codec::log_key(1)).unwrap();
        tree.remove(codec::COMMIT_KEY).unwrap();
        db.flush().unwrap();
    }
    let store = open(dir.path());
    assert_eq!(store.last_seq().unwrap(), 0);
    // The lost events are not taken for duplicates of themselves: the retry stores them.
    let report = append(&store, vec![event("open", 2, "b@x", 2)]);
    assert_eq!(report.stored, vec![1]);
    assert!(store.wait_indexed(1, std::time::Duration::from_secs(10)));
    let q = EventQuery {
        source: Some("mailjet".into()),
        kind: Some("open".into()),
        key: Some(KeyFilter {
            name: "email".into(),
            value: "a@x".into(),
        }),
        since: None,
        until: None,
        limit: 0,
    };
    assert!(store.events(&q).unwrap().is_empty());
}

#[test]
fn damaged_indexes_are_rebuilt_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let by_email = |email: &str| EventQuery {
        source: Some("mailjet".into()),
        kind: Some("open".into()),
        key: Some(KeyFilter {
            name: "email".into(),
            value: email.into(),
        }),
        since: None,
        until: None,
        limit: 0,
    };
    store_two_opens_indexed(dir.path());
    // Damage every run record.
    assert!(overwrite_index_keys(dir.path(), b"R", b"\x07garbage") > 0);
    let store = open(dir.path());
    assert!(store.wait_indexed(2, std::time::Duration::from_secs(10)));
    assert_eq!(store.events(&by_email("a@x")).unwrap().len(), 1);
    // Dedup holds across the rebuild.
    let report = append(&store, vec![event("open", 2, "b@x", 2)]);
    assert!(report.stored.is_empty());
}

#[test]
fn an_unreadable_index_watermark_means_a_rebuild_not_a_refusal_to_start() {
    let dir = tempfile::tempdir().unwrap();
    store_two_opens_indexed(dir.path());
    assert_eq!(
        overwrite_index_keys(dir.path(), index::INDEXED_KEY, b"bad"),
        1
    );
    let store = open(dir.path());
    assert!(store.wait_indexed(2, std::time::Duration::from_secs(10)));
    let report = append(&store, vec![event("open", 1, "a@x", 1)]);
    assert!(report.stored.is_empty(), "dedup holds after the rebuild");
}

#[test]
fn a_damaged_index_block_fails_the_store_and_the_next_start_rebuilds_the_indexes() {
    let dir = tempfile::tempdir().unwrap();
    store_two_opens_indexed(dir.path());
    // Damage the first block of every run file (open reads only run records, filters and block
    // indexes).
    let runs = dir.path().join("indexes").join(index::RUNS_DIR);
    let mut damaged = 0;
    for file in std::fs::read_dir(&runs).unwrap() {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(file.unwrap().path())
            .unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, &[0, 0, 0, 9], 4).unwrap();
        damaged += 1;
    }
    assert!(damaged > 0);
    {
        let store = open(dir.path());
        // A retry of a stored event: its dedup lookup reads a damaged block.
        let refused = store.appender().append_blocking(Submission {
            events: vec![event("open", 1, "a@x", 1)],
            rejected: vec![],
        });
        assert!(refused.is_err());
        assert!(store.failure().is_some_and(|r| r.contains("damaged")));
        store.shutdown().unwrap();
    }
    let store = open(dir.path());
    assert!(store.failure().is_none());
    assert!(store.wait_indexed(2, std::time::Duration::from_secs(10)));
    let report = append(&store, vec![event("open", 1, "a@x", 1)]);
    assert!(report.stored.is_empty(), "dedup holds after the rebuild");
}

/// Sets (or, with `None`, removes) a database's format version in the closed store in `dir`.
fn set_format(dir: &std::path::Path, db: &str, tree: &str, format: &Format, to: Option<u32>) {
    let db = Db::open(&dir.join(db), 16 << 20).unwrap();
    let tree = db.tree(tree).unwrap();
    match to {
        Some(version) => tree.insert(format.key, &version.to_be_bytes()[..]).unwrap(),
        None => tree.remove(format.key).unwrap(),
    }
    db.flush().unwrap();
}

/// Puts a key no layout has in the closed store's index database: a rebuild (which empties the
/// tree) takes it away.
fn mark_indexes(dir: &std::path::Path) {
    let db = Db::open(&dir.join("indexes"), 16 << 20).unwrap();
    db.tree("index")
        .unwrap()
        .insert(b"Zmark", &b""[..])
        .unwrap();
    db.flush().unwrap();
}

#[test]
fn indexes_of_format_0_are_kept_and_marked_with_their_version() {
    let dir = tempfile::tempdir().unwrap();
    store_two_opens_indexed(dir.path());
    // Written before formats had versions: the same layout, no version key.
    set_format(dir.path(), "indexes", "index", &migrate::INDEX, None);
    mark_indexes(dir.path());
    store_two_opens_indexed(dir.path());
    let db = Db::open(&dir.path().join("indexes"), 16 << 20).unwrap();
    let tree = db.tree("index").unwrap();
    assert!(
        tree.contains_key(b"Zmark").unwrap(),
        "the indexes were rebuilt"
    );
    assert_eq!(
        tree.get(migrate::INDEX.key).unwrap().as_deref(),
        Some(&migrate::INDEX.current.to_be_bytes()[..])
    );
}

#[test]
fn a_log_of_a_newer_format_is_refused_and_newer_indexes_are_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    store_two_opens_indexed(dir.path());
    set_format(dir.path(), "indexes", "index", &migrate::INDEX, Some(9));
    mark_indexes(dir.path());
    {
        let store = open(dir.path());
        assert!(store.wait_indexed(2, std::time::Duration::from_secs(10)));
        let report = append(&store, vec![event("open", 1, "a@x", 1)]);
        assert!(report.stored.is_empty(), "dedup holds after the rebuild");
        store.shutdown().unwrap();
    }
    {
        let db = Db::open(&dir.path().join("indexes"), 16 << 20).unwrap();
        let tree = db.tree("index").unwrap();
        assert!(!tree.contains_key(b"Zmark").unwrap(), "not rebuilt");
        assert_eq!(
            tree.get(migrate::INDEX.key).unwrap().as_deref(),
            Some(&migrate::INDEX.current.to_be_bytes()[..])
        );
    }
    let newer = migrate::LOG.current + 1;
    set_format(dir.path(), "log", "events", &migrate::LOG, Some(newer));
    let err = Store::open(dir.path(), &StoreConfig::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "the log database is in format {newer}; this build reads formats 0 to {}",
            migrate::LOG.current
        )
    );
}

#[test]
fn a_log_of_format_0_opens_whole_and_gets_its_version() {
    let dir = tempfile::tempdir().unwrap();
    store_two_opens_indexed(dir.path());
    set_format(dir.path(), "log", "events", &migrate::LOG, None);
    let store = open(dir.path());
    assert_eq!(store.last_seq().unwrap(), 2);
    assert_eq!(store.read_range(1, 2).unwrap().len(), 2);
    store.shutdown().unwrap();
    drop(store);
    let db = Db::open(&dir.path().join("log"), 16 << 20).unwrap();
    let tree = db.tree("events").unwrap();
    assert_eq!(
        tree.get(migrate::LOG.key).unwrap().as_deref(),
        Some(&migrate::LOG.current.to_be_bytes()[..])
    );
}

#[test]
fn a_log_of_format_2_with_large_blocks_in_sled_opens_whole_and_gets_its_version() {
    let dir = tempfile::tempdir().unwrap();
    store_two_opens_indexed(dir.path());
    // Version 2 kept every block in sled, however large: 500 events in one block after the
    // two of the first group.
    {
        let db = Db::open(&dir.path().join("log"), 64 << 20).unwrap();
        let tree = db.tree("events").unwrap();
        let records: Vec<Vec<u8>> = (3..503)
            .map(|n| codec::encode_event(&event("open", n as i64, "c@x", n)).unwrap())
            .collect();
        let block = codec::encode_block(&records);
        assert!(block.len() > crate::log::segments::INLINE_MAX);
        tree.insert(codec::log_key(3), block).unwrap();
        tree.insert(codec::COMMIT_KEY, &codec::encode_commit(502, 0)[..])
            .unwrap();
        db.flush().unwrap();
    }
    set_format(dir.path(), "log", "events", &migrate::LOG, Some(2));
    let store = open(dir.path());
    assert_eq!(store.last_seq().unwrap(), 502);
    assert_eq!(store.event(300).unwrap().keys["email"], "c@x");
    // New large blocks go to a segment; both kinds read side by side.
    let more: Vec<_> = (503..1003)
        .map(|n| event("open", n as i64, "d@x", n))
        .collect();
    assert_eq!(append(&store, more).stored.len(), 500);
    assert_eq!(store.read_range(1, 1002).unwrap().len(), 1002);
    store.shutdown().unwrap();
    drop(store);
    let db = Db::open(&dir.path().join("log"), 16 << 20).unwrap();
    let tree = db.tree("events").unwrap();
    assert_eq!(
        tree.get(migrate::LOG.key).unwrap().as_deref(),
        Some(&3u32.to_be_bytes()[..])
    );
}

#[test]
fn indexes_of_format_2_with_runs_in_sled_are_rebuilt_into_run_files() {
    let dir = tempfile::tempdir().unwrap();
    store_two_opens_indexed(dir.path());
    // What format 2 kept in sled: run records (R), blocks (B) and filter chunks (F), each the
    // prefix byte and a run id, besides the watermark.
    {
        let db = Db::open(&dir.path().join("indexes"), 16 << 20).unwrap();
        let tree = db.tree("index").unwrap();
        for key in tree.scan_prefix(b"R").keys() {
            tree.remove(key.unwrap()).unwrap();
        }
        let id = 7u64.to_be_bytes();
        tree.insert([&b"R"[..], &id].concat(), &b"\x02old record"[..])
            .unwrap();
        tree.insert([&b"B"[..], &id, b"last key"].concat(), &b"old block"[..])
            .unwrap();
        tree.insert([&b"F"[..], &id, &[0, 0, 0, 0]].concat(), &[0u8; 64][..])
            .unwrap();
        db.flush().unwrap();
        drop(tree);
        drop(db);
        std::fs::remove_dir_all(dir.path().join("indexes").join(index::RUNS_DIR)).unwrap();
    }
    set_format(dir.path(), "indexes", "index", &migrate::INDEX, Some(2));
    mark_indexes(dir.path());
    {
        let store = open(dir.path());
        assert!(store.wait_indexed(2, std::time::Duration::from_secs(10)));
        let report = append(&store, vec![event("open", 1, "a@x", 1)]);
        assert!(report.stored.is_empty(), "dedup holds after the migration");
        store.shutdown().unwrap();
    }
    let db = Db::open(&dir.path().join("indexes"), 16 << 20).unwrap();
    let tree = db.tree("index").unwrap();
    assert!(
        tree.contains_key(b"Zmark").unwrap(),
        "a migration, not a wipe"
    );
    for prefix in [&b"B"[..], b"F"] {
        assert_eq!(tree.scan_prefix(prefix).count(), 0, "{prefix:?} keys left");
    }
    assert!(
        tree.scan_prefix(b"R")
            .values()
            .all(|record| record.unwrap()[..] != b"\x02old record"[..])
    );
    assert_eq!(
        tree.get(migrate::INDEX.key).unwrap().as_deref(),
        Some(&migrate::INDEX.current.to_be_bytes()[..])
    );
}

#[test]
fn indexes_of_format_3_with_one_filter_per_run_are_rebuilt_with_two() {
    indexes_of_an_older_format_are_rebuilt(3);
}

#[test]
fn indexes_of_format_4_with_blocks_coded_against_their_first_key_are_rebuilt() {
    indexes_of_an_older_format_are_rebuilt(4);
}

/// A store whose index database says `format`, with run files: its migration deletes them and
/// rebuilds the indexes in the current format, dedup and scans answering throughout.
fn indexes_of_an_older_format_are_rebuilt(format: u32) {
    let dir = tempfile::tempdir().unwrap();
    store_two_opens_indexed(dir.path());
    set_format(
        dir.path(),
        "indexes",
        "index",
        &migrate::INDEX,
        Some(format),
    );
    mark_indexes(dir.path());
    let runs_dir = dir.path().join("indexes").join(index::RUNS_DIR);
    let old_files: Vec<_> = std::fs::read_dir(&runs_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(!old_files.is_empty());
    // Twice: after the migration (answers from the memory tier), then after a restart (from
    // the run files it wrote).
    for _ in 0..2 {
        let store = open(dir.path());
        assert!(store.wait_indexed(2, std::time::Duration::from_secs(10)));
        let report = append(&store, vec![event("open", 1, "a@x", 1)]);
        assert!(report.stored.is_empty(), "dedup holds after the migration");
        let window = crate::Window {
            source: "mailjet".to_owned(),
            kind: "open".to_owned(),
            keys: vec![("email".to_owned(), "b@x".to_owned())],
            from_ms: 0,
            to_ms: i64::MAX,
            max_seq: u64::MAX,
        };
        assert_eq!(store.count(&window, 10).unwrap(), 1, "scans find b@x");
        store.shutdown().unwrap();
    }
    let files: Vec<_> = std::fs::read_dir(&runs_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        files.iter().all(|f| !old_files.contains(f)),
        "the runs of format {format} are deleted: {files:?}"
    );
    let db = Db::open(&dir.path().join("indexes"), 16 << 20).unwrap();
    let tree = db.tree("index").unwrap();
    assert!(
        tree.contains_key(b"Zmark").unwrap(),
        "a migration, not a wipe"
    );
    let records: Vec<_> = tree
        .scan_prefix(b"R")
        .values()
        .map(|v| v.unwrap())
        .collect();
    assert_eq!(records.len(), files.len());
    assert!(records.iter().all(|record| record[0] == 3));
    assert_eq!(
        tree.get(migrate::INDEX.key).unwrap().as_deref(),
        Some(&migrate::INDEX.current.to_be_bytes()[..])
    );
}

#[test]
fn index_stats_count_a_stopped_stores_entries_and_weigh_both_codings() {
    let dir = tempfile::tempdir().unwrap();
    store_two_opens_indexed(dir.path());
    let stats = crate::index_stats(&dir.path().join("indexes")).unwrap();
    // Each event has a dedup entry, a by-type entry and a by-key entry for its e-mail.
    assert!(stats.runs >= 1, "{stats:?}");
    assert_eq!(stats.entries, 6, "{stats:?}");
    assert!(
        stats.block_bytes > 0 && stats.block_bytes < stats.file_bytes,
        "{stats:?}"
    );
    assert!(stats.format_4_block_bytes > 0, "{stats:?}");
}
