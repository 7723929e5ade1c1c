//! The engine state's commits fenced by a partition's shared journal, against a real
//! three-server JetStream cluster on loopback: the owner's commits reach the journal before
//! they are durable locally; a node that opened the journal before another wrote to it has its
//! commit refused, its state fails, and nothing of the refused commit becomes durable.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;

use gancho_cluster::{Journal, journal_stream};
use gancho_node::JournalFence;
use gancho_state::{EngineState, StoreConfig};

#[test]
fn a_stale_owners_commit_is_refused_and_never_becomes_durable() {
    let Some((_cluster, rt, js)) = one_partition() else {
        return;
    };
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Both open the journal where it ends: B paused, A took the partition over.
    let (a_journal, b_journal) = rt.block_on(async {
        (
            Journal::open(&js, 0, "a").await.unwrap(),
            Journal::open(&js, 0, "b").await.unwrap(),
        )
    });
    let config = StoreConfig::default();
    let fence = |journal| Arc::new(JournalFence::new(journal, rt.handle().clone()));
    let a = EngineState::open_fenced(a_dir.path(), &config, fence(a_journal), [1; 32]).unwrap();
    let b = EngineState::open_fenced(b_dir.path(), &config, fence(b_journal), [1; 32]).unwrap();

    a.commit(put("first"), 5).unwrap();
    assert!(a.wait_durable(Duration::from_secs(30)));
    assert_eq!(a.durable_cursor(), 5);

    // B's commit: refused by the journal, B's state fails, nothing of it is durable.
    b.commit(put("stale"), 7).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while b.failure().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "B's commit was not refused"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        b.failure()
            .unwrap()
            .contains("another node owns the partition"),
        "{:?}",
        b.failure()
    );
    assert_eq!(b.durable_cursor(), 0);
    assert!(b.commit(put("later"), 8).is_err());

    // A goes on; the journal holds A's two commits only, each with its cursor.
    a.commit(put("second"), 9).unwrap();
    assert!(a.wait_durable(Duration::from_secs(30)));
    assert_eq!(a.durable_cursor(), 9);
    rt.block_on(async {
        let mut stream = js.get_stream(journal_stream(0)).await.unwrap();
        assert_eq!(stream.info().await.unwrap().state.messages, 2);
        let last = Journal::open(&js, 0, "c").await.unwrap();
        assert_eq!(last.cursor(), 9);
        let message = stream.get_raw_message(2).await.unwrap();
        let payload = String::from_utf8_lossy(&message.payload).into_owned();
        assert!(payload.contains("second"), "{payload}");
    });
}
