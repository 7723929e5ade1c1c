//! Crash points of the engine database's protocols (`docs/architecture.md`, gancho-state's
//! invariants): each test runs the writes in a child process that a fail point stops (`crash`:
//! every write before the point on disk, none after it), then reopens the database and checks
//! the invariant.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use gancho_core::failpoint;
use gancho_core::{Action, ActionRequest, Channel, HttpAction};
use gancho_testkit::crash::crash_in_child;

use super::*;
use crate::outbox::{Attempt, Delivery, OutboxItem};
use crate::schema::{DELIVERY, NEXT, OUTBOX};
use crate::tests::open;

/// A commit of `n` state values for rule `rule` of about 1 KB each (several journal chunks)
/// and as many actions, at `cursor`.
fn big_commit(rule: &str, n: u32, cursor: u64) -> Vec<Change> {
    let mut changes = Vec::new();
    for i in 0..n {
        changes.push(Change::PutState {
            rule: rule.to_owned(),
            key: format!("k{i}"),
            value: StateValue {
                value: serde_json::Value::from("x".repeat(1000)),
                expires_ms: None,
            },
        });
        changes.push(Change::PutAction(action(cursor, i)));
    }
    changes
}

fn action(seq: u64, position: u32) -> ActionRequest {
    let call = Action::Http(HttpAction {
        method: "POST".to_owned(),
        url: format!("https://example.com/{seq}/{position}"),
        headers: Default::default(),
        json: None,
        body: None,
    });
    crate::tests::request(seq, position, call)
}

/// How much of rule `rule`'s commit is in the database: its state values and its actions.
fn present(state: &EngineState, rule: &str, n: u32, cursor: u64) -> (u32, u32) {
    let values = (0..n)
        .filter(|i| state.state(rule, &format!("k{i}")).unwrap().is_some())
        .count() as u32;
    let ids: Vec<String> = state
        .decided_actions(0)
        .unwrap()
        .into_iter()
        .filter(|a| a.event_seq == cursor)
        .map(|a| a.id)
        .collect();
    (values, ids.len() as u32)
}

/// What a restart must find of the commit a crash interrupted.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Found {
    Whole,
    Nothing,
    /// Whole or nothing, depending on what reached the file (`kill` flushes nothing).
    WholeOrNothing,
}

/// A first commit made durable, then a second stopped at `point`; after the restart the second
/// is there as `found` says, the first whole, and no journal is left.
fn crash_in_a_commit(test: &str, point: &'static str, actions: &'static str, found: Found) {
    let dir = tempfile::tempdir().unwrap();
    crash_in_child(module_path!(), test, dir.path(), |dir| {
        let state = open(dir);
        state.commit(big_commit("first", 40, 10), 10).unwrap();
        assert!(state.wait_durable(Duration::from_secs(30)));
        // The first commit's journal goes just after it is durable: wait, so that the point
        // counts only the second commit's steps.
        let gone = gancho_testkit::wait_until(Duration::from_secs(30), || {
            (crate::journal_tests::journal_bytes(dir) == 0).then_some(())
        });
        assert!(gone.is_some(), "the first commit's journal stayed");
        failpoint::set(point, actions).unwrap();
        state.commit(big_commit("second", 80, 20), 20).unwrap();
        state.wait_durable(Duration::from_secs(30));
        // Closing flushes: a point on the way out stops it too.
        state.close();
    });
    let state = open(dir.path());
    assert_eq!(
        present(&state, "first", 40, 10),
        (40, 40),
        "the first commit"
    );
    let cursor = state.cursor().unwrap();
    let second = present(&state, "second", 80, 20);
    match (found, cursor) {
        (Found::Whole | Found::WholeOrNothing, 20) => assert_eq!(second, (80, 80)),
        (Found::Nothing | Found::WholeOrNothing, 10) => assert_eq!(second, (0, 0)),
        _ => panic!("{found:?}: cursor {cursor}, second commit {second:?}"),
    }
    assert_eq!(
        crate::journal_tests::journal_bytes(dir.path()),
        0,
        "journal records left after open"
    );
    state.close();
}

#[test]
fn crash_before_a_journals_marker_loses_the_commit_whole() {
    crash_in_a_commit(
        "crash_before_a_journals_marker_loses_the_commit_whole",
        "state.journal.before_marker",
        "crash",
        Found::Nothing,
    );
}

#[test]
fn crash_after_a_journals_marker_completes_the_commit() {
    crash_in_a_commit(
        "crash_after_a_journals_marker_completes_the_commit",
        "state.apply.before_writes",
        "crash",
        Found::Whole,
    );
}

#[test]
fn crash_halfway_through_a_commits_writes_completes_it() {
    crash_in_a_commit(
        "crash_halfway_through_a_commits_writes_completes_it",
        "state.apply.halfway",
        "crash",
        Found::Whole,
    );
}

#[test]
fn crash_before_a_commits_sync_keeps_it_whole() {
    crash_in_a_commit(
        "crash_before_a_commits_sync_keeps_it_whole",
        "state.apply.before_sync",
        "crash",
        Found::Whole,
    );
}

#[test]
fn crash_before_emptying_the_journal_keeps_the_commit_applied_once() {
    // The commit is durable in the tree, its record still in the journal: the open skips it
    // (its number is at or below `Mapplied`) rather than apply it over what came after.
    crash_in_a_commit(
        "crash_before_emptying_the_journal_keeps_the_commit_applied_once",
        "state.journal.remove",
        "crash",
        Found::Whole,
    );
}

// `kill` flushes nothing: what the engine database had written to its file is what a crash
// leaves, some prefix of the commit's writes. Whatever it is, the commit is whole or absent.

#[test]
fn kill_before_a_journals_marker_leaves_the_commit_whole_or_absent() {
    crash_in_a_commit(
        "kill_before_a_journals_marker_leaves_the_commit_whole_or_absent",
        "state.journal.before_marker",
        "kill",
        Found::WholeOrNothing,
    );
}

#[test]
fn kill_before_a_commits_writes_leaves_it_whole_or_absent() {
    crash_in_a_commit(
        "kill_before_a_commits_writes_leaves_it_whole_or_absent",
        "state.apply.before_writes",
        "kill",
        Found::WholeOrNothing,
    );
}

#[test]
fn kill_halfway_through_a_commits_writes_leaves_it_whole_or_absent() {
    crash_in_a_commit(
        "kill_halfway_through_a_commits_writes_leaves_it_whole_or_absent",
        "state.apply.halfway",
        "kill",
        Found::WholeOrNothing,
    );
}

#[test]
fn kill_before_a_commits_sync_leaves_it_whole_or_absent() {
    crash_in_a_commit(
        "kill_before_a_commits_sync_leaves_it_whole_or_absent",
        "state.apply.before_sync",
        "kill",
        Found::WholeOrNothing,
    );
}

/// Outbox of three http actions, durable; the first tried once and due at 1000.
fn outbox_with_a_retry(state: &EngineState) -> Vec<OutboxItem> {
    state
        .commit((0..3).map(|i| Change::PutAction(action(5, i))).collect(), 5)
        .unwrap();
    assert!(state.wait_durable(Duration::from_secs(30)));
    let outbox = state.outbox();
    let (items, _) = outbox.fresh_actions(Channel::Http, None, 10).unwrap();
    assert_eq!(items.len(), 3);
    let delivery = Delivery {
        first_ms: 500,
        next_ms: 1000,
        attempts: vec![Attempt {
            at_ms: 500,
            error: "451".to_owned(),
            permanent: false,
        }],
    };
    outbox.action_rescheduled(&items[0], &delivery).unwrap();
    let mut items = items;
    items[0].delivery = Some(delivery);
    items
}

/// Where an outbox item stands after a restart.
#[derive(Debug, PartialEq)]
enum Standing {
    /// Never tried: the lanes' first read finds it.
    Fresh,
    /// Due at this time (once), through the retry index.
    Due(i64),
    Delivered,
    Dead,
    /// Still to deliver and a dead letter too (a crash between the two writes).
    DueAndDead(i64),
}

/// The item's standing, checking that the retry index and delivery records agree: a tried
/// item is returned by `due_actions` exactly once, at its time and not before.
fn standing(state: &EngineState, item: &OutboxItem) -> Standing {
    let outbox = state.outbox();
    let dead = outbox
        .dead_letters(0)
        .unwrap()
        .iter()
        .any(|d| d.action.id == item.action.id);
    let now = outbox.action_item(&item.key).unwrap();
    let pending = match now {
        None => None,
        Some(OutboxItem { delivery: None, .. }) => {
            let (fresh, _) = outbox.fresh_actions(Channel::Http, None, 100).unwrap();
            assert!(
                fresh.iter().any(|f| f.key == item.key),
                "a new item is found"
            );
            Some(None)
        }
        Some(OutboxItem {
            delivery: Some(d), ..
        }) => {
            let early = outbox
                .due_actions(Channel::Http, d.next_ms - 1, 100)
                .unwrap();
            assert!(
                !early.iter().any(|f| f.key == item.key),
                "due before its time"
            );
            let due = outbox.due_actions(Channel::Http, d.next_ms, 100).unwrap();
            let times = due.iter().filter(|f| f.key == item.key).count();
            assert_eq!(times, 1, "a tried item is due once at its time");
            Some(Some(d.next_ms))
        }
    };
    // What the retry index holds after a pass is current: every `N` key names an item with
    // a record and an `O` key.
    outbox
        .due_actions(Channel::Http, i64::MAX - 1, 100)
        .unwrap();
    for key in state.tree.scan_prefix([NEXT]).keys() {
        let key = key.unwrap();
        let suffix = &key[10..];
        let mut o = vec![OUTBOX];
        o.extend_from_slice(suffix);
        let mut p = vec![DELIVERY];
        p.extend_from_slice(suffix);
        assert!(
            state.tree.contains_key(o).unwrap(),
            "an N key without its item"
        );
        assert!(
            state.tree.contains_key(p).unwrap(),
            "an N key without its record"
        );
    }
    match (pending, dead) {
        (None, false) => Standing::Delivered,
        (None, true) => Standing::Dead,
        (Some(None), false) => Standing::Fresh,
        (Some(Some(t)), false) => Standing::Due(t),
        (Some(Some(t)), true) => Standing::DueAndDead(t),
        (Some(None), true) => panic!("a dead letter also waiting as new"),
    }
}

/// `op` on the first (tried) item stopped at `point`; then each item's standing after the
/// restart must be one of `allowed`, and the other two items untouched.
fn crash_in_an_outbox_update(
    test: &str,
    point: &'static str,
    actions: &'static str,
    op: fn(&EngineState, &OutboxItem),
    allowed: &[Standing],
) {
    let dir = tempfile::tempdir().unwrap();
    crash_in_child(module_path!(), test, dir.path(), |dir| {
        let state = open(dir);
        let items = outbox_with_a_retry(&state);
        failpoint::set(point, actions).unwrap();
        op(&state, &items[0]);
    });
    let state = open(dir.path());
    let items: Vec<OutboxItem> = (0..3)
        .map(|i| {
            let action = action(5, i);
            OutboxItem {
                key: outbox_key(&action),
                action,
                delivery: None,
            }
        })
        .collect();
    let got = standing(&state, &items[0]);
    assert!(
        allowed.contains(&got),
        "after {point}: {got:?}, not one of {allowed:?}"
    );
    assert_eq!(standing(&state, &items[1]), Standing::Fresh);
    assert_eq!(standing(&state, &items[2]), Standing::Fresh);
    state.close();
}

/// The `O` key suffix of an action (what `schema::outbox_key` builds, without its prefix).
fn outbox_key(action: &ActionRequest) -> Vec<u8> {
    crate::schema::outbox_key(action)[1..].to_vec()
}

#[test]
fn crash_in_marking_a_retry_delivered_never_delivers_it_again() {
    crash_in_an_outbox_update(
        "crash_in_marking_a_retry_delivered_never_delivers_it_again",
        "outbox.delivered.after_item",
        "crash",
        |state, item| state.outbox().action_delivered(item, 0, "ok").unwrap(),
        &[Standing::Delivered],
    );
}

#[test]
fn crash_between_a_delivered_items_record_and_its_index_key() {
    crash_in_an_outbox_update(
        "crash_between_a_delivered_items_record_and_its_index_key",
        "outbox.clear.after_record",
        "crash",
        |state, item| state.outbox().action_delivered(item, 0, "ok").unwrap(),
        &[Standing::Delivered],
    );
}

fn lease(state: &EngineState, item: &OutboxItem) {
    let mut leased = item.delivery.clone().unwrap();
    leased.next_ms = 61_000;
    state.outbox().action_rescheduled(item, &leased).unwrap();
}

#[test]
fn crash_in_a_lease_before_its_record_leaves_the_retry_due_as_before() {
    crash_in_an_outbox_update(
        "crash_in_a_lease_before_its_record_leaves_the_retry_due_as_before",
        "outbox.reschedule.after_index",
        "crash",
        lease,
        &[Standing::Due(1000)],
    );
}

#[test]
fn crash_in_a_lease_after_its_record_makes_the_retry_due_at_the_lease_end() {
    crash_in_an_outbox_update(
        "crash_in_a_lease_after_its_record_makes_the_retry_due_at_the_lease_end",
        "outbox.reschedule.after_record",
        "crash",
        lease,
        &[Standing::Due(61_000)],
    );
}

#[test]
fn crash_in_rescheduling_a_new_item_keeps_it_to_deliver() {
    crash_in_an_outbox_update(
        "crash_in_rescheduling_a_new_item_keeps_it_to_deliver",
        "outbox.reschedule.after_index",
        "crash",
        |state, _| {
            // The second item, never tried, is deferred (its destination is busy): the crash
            // comes before its record, and the caller finds it new again.
            let (items, _) = state
                .outbox()
                .fresh_actions(Channel::Http, None, 10)
                .unwrap();
            defer_new(state, &items[0]);
        },
        // The first item, the tried one, is untouched.
        &[Standing::Due(1000)],
    );
}

fn defer_new(state: &EngineState, item: &OutboxItem) {
    let delivery = Delivery {
        first_ms: 2000,
        next_ms: 9000,
        attempts: Vec::new(),
    };
    state.outbox().action_rescheduled(item, &delivery).unwrap();
}

fn bury(state: &EngineState, item: &OutboxItem) {
    let attempts = item.delivery.clone().unwrap().attempts;
    state.outbox().action_dead(item, attempts, 3000).unwrap();
}

#[test]
fn crash_between_a_dead_letter_and_the_removal_of_its_item_loses_neither() {
    crash_in_an_outbox_update(
        "crash_between_a_dead_letter_and_the_removal_of_its_item_loses_neither",
        "outbox.dead.after_letter",
        "crash",
        bury,
        &[Standing::DueAndDead(1000)],
    );
}

#[test]
fn crash_after_burying_an_item_before_its_record_goes_leaves_a_dead_letter() {
    crash_in_an_outbox_update(
        "crash_after_burying_an_item_before_its_record_goes_leaves_a_dead_letter",
        "outbox.dead.after_item",
        "crash",
        bury,
        &[Standing::Dead],
    );
}

#[test]
fn crash_while_putting_a_dead_letter_back_keeps_it_to_deliver() {
    crash_in_an_outbox_update(
        "crash_while_putting_a_dead_letter_back_keeps_it_to_deliver",
        "outbox.revive.after_item",
        "crash",
        |state, item| {
            // Buried first (no point set on the way), then put back at 7000.
            failpoint::remove("outbox.revive.after_item");
            bury(state, item);
            failpoint::set("outbox.revive.after_item", "crash").unwrap();
            state.outbox().retry_dead(None, 7000).unwrap();
        },
        &[Standing::DueAndDead(7000)],
    );
}
