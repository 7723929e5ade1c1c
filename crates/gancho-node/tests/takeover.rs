//! Taking a partition's engine state over from its shared journal, against a real three-server
//! JetStream cluster on loopback: the new owner holds every decision of the old one, and once it
//! has taken over (its claim made), the old owner's commits are refused.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;

use gancho_node::take_over;
use gancho_state::{EngineState, StoreConfig};

fn has(state: &EngineState, key: &str) -> bool {
    state.state("r", key).unwrap().is_some()
}

/// Commits and waits until it is durable, or until the state failed; returns whether it is.
fn commit(state: &EngineState, key: &str, cursor: u64) -> bool {
    if state.commit(put(key), cursor).is_err() {
        return false;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while state.durable_cursor() < cursor && state.failure().is_none() {
        assert!(std::time::Instant::now() < deadline, "commit {key} hangs");
        std::thread::sleep(Duration::from_millis(5));
    }
    state.failure().is_none()
}

#[test]
fn a_new_owner_holds_every_earlier_decision_and_only_a_current_fence_commits() {
    let Some((_cluster, rt, js)) = one_partition() else {
        return;
    };
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config = StoreConfig::default();
    let take = |node: &str, dir: &std::path::Path| {
        rt.block_on(take_over(&js, 0, node, dir, &config)).unwrap()
    };

    let (a, cursor) = take("a", a_dir.path());
    assert_eq!(cursor, 0);
    assert!(commit(&a, "x1", 3));
    assert!(commit(&a, "x2", 6));

    // B takes over (A paused, its lease lost): B holds A's decisions, at A's cursor.
    let (b, cursor) = take("b", b_dir.path());
    assert_eq!(cursor, 6);
    assert!(has(&b, "x1") && has(&b, "x2"));
    // The partition's secret, the same on every owner: the same decisions get the same ids.
    assert_eq!(a.secret().bytes(), b.secret().bytes());

    // A wakes: B's takeover ended with its claim (a commit through the fence), so A's commit
    // is refused, and nothing of it is durable.
    assert!(!commit(&a, "a-stale", 9));
    assert!(commit(&b, "x3", 9));

    // A takes over again (B paused now): A holds B's decisions, and B is the stale one.
    a.close();
    drop(a);
    let (a, cursor) = take("a", a_dir.path());
    assert_eq!(cursor, 9);
    assert!(has(&a, "x3") && !has(&a, "a-stale"));
    // A retake reads the journal on from where this database was: the position is kept.
    assert!(
        a.journal_position().unwrap() >= 4,
        "{:?}",
        a.journal_position()
    );
    assert!(!commit(&b, "b-stale", 12));
    assert!(commit(&a, "x4", 12));

    let c_dir = tempfile::tempdir().unwrap();
    let (c, cursor) = take("c", c_dir.path());
    assert_eq!(cursor, 12);
    for key in ["x1", "x2", "x3", "x4"] {
        assert!(has(&c, key), "{key}");
    }
    assert!(!has(&c, "a-stale") && !has(&c, "b-stale"));
}
