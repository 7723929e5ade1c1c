#![allow(clippy::unwrap_used)]

use gancho_core::{Action, Channel, SmsAction};

use super::*;
use crate::migrate::tests::{
    OLD_PREFIXES, has_prefix, write_old_expectation, write_old_outbox_item,
};
use crate::poison::{LastLife, Poisoned};

/// Opens the engine database of the store folder `dir`, without fsync.
pub(crate) fn open(dir: &Path) -> EngineState {
    // A store closed in this process lets go of its lock shortly after (sled's own thread).
    let config = StoreConfig {
        fsync: false,
        cache_capacity: 64 << 20,
        ..StoreConfig::default()
    };
    EngineState::open(dir, &config).unwrap()
}

pub(crate) fn put(rule: &str, key: &str, v: i64) -> Change {
    Change::PutState {
        rule: rule.to_owned(),
        key: key.to_owned(),
        value: StateValue {
            value: serde_json::Value::from(v),
            expires_ms: None,
        },
    }
}

pub(crate) fn value(state: &EngineState, key: &str) -> Option<serde_json::Value> {
    state.state("r", key).unwrap().map(|v| v.value)
}

fn shape() -> ExpectShape {
    ExpectShape {
        source: "mailjet".to_owned(),
        kind: "open".to_owned(),
        names: vec!["MessageID".to_owned()],
        rule: "r".to_owned(),
        callback: "f".to_owned(),
    }
}

fn expect_timer(name: &str, due_ms: i64, keys: Option<&str>) -> Timer {
    Timer {
        rule: "r".to_owned(),
        name: name.to_owned(),
        uid: format!("r/{name}/1.1"),
        due_ms,
        callback: "f".to_owned(),
        data: serde_json::Value::Null,
        origin_seq: 1,
        orphaned: false,
        expect: keys.map(|k| Expectation {
            source: "mailjet".to_owned(),
            kind: "open".to_owned(),
            keys: vec![("MessageID".to_owned(), k.to_owned())],
            from_ms: 0,
            to_ms: due_ms,
        }),
    }
}

#[test]
fn timers_are_found_by_due_time_and_by_name_and_deleted_whole() {
    let dir = tempfile::tempdir().unwrap();
    let state = open(dir.path());
    let name = expectation_name("mailjet", "open", &[("MessageID", "42")], "f");
    assert_eq!(name, r#"expect:mailjet.open:[["MessageID","42"]]:f"#);
    let early = expect_timer("early", -5, None);
    let late = expect_timer(&name, 500, Some("42"));
    state
        .commit(
            vec![
                Change::PutTimer(late.clone()),
                Change::PutTimer(early.clone()),
                Change::PutShape(shape()),
            ],
            1,
        )
        .unwrap();
    assert_eq!(state.next_due().unwrap(), Some(-5));
    assert_eq!(
        state.due_timers(0, 10).unwrap(),
        std::slice::from_ref(&early)
    );
    assert_eq!(state.due_timers(500, 10).unwrap(), [early, late.clone()]);
    assert_eq!(state.timer("r", &name).unwrap(), Some(late.clone()));
    assert_eq!(state.expectation_shapes().unwrap(), [shape()]);
    state.commit(vec![Change::DeleteTimer(late)], 2).unwrap();
    assert_eq!(state.timer("r", &name).unwrap(), None);
    assert_eq!(state.due_timers(1000, 10).unwrap().len(), 1);
    assert_eq!(state.scan(&[DUE], None, 10).unwrap().len(), 1);
    // Set again for later without deleting it: its old entry by due time is dropped when
    // it comes up, and the timer is due at its new time only.
    let moved = Timer {
        due_ms: 700,
        ..expect_timer("early", -5, None)
    };
    state
        .commit(vec![Change::PutTimer(moved.clone())], 3)
        .unwrap();
    assert!(state.wait_durable(std::time::Duration::from_secs(10)));
    assert_eq!(state.due_timers(0, 10).unwrap(), []);
    assert_eq!(state.scan(&[DUE], None, 10).unwrap().len(), 1);
    assert_eq!(state.due_timers(700, 10).unwrap(), [moved]);
}

/// Makes the closed engine database of `dir` a store written before formats had versions.
fn forget_format(dir: &Path) {
    let db = Db::open(&dir.join("engine"), 16 << 20).unwrap();
    let tree = db.tree("engine").unwrap();
    tree.remove(migrate::FORMAT.key).unwrap();
    db.flush().unwrap();
}

/// `action`, as rule `r` decided it on event `seq` at `position`.
pub(crate) fn request(seq: u64, position: u32, action: Action) -> ActionRequest {
    ActionRequest {
        id: gancho_core::action_id("r", seq, position),
        rule: "r".to_owned(),
        event_seq: seq,
        position,
        decided_ms: 0,
        action,
    }
}

/// An SMS of `text`.
pub(crate) fn sms_of(text: &str) -> Action {
    Action::Sms(SmsAction {
        to: "+34600000001".to_owned(),
        text: text.to_owned(),
    })
}

fn sms(seq: u64, position: u32) -> ActionRequest {
    request(seq, position, sms_of("hi"))
}

#[test]
fn a_store_of_format_0_is_migrated_once_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let name = expectation_name("mailjet", "open", &[("MessageID", "42")], "f");
    let timer = expect_timer(&name, 500, Some("42"));
    let (old, current) = (sms(1, 0), sms(2, 0));
    {
        let state = open(dir.path());
        state
            .commit(
                vec![
                    Change::PutTimer(timer.clone()),
                    Change::PutAction(current.clone()),
                ],
                2,
            )
            .unwrap();
        // What the layouts of version 0 wrote besides: an expectation entry and a shape
        // without its rule, and an outbox key without its channel.
        write_old_expectation(&state.tree, &name);
        write_old_outbox_item(&state.tree, &old);
        state.close();
    }
    forget_format(dir.path());
    for _ in 0..2 {
        let state = open(dir.path());
        assert_eq!(state.expectation_shapes().unwrap(), [shape()]);
        assert_eq!(state.timer("r", &name).unwrap(), Some(timer.clone()));
        assert!(!OLD_PREFIXES.iter().any(|&p| has_prefix(&state.tree, p)));
        assert_eq!(
            state.decided_actions(0).unwrap(),
            [old.clone(), current.clone()]
        );
        assert_eq!(
            state.tree.get(migrate::FORMAT.key).unwrap().as_deref(),
            Some(&migrate::FORMAT.current.to_be_bytes()[..])
        );
        state.close();
    }
}

#[test]
fn no_outbox_item_is_lost_at_open_whatever_its_channel() {
    let dir = tempfile::tempdir().unwrap();
    let mut items: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    {
        let state = open(dir.path());
        let actions: Vec<Change> = (1..=3).map(|seq| Change::PutAction(sms(seq, 0))).collect();
        state.commit(actions, 3).unwrap();
        assert!(state.wait_durable(std::time::Duration::from_secs(10)));
        // An item of a channel this build does not know (one a later build adds), under a
        // byte no channel has: a format upgrade must not take it for an old layout.
        let mut key = vec![b'O', b'x'];
        key.extend_from_slice(&4u64.to_be_bytes());
        state.tree.insert(&key, &b"{}"[..]).unwrap();
        for entry in state.tree.scan_prefix([b'O']) {
            let (k, v) = entry.unwrap();
            items.push((k.to_vec(), v.to_vec()));
        }
        state.close();
    }
    assert_eq!(items.len(), 4);
    for channel in Channel::ALL {
        assert!(schema::channel_byte_known(schema::channel_byte(channel)));
    }
    for _ in 0..3 {
        let state = open(dir.path());
        let now: Vec<(Vec<u8>, Vec<u8>)> = state
            .tree
            .scan_prefix([b'O'])
            .map(|e| {
                let (k, v) = e.unwrap();
                (k.to_vec(), v.to_vec())
            })
            .collect();
        assert_eq!(now, items);
        state.close();
    }
}

#[test]
fn a_store_keeps_its_secret_and_two_stores_have_different_ones() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = open(a.path());
    let secret = *first.secret().bytes();
    first.close();
    drop(first);
    let again = open(a.path());
    assert_eq!(*again.secret().bytes(), secret, "kept across a restart");
    assert_eq!(format!("{:?}", again.secret()), "StoreSecret(<redacted>)");
    let other = open(b.path());
    assert_ne!(
        *other.secret().bytes(),
        secret,
        "another store, another secret"
    );
    again.close();
    other.close();
}

#[test]
fn pending_timers_name_the_events_they_refer_to_committed_or_applied() {
    let dir = tempfile::tempdir().unwrap();
    let state = open(dir.path());
    let mut plain = expect_timer("t1", 1_000, None);
    plain.origin_seq = 7;
    let mut expecting = expect_timer("t2", 2_000, Some("m1"));
    expecting.origin_seq = 9;
    expecting.data = serde_json::json!({"seq": 4});
    state
        .commit(vec![Change::PutTimer(plain.clone())], 10)
        .unwrap();
    assert!(state.wait_durable(std::time::Duration::from_secs(10)));
    state
        .commit(vec![Change::PutTimer(expecting.clone())], 11)
        .unwrap();
    let seqs = state.referenced_seqs().unwrap();
    assert_eq!(seqs, [7, 9, 4].into_iter().collect());
    state
        .commit(
            vec![Change::DeleteTimer(plain), Change::DeleteTimer(expecting)],
            12,
        )
        .unwrap();
    assert!(state.wait_durable(std::time::Duration::from_secs(10)));
    assert!(state.referenced_seqs().unwrap().is_empty());
}

#[test]
fn state_long_expired_goes_and_the_rest_stays() {
    let dir = tempfile::tempdir().unwrap();
    let state = open(dir.path());
    let with_ttl = |key: &str, expires_ms: Option<i64>| Change::PutState {
        rule: "r".to_owned(),
        key: key.to_owned(),
        value: StateValue {
            value: serde_json::Value::from(1),
            expires_ms,
        },
    };
    state
        .commit(
            vec![
                with_ttl("old", Some(100)),
                with_ttl("throttle:x", Some(500)),
                with_ttl("fresh", Some(5_000)),
                with_ttl("forever", None),
            ],
            1,
        )
        .unwrap();
    assert!(state.wait_durable(std::time::Duration::from_secs(10)));
    assert_eq!(state.drop_expired_state(1_000).unwrap(), 2);
    let present = |key: &str| state.tree.get(state_key("r", key)).unwrap().is_some();
    assert!(!present("old") && !present("throttle:x"));
    assert!(present("fresh") && present("forever"));
}

#[test]
fn dead_letters_past_their_retention_go() {
    let dir = tempfile::tempdir().unwrap();
    let state = open(dir.path());
    let outbox = state.outbox();
    state
        .commit(
            vec![Change::PutAction(sms(1, 0)), Change::PutAction(sms(2, 0))],
            2,
        )
        .unwrap();
    assert!(state.wait_durable(std::time::Duration::from_secs(10)));
    let items = outbox.pending_actions(0).unwrap();
    outbox.action_dead(&items[0], Vec::new(), 1_000).unwrap();
    outbox.action_dead(&items[1], Vec::new(), 9_000).unwrap();
    assert_eq!(outbox.prune_dead(5_000).unwrap(), 1);
    let left = outbox.dead_letters(0).unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].dead_ms, 9_000);
}

#[test]
fn an_events_actions_are_found_by_its_seq_pending_or_dead() {
    let dir = tempfile::tempdir().unwrap();
    let state = open(dir.path());
    let outbox = state.outbox();
    let mut email = sms(7, 1);
    email.id = gancho_core::action_id("r", 7, 1);
    email.action = Action::Email(gancho_core::EmailAction {
        to: vec!["ana@example.com".to_owned()],
        subject: "hi".to_owned(),
        text: "hello".to_owned(),
        html: None,
    });
    state
        .commit(
            vec![
                Change::PutAction(sms(6, 0)),
                Change::PutAction(sms(7, 0)),
                Change::PutAction(email),
                Change::PutAction(sms(8, 0)),
                Change::PutAction(sms(u64::MAX, 0)),
            ],
            8,
        )
        .unwrap();
    let pending_of = |seq: u64| {
        let mut found = Vec::new();
        outbox
            .each_pending_of_event(seq, |item| {
                found.push((item.action.event_seq, item.action.position));
                Ok(())
            })
            .unwrap();
        found.sort_unstable();
        found
    };
    // Committed, maybe not yet applied: found either way.
    assert_eq!(pending_of(7), vec![(7, 0), (7, 1)]);
    assert!(state.wait_durable(std::time::Duration::from_secs(10)));
    assert_eq!(pending_of(7), vec![(7, 0), (7, 1)]);
    assert_eq!(pending_of(u64::MAX), vec![(u64::MAX, 0)]);
    assert!(pending_of(9).is_empty());
    let seven: Vec<_> = outbox
        .pending_actions(0)
        .unwrap()
        .into_iter()
        .filter(|i| i.action.event_seq == 7)
        .collect();
    outbox.action_dead(&seven[0], Vec::new(), 1).unwrap();
    let mut dead = Vec::new();
    outbox
        .each_dead_of_event(7, |letter| {
            dead.push(letter.action.position);
            Ok(())
        })
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(pending_of(7).len(), 1);
}

#[test]
fn a_life_that_ends_uncleanly_names_the_run_it_died_in_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let state = open(dir.path());
    // A clean life leaves nothing to be careful about.
    assert_eq!(state.begin_life().unwrap(), LastLife::default());
    state.note_batch(1, 40).unwrap();
    state.end_life().unwrap();
    assert!(!state.begin_life().unwrap().unclean);
    // An unclean one: the last batch begun is processed carefully.
    state.note_batch(41, 80).unwrap();
    let last = state.begin_life().unwrap();
    assert_eq!(
        (last.unclean, last.careful_until, last.suspect),
        (true, Some(80), None)
    );
    // A death in careful mode is counted against its run, twice in a row.
    for deaths in 1..=2 {
        state.note_run(57, "bomb").unwrap();
        let last = state.begin_life().unwrap();
        assert_eq!(last.suspect, Some((57, "bomb".to_owned(), deaths)));
    }
    // A death in another run starts its count again.
    state.note_run(58, "other").unwrap();
    assert_eq!(
        state.begin_life().unwrap().suspect,
        Some((58, "other".to_owned(), 1))
    );
    let poisoned = Poisoned {
        seq: 58,
        rule: "other".to_owned(),
        kind: "bank.poison".to_owned(),
        deaths: 3,
        set_aside_ms: 1,
    };
    state.set_aside(&poisoned).unwrap();
    state.end_careful().unwrap();
    assert!(state.is_set_aside(58, "other").unwrap());
    assert!(!state.is_set_aside(57, "bomb").unwrap());
    assert_eq!(state.poisoned(0).unwrap(), vec![poisoned]);
    assert_eq!(state.begin_life().unwrap().suspect, None);
}

#[test]
fn the_outbox_is_listed_in_decision_order_across_channels_committed_or_applied() {
    let dir = tempfile::tempdir().unwrap();
    let state = open(dir.path());
    let http = |seq: u64, rule: &str, position: u32| ActionRequest {
        id: gancho_core::action_id(rule, seq, position),
        rule: rule.to_owned(),
        event_seq: seq,
        position,
        decided_ms: 0,
        action: Action::Http(gancho_core::HttpAction {
            method: "POST".to_owned(),
            url: "http://127.0.0.1:1/".to_owned(),
            headers: Default::default(),
            json: None,
            body: None,
        }),
    };
    let mut sms_b = sms(3, 0);
    sms_b.rule = "bb".to_owned();
    state
        .commit(
            vec![
                Change::PutAction(sms(5, 1)),
                Change::PutAction(http(5, "r", 0)),
                Change::PutAction(sms(3, 0)),
                Change::PutAction(sms_b),
                Change::PutAction(http(1, "zz", 7)),
            ],
            5,
        )
        .unwrap();
    let order = |state: &EngineState, limit: usize| -> Vec<(u64, String, u32)> {
        state
            .outbox()
            .pending_actions(limit)
            .unwrap()
            .into_iter()
            .map(|i| (i.action.event_seq, i.action.rule, i.action.position))
            .collect()
    };
    let expected = vec![
        (1, "zz".to_owned(), 7),
        // A shorter rule name first: names are length-prefixed in keys.
        (3, "r".to_owned(), 0),
        (3, "bb".to_owned(), 0),
        (5, "r".to_owned(), 0),
        (5, "r".to_owned(), 1),
    ];
    // Before the applier has written them (maybe), and after.
    assert_eq!(order(&state, 0), expected);
    assert!(state.wait_durable(std::time::Duration::from_secs(10)));
    assert_eq!(order(&state, 0), expected);
    assert_eq!(order(&state, 2), expected[..2].to_vec());
    // Dead letters too, whatever the order they died in.
    let outbox = state.outbox();
    for item in outbox.pending_actions(0).unwrap().into_iter().rev() {
        outbox.action_dead(&item, Vec::new(), 1).unwrap();
    }
    let dead: Vec<(u64, String, u32)> = outbox
        .dead_letters(0)
        .unwrap()
        .into_iter()
        .map(|d| (d.action.event_seq, d.action.rule, d.action.position))
        .collect();
    assert_eq!(dead, expected);
}

#[test]
fn traces_reruns_and_deliveries_are_found_and_pruned_by_age() {
    use crate::traces::{BatchTrace, RunTrace};
    let dir = tempfile::tempdir().unwrap();
    let state = open(dir.path());
    let run = |seq: u64, error: Option<&str>, rerun: bool| RunTrace {
        seq,
        rule: "r".to_owned(),
        error: error.map(str::to_owned),
        actions: Vec::new(),
        queries: Vec::new(),
        changes: Vec::new(),
        rerun,
        timer: None,
    };
    let batch = |received_ms: i64, runs: Vec<RunTrace>| BatchTrace { received_ms, runs };
    state
        .save_traces(
            1,
            &batch(
                1_000,
                vec![run(1, Some("boom"), false), run(2, None, false)],
            ),
        )
        .unwrap();
    state
        .save_traces(
            3,
            &batch(
                5_000,
                vec![run(3, Some("boom"), false), run(4, Some("boom"), false)],
            ),
        )
        .unwrap();
    // Event 4 was re-run without failing: no longer a failed run.
    state
        .save_reruns(4, 5_000, vec![run(4, None, true)])
        .unwrap();
    assert_eq!(state.failed_runs("r", i64::MIN).unwrap(), vec![1, 3]);
    assert_eq!(state.failed_runs("r", 2_000).unwrap(), vec![3]);
    assert_eq!(
        state.failed_runs("other", i64::MIN).unwrap(),
        Vec::<u64>::new()
    );
    let traced = state.traces_of(4).unwrap();
    assert_eq!(traced.len(), 2);
    assert!(traced[1].rerun);
    // Pruning goes by age: the first batch goes.
    state.prune_traces(2_000).unwrap();
    assert!(state.traces_of(1).unwrap().is_empty());
    assert_eq!(state.traces_of(3).unwrap().len(), 1);
    assert_eq!(state.traces_of(4).unwrap().len(), 2);
    state.prune_traces(10_000).unwrap();
    assert!(state.traces_of(4).unwrap().is_empty());
}

#[test]
fn the_delivery_history_lists_filters_finds_and_prunes_deliveries() {
    use crate::sent::SentQuery;
    let dir = tempfile::tempdir().unwrap();
    let state = open(dir.path());
    let outbox = state.outbox();
    let item = |seq: u64| OutboxItem {
        key: Vec::new(),
        action: sms(seq, 0),
        delivery: None,
    };
    for (seq, at) in [(1, 1_000), (2, 2_000), (3, 3_000)] {
        outbox
            .action_delivered(&item(seq), at, &format!("twilio SM{seq}"))
            .unwrap();
    }
    let list = |query: &SentQuery| {
        let mut out = Vec::new();
        outbox
            .each_sent(query, |sent| {
                out.push(sent.event_seq);
                Ok(())
            })
            .unwrap();
        out
    };
    assert_eq!(list(&SentQuery::default()), vec![1, 2, 3]);
    let newest = SentQuery {
        limit: 2,
        ..SentQuery::default()
    };
    assert_eq!(list(&newest), vec![2, 3]);
    let since = SentQuery {
        since_ms: Some(2_000),
        ..SentQuery::default()
    };
    assert_eq!(list(&since), vec![2, 3]);
    let email = SentQuery {
        channel: Some(Channel::Email),
        ..SentQuery::default()
    };
    assert!(list(&email).is_empty());
    let id = sms(2, 0).id;
    let sent = outbox.sent(&id).unwrap().unwrap();
    assert_eq!(
        (sent.delivered_ms, sent.answer.as_str()),
        (2_000, "twilio SM2")
    );
    assert_eq!(sent.channel, Channel::Sms);
    assert_eq!(outbox.prune_sent(2_500).unwrap(), 2);
    assert_eq!(list(&SentQuery::default()), vec![3]);
    assert_eq!(outbox.sent(&id).unwrap(), None);
}
