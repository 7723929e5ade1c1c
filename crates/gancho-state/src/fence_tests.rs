//! The fence's contract as the applier keeps it, with a fence that keeps what it is given (the
//! real one, on NATS, is tested in `gancho-node`): each batch's records reach it before they
//! are durable here, a refusal fails the state with nothing of the batch durable, and another
//! database catches up from the records alone.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::snapshot::restore_snapshot;

#[derive(Debug, Default)]
struct Kept {
    batches: Mutex<Vec<(u64, Vec<u8>)>>,
    refuse: std::sync::atomic::AtomicBool,
}

impl CommitFence for Kept {
    fn commit(&self, cursor: u64, records: &[u8]) -> Result<(), FenceError> {
        if self.refuse.load(Ordering::Acquire) {
            return Err(FenceError::Fenced("another writer".to_owned()));
        }
        lock(&self.batches).push((cursor, records.to_vec()));
        Ok(())
    }

    fn position(&self) -> u64 {
        lock(&self.batches).len() as u64
    }
}

fn put(key: &str) -> Vec<Change> {
    vec![Change::PutState {
        rule: "r".to_owned(),
        key: key.to_owned(),
        value: StateValue {
            value: serde_json::json!(key),
            expires_ms: None,
        },
    }]
}

#[test]
fn batches_go_through_the_fence_and_another_database_catches_up_from_them() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let kept = Arc::new(Kept::default());
    let config = StoreConfig::default();
    let a = EngineState::open_fenced(a_dir.path(), &config, kept.clone(), [9; 32]).unwrap();
    assert_eq!(a.secret().bytes(), &[9; 32]);
    a.commit(put("x1"), 4).unwrap();
    assert!(a.wait_durable(Duration::from_secs(10)));
    a.commit(put("x2"), 8).unwrap();
    assert!(a.wait_durable(Duration::from_secs(10)));
    let batches = lock(&kept.batches).clone();
    assert_eq!(
        batches.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
        vec![4, 8]
    );

    let b = EngineState::open(b_dir.path(), &config).unwrap();
    // Not whole records: refused, nothing applied.
    let torn = &batches[0].1[..batches[0].1.len() - 1];
    assert!(matches!(b.catch_up(torn), Err(StoreError::Corrupt { .. })));
    assert_eq!(b.catch_up(&batches[0].1).unwrap(), 4);
    // Given twice: applied once.
    assert_eq!(b.catch_up(&batches[0].1).unwrap(), 4);
    assert_eq!(b.catch_up(&batches[1].1).unwrap(), 8);
    assert!(b.state("r", "x1").unwrap().is_some() && b.state("r", "x2").unwrap().is_some());
    // Its own commits go on after the others' numbers.
    b.commit(put("x3"), 12).unwrap();
    assert!(b.wait_durable(Duration::from_secs(10)));
    assert_eq!(b.durable_cursor(), 12);
    // A message already applied changes nothing.
    assert_eq!(b.catch_up(&batches[1].1).unwrap(), 12);

    // A refusal fails the state; the batch is durable nowhere.
    kept.refuse.store(true, Ordering::Release);
    a.commit(put("stale"), 12).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while a.failure().is_none() {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(a.durable_cursor(), 8);
    a.close();
    drop(a);
    let a = EngineState::open(a_dir.path(), &config).unwrap();
    assert_eq!(a.cursor().unwrap(), 8);
    assert!(a.state("r", "stale").unwrap().is_none());
}

#[test]
fn a_snapshot_restored_elsewhere_holds_the_decisions_and_the_journal_goes_on_after_it() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let kept = Arc::new(Kept::default());
    let config = StoreConfig::default();
    let a = EngineState::open_fenced(a_dir.path(), &config, kept.clone(), [9; 32]).unwrap();
    for (i, key) in ["x1", "x2", "x3"].iter().enumerate() {
        a.commit(put(key), 4 * (i as u64 + 1)).unwrap();
    }
    let mut file = Vec::new();
    let mark = a.write_snapshot(&mut file).unwrap();
    // Taken between commits: every commit queued before it is in it (the applier may have
    // sent them to the journal as one message or several).
    let at = lock(&kept.batches).len() as u64;
    assert_eq!((mark.journal_seq, mark.cursor), (at, 12));
    assert_eq!(a.journal_position().unwrap(), at);
    a.commit(put("x4"), 16).unwrap();
    assert!(a.wait_durable(Duration::from_secs(10)));
    let batches = lock(&kept.batches).clone();
    assert_eq!(batches.len() as u64, at + 1);

    // A snapshot altered or cut short is refused, and the database it would replace stays.
    let b = EngineState::open(b_dir.path(), &config).unwrap();
    b.commit(put("mine"), 1).unwrap();
    assert!(b.wait_durable(Duration::from_secs(10)));
    b.close();
    drop(b);
    let mut altered = file.clone();
    let middle = altered.len() / 2;
    altered[middle] ^= 1;
    for bad in [
        &altered[..],
        &file[..file.len() - 3],
        &[&file[..], b"x"].concat()[..],
    ] {
        let refused = restore_snapshot(b_dir.path(), &config, &mut &bad[..], at);
        assert!(
            matches!(refused, Err(StoreError::Corrupt { .. })),
            "{refused:?}"
        );
    }
    let b = EngineState::open(b_dir.path(), &config).unwrap();
    assert!(b.state("r", "mine").unwrap().is_some());
    b.close();
    drop(b);

    // Restored: the decisions up to the snapshot, not this node's own marks; the journal's
    // next message applies on top, and commits go on after its numbers.
    assert_eq!(
        restore_snapshot(b_dir.path(), &config, &mut &file[..], at).unwrap(),
        mark.entries
    );
    let b = EngineState::open_fenced(b_dir.path(), &config, Arc::new(Kept::default()), [9; 32])
        .unwrap();
    assert_eq!(b.journal_position().unwrap(), at);
    assert_eq!(b.durable_cursor(), 12);
    assert!(b.state("r", "mine").unwrap().is_none());
    assert!(b.state("r", "x3").unwrap().is_some() && b.state("r", "x4").unwrap().is_none());
    assert_eq!(b.catch_up(&batches[batches.len() - 1].1).unwrap(), 16);
    assert!(b.state("r", "x4").unwrap().is_some());
    assert!(!b_dir.path().join("engine.restore").exists());
    assert!(!b_dir.path().join("engine.old").exists());

    // A database without a fence takes no snapshot.
    let c_dir = tempfile::tempdir().unwrap();
    let c = EngineState::open(c_dir.path(), &config).unwrap();
    assert!(c.write_snapshot(&mut Vec::new()).is_err());
}

/// The size of each record in `batches` (a 4-byte length, 16 bytes of hash and commit number,
/// then that many bytes): what one journal message must hold whole.
fn record_sizes(batches: &[(u64, Vec<u8>)]) -> Vec<usize> {
    let mut sizes = Vec::new();
    for (_, records) in batches {
        let mut at = 0;
        while let Some(len) = records.get(at..at + 4) {
            let len = 20 + u32::from_be_bytes(len.try_into().unwrap()) as usize;
            sizes.push(len);
            at += len;
        }
    }
    sizes
}

#[test]
fn a_retry_of_many_dead_letters_is_committed_in_pieces_a_journal_message_holds() {
    let dir = tempfile::tempdir().unwrap();
    let kept = Arc::new(Kept::default());
    let config = StoreConfig {
        fsync: false,
        ..StoreConfig::default()
    };
    let state = EngineState::open_fenced(dir.path(), &config, kept.clone(), [9; 32]).unwrap();
    // 600 letters of 2 KiB each: 1.2 MB, more than the servers take in one message.
    let text = "x".repeat(2048);
    let actions: Vec<Change> = (1..=600u64)
        .map(|seq| Change::PutAction(crate::tests::request(seq, 0, crate::tests::sms_of(&text))))
        .collect();
    state.commit(actions, 600).unwrap();
    assert!(state.wait_durable(Duration::from_secs(10)));
    let outbox = state.outbox();
    for item in outbox.pending_actions(0).unwrap() {
        outbox.action_dead(&item, Vec::new(), 1000).unwrap();
    }
    assert_eq!(outbox.dead_letters(0).unwrap().len(), 600);

    let before = lock(&kept.batches).len();
    assert_eq!(outbox.retry_dead(None, 2000).unwrap(), 600);
    assert!(outbox.dead_letters(0).unwrap().is_empty());
    assert_eq!(outbox.pending_actions(0).unwrap().len(), 600);
    let sizes = record_sizes(&lock(&kept.batches)[before..]);
    assert!(
        sizes.len() >= 4,
        "one commit for 1.2 MB of letters: {sizes:?}"
    );
    assert!(
        sizes.iter().all(|&size| size < 512 * 1024),
        "a commit too large for a journal message: {sizes:?}"
    );
}
