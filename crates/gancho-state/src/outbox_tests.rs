//! The outbox's updates, as the executor and operators make them: fresh to retried to dead and
//! back, and channel bytes.
#![allow(clippy::unwrap_used)]

use gancho_core::{Action, HttpAction};

use super::*;
use crate::Change;
use crate::schema::channel_byte_known;
use crate::tests::open;

fn action(seq: u64, position: u32, http: bool) -> ActionRequest {
    let action = if http {
        Action::Http(HttpAction {
            method: "POST".to_owned(),
            url: "https://example.com/".to_owned(),
            headers: Default::default(),
            json: None,
            body: None,
        })
    } else {
        crate::tests::sms_of("hi")
    };
    crate::tests::request(seq, position, action)
}

#[test]
fn items_flow_from_fresh_to_retry_to_dead_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let state = open(dir.path());
    let outbox = state.outbox();
    let changes: Vec<Change> = [action(1, 0, true), action(1, 1, false), action(2, 0, true)]
        .into_iter()
        .map(Change::PutAction)
        .collect();
    state.commit(changes, 2).unwrap();
    // Not durable yet: nothing to deliver, but listed.
    assert_eq!(outbox.pending_actions(0).unwrap().len(), 3);
    assert!(state.wait_durable(std::time::Duration::from_secs(10)));
    let (fresh, last) = outbox.fresh_actions(Channel::Http, None, 10).unwrap();
    assert_eq!(fresh.len(), 2);
    assert_eq!(last.as_ref(), Some(&fresh[1].key));
    let (after, _) = outbox
        .fresh_actions(Channel::Http, Some(&fresh[0].key), 10)
        .unwrap();
    assert_eq!(after, fresh[1..]);
    assert_eq!(
        outbox
            .fresh_actions(Channel::Sms, None, 10)
            .unwrap()
            .0
            .len(),
        1
    );

    // The first fails: it is due again at 1000, and no longer new.
    let first = &fresh[0];
    let delivery = Delivery {
        first_ms: 500,
        next_ms: 1000,
        attempts: vec![Attempt {
            at_ms: 500,
            error: "503".to_owned(),
            permanent: false,
        }],
    };
    outbox.action_rescheduled(first, &delivery).unwrap();
    // Looked at and skipped: the reader can read on past it.
    let (fresh_now, last) = outbox.fresh_actions(Channel::Http, None, 10).unwrap();
    assert_eq!(last.as_ref(), Some(&fresh[1].key));
    assert_eq!(fresh_now.len(), 1);
    assert!(
        outbox
            .due_actions(Channel::Http, 999, 10)
            .unwrap()
            .is_empty()
    );
    assert_eq!(outbox.next_action_due(Channel::Http).unwrap(), Some(1000));
    let due = outbox.due_actions(Channel::Http, 1000, 10).unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].delivery.as_ref(), Some(&delivery));

    // Fails again, later; then for good.
    let mut again = delivery.clone();
    again.next_ms = 3000;
    outbox.action_rescheduled(&due[0], &again).unwrap();
    assert!(
        outbox
            .due_actions(Channel::Http, 2000, 10)
            .unwrap()
            .is_empty()
    );
    let due = outbox.due_actions(Channel::Http, 3000, 10).unwrap();
    outbox
        .action_dead(&due[0], again.attempts.clone(), 3000)
        .unwrap();
    assert_eq!(outbox.next_action_due(Channel::Http).unwrap(), None);
    assert_eq!(outbox.pending_actions(0).unwrap().len(), 2);
    let dead = outbox.dead_letters(0).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].action, first.action);

    // An unreadable letter beside it hides nothing.
    outbox.insert(&[DEAD, b'h', 0xff], b"not json").unwrap();
    assert_eq!(outbox.dead_letters(0).unwrap().len(), 1);

    // Put back: due at once, then delivered.
    assert_eq!(outbox.retry_dead(Some("nope"), 4000).unwrap(), 0);
    assert_eq!(outbox.retry_dead(Some(&first.action.id), 4000).unwrap(), 1);
    assert!(outbox.dead_letters(0).unwrap().is_empty());
    let due = outbox.due_actions(Channel::Http, 4000, 10).unwrap();
    assert_eq!(due.len(), 1);
    outbox.action_delivered(&due[0], 0, "ok").unwrap();
    assert!(
        outbox
            .due_actions(Channel::Http, i64::MAX - 1, 10)
            .unwrap()
            .is_empty()
    );
    assert_eq!(outbox.pending_actions(0).unwrap().len(), 2);
    state.close();
}

#[test]
fn channel_bytes_are_distinct_and_known() {
    let bytes: std::collections::BTreeSet<u8> =
        Channel::ALL.iter().map(|&c| channel_byte(c)).collect();
    assert_eq!(bytes.len(), Channel::ALL.len());
    assert!(bytes.iter().all(|&b| channel_byte_known(b)));
    // An old-layout key's second byte is the top byte of a seq.
    assert!(!channel_byte_known(0));
}
