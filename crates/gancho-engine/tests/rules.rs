//! The shipped rules, fed events with a manual clock: 24-hour windows in milliseconds.
#![allow(clippy::unwrap_used)]

mod support;

use chrono::{TimeZone as _, Utc};
use gancho_core::Action;
use support::*;

const DISCOUNT: &str = "open-discount.rhai";
const REMINDER: &str = "open-reminder.rhai";

#[test]
fn discount_for_an_open_within_24_hours_of_sending_at_both_boundaries() {
    let world = World::with_shipped(&[DISCOUNT]);
    let mut engine = world.engine();
    let sent = t0();
    world.append(vec![
        mailjet("sent", "on-time@example.com", 1, sent),
        mailjet("sent", "late@example.com", 2, sent),
        mailjet("sent", "same-ms@example.com", 3, sent),
    ]);
    // Exactly 24 h after: inside. 24 h and 1 ms: outside. At the same instant: inside.
    world.append(vec![
        mailjet("open", "on-time@example.com", 1, sent + hours(24)),
        mailjet(
            "open",
            "late@example.com",
            2,
            sent + hours(24) + chrono::Duration::milliseconds(1),
        ),
        mailjet("open", "same-ms@example.com", 3, sent),
    ]);
    run(&mut engine);
    assert_eq!(world.emails_to("on-time@example.com").len(), 1);
    assert_eq!(world.emails_to("late@example.com").len(), 0);
    assert_eq!(world.emails_to("same-ms@example.com").len(), 1);
    let Action::Email(mail) = &world.emails_to("on-time@example.com")[0].action else {
        panic!("not an e-mail");
    };
    assert!(mail.text.contains("WELCOME-"), "{}", mail.text);
}

#[test]
fn an_open_before_its_sent_in_event_time_gets_no_discount_and_an_open_is_rewarded_once() {
    let world = World::with_shipped(&[DISCOUNT]);
    let mut engine = world.engine();
    world.append(vec![mailjet("sent", "a@example.com", 1, t0())]);
    world.append(vec![mailjet(
        "open",
        "b@example.com",
        2,
        t0() - chrono::Duration::seconds(1),
    )]);
    world.append(vec![mailjet("sent", "b@example.com", 2, t0())]);
    // Two distinct opens by the same recipient, and one open delivered twice.
    let open = mailjet("open", "a@example.com", 1, t0() + hours(1));
    assert_eq!(world.append(vec![open.clone()]), 1);
    assert_eq!(world.append(vec![open]), 0, "the store keeps a retry once");
    world.append(vec![mailjet("open", "a@example.com", 1, t0() + hours(2))]);
    run(&mut engine);
    assert_eq!(world.emails_to("a@example.com").len(), 1);
    assert_eq!(world.emails_to("b@example.com").len(), 0);
}

#[test]
fn reminder_fires_once_24_hours_after_sending_when_nothing_was_opened() {
    let world = World::with_shipped(&[REMINDER]);
    let mut engine = world.engine();
    world.append(vec![mailjet("sent", "a@example.com", 1, t0())]);
    run(&mut engine);
    world
        .clock
        .set(t0() + hours(24) - chrono::Duration::milliseconds(1));
    run(&mut engine);
    assert!(world.outbox().is_empty(), "not due yet");
    world.clock.set(t0() + hours(24));
    run(&mut engine);
    world.clock.set(t0() + hours(48));
    run(&mut engine);
    let reminders = world.emails_to("a@example.com");
    assert_eq!(reminders.len(), 1);
    let Action::Email(mail) = &reminders[0].action else {
        panic!("not an e-mail");
    };
    assert_eq!(mail.subject, "Did you miss this?");
    // The firing is an event in the log, with the due time as its event time.
    let timers = world
        .store
        .events(&gancho_store::EventQuery {
            source: Some("timer".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(timers.len(), 1);
    assert_eq!(timers[0].time, t0() + hours(24));
}

#[test]
fn an_open_in_time_cancels_the_reminder_even_when_it_arrived_before_the_sent() {
    let world = World::with_shipped(&[REMINDER]);
    let mut engine = world.engine();
    // a: the open arrives first (out of order). b: the open arrives later, at the window's
    // last millisecond. c: opened just after the window: reminded.
    world.append(vec![mailjet("open", "a@example.com", 1, t0() + hours(1))]);
    world.append(vec![
        mailjet("sent", "a@example.com", 1, t0()),
        mailjet("sent", "b@example.com", 2, t0()),
        mailjet("sent", "c@example.com", 3, t0()),
    ]);
    run(&mut engine);
    world.append(vec![
        mailjet("open", "b@example.com", 2, t0() + hours(24)),
        mailjet(
            "open",
            "c@example.com",
            3,
            t0() + hours(24) + chrono::Duration::milliseconds(1),
        ),
    ]);
    run(&mut engine);
    world.clock.set(t0() + hours(25));
    run(&mut engine);
    assert_eq!(world.emails_to("a@example.com").len(), 0);
    assert_eq!(world.emails_to("b@example.com").len(), 0);
    assert_eq!(world.emails_to("c@example.com").len(), 1);
}

#[test]
fn a_restart_between_sent_and_due_time_still_reminds_once() {
    let world = World::with_shipped(&[REMINDER]);
    {
        let mut engine = world.engine();
        world.append(vec![mailjet("sent", "a@example.com", 1, t0())]);
        run(&mut engine);
    }
    let world = world.restart();
    // Down when it came due: it fires late, at start.
    world.clock.set(t0() + hours(30));
    let mut engine = world.engine();
    run(&mut engine);
    drop(engine);
    let world = world.restart();
    let mut engine = world.engine();
    run(&mut engine);
    assert_eq!(world.emails_to("a@example.com").len(), 1);
}

#[test]
fn bounce_alert_above_the_threshold_at_most_once_an_hour() {
    let world = World::with_shipped(&["bounce-alert.rhai"]);
    let mut engine = world.engine();
    let bounce = |i: u64, hard: bool, at| {
        mailjet_with(
            "bounce",
            &format!("u{i}@example.com"),
            i,
            at,
            &format!(r#","hard_bounce":{hard},"error":"user unknown""#),
        )
    };
    // Ten hard bounces and five soft ones: not above the threshold of 10 hard ones.
    let mut events: Vec<_> = (0..10)
        .map(|i| bounce(i, true, t0() + chrono::Duration::minutes(i as i64)))
        .collect();
    events.extend((10..15).map(|i| bounce(i, false, t0() + chrono::Duration::minutes(20))));
    world.append(events);
    run(&mut engine);
    assert!(world.outbox().is_empty());
    // The 11th and 12th in the hour: one alert (SMS and HTTP).
    world.append(vec![bounce(20, true, t0() + chrono::Duration::minutes(30))]);
    world.append(vec![bounce(21, true, t0() + chrono::Duration::minutes(31))]);
    run(&mut engine);
    let channels: Vec<_> = world
        .outbox()
        .iter()
        .map(|a| match &a.action {
            Action::Sms(_) => "sms",
            Action::Http(_) => "http",
            Action::Email(_) => "email",
        })
        .collect();
    assert_eq!(channels, ["sms", "http"]);
    // More than an hour later, a new storm: alerted again.
    let later = t0() + hours(2);
    world.append(
        (30..42)
            .map(|i| bounce(i, true, later + chrono::Duration::seconds(i as i64)))
            .collect(),
    );
    run(&mut engine);
    assert_eq!(world.outbox().len(), 4);
}

#[test]
fn withdrawal_sms_for_each_and_a_fraud_alert_above_three_in_ten_minutes() {
    let world = World::with_shipped(&["withdrawal-sms.rhai"]);
    let mut engine = world.engine();
    let at = Utc.with_ymd_and_hms(2026, 11, 28, 8, 53, 20).unwrap();
    for i in 0..5 {
        world.append(vec![withdrawal(
            &format!("w-{i}"),
            "ES7600000000000000000001",
            at + chrono::Duration::minutes(2 * i),
            "Madrid, Gran Via 1",
        )]);
    }
    // Another account, far apart: no alert.
    world.append(vec![withdrawal(
        "x-1",
        "ES7600000000000000000002",
        at,
        "Bilbao",
    )]);
    run(&mut engine);
    let sms: Vec<_> = world
        .outbox()
        .into_iter()
        .filter_map(|a| match a.action {
            Action::Sms(sms) => Some(sms),
            _ => None,
        })
        .collect();
    let to_customer: Vec<_> = sms.iter().filter(|s| s.to == "+34600000001").collect();
    assert_eq!(to_customer.len(), 6);
    assert_eq!(
        to_customer[0].text,
        "Withdrawal of 120 EUR at Madrid, Gran Via 1 on 28/11/2026 09:53. Not you? Call us."
    );
    let alerts: Vec<_> = sms.iter().filter(|s| s.to == "+34600000099").collect();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert!(
        alerts[0]
            .text
            .contains("4 withdrawals from ES7600000000000000000001")
    );
}

#[test]
fn daily_report_at_nine_madrid_time_across_a_daylight_saving_change() {
    let world = World::with_shipped(&["daily-report.rhai"]);
    // Saturday 28 March 2026; Madrid moves to summer time on Sunday 29 March at 02:00.
    world
        .clock
        .set(Utc.with_ymd_and_hms(2026, 3, 28, 7, 0, 0).unwrap());
    let mut engine = world.engine();
    // Friday 27 March (Madrid): two sent, one open. Saturday early: one sent.
    world.append(vec![
        mailjet(
            "sent",
            "a@example.com",
            1,
            Utc.with_ymd_and_hms(2026, 3, 26, 23, 30, 0).unwrap(),
        ),
        mailjet(
            "sent",
            "b@example.com",
            2,
            Utc.with_ymd_and_hms(2026, 3, 27, 22, 59, 59).unwrap(),
        ),
        mailjet(
            "open",
            "b@example.com",
            2,
            Utc.with_ymd_and_hms(2026, 3, 27, 12, 0, 0).unwrap(),
        ),
        mailjet(
            "sent",
            "c@example.com",
            3,
            Utc.with_ymd_and_hms(2026, 3, 27, 23, 0, 0).unwrap(),
        ),
    ]);
    run(&mut engine);
    assert!(world.outbox().is_empty());
    // 09:00 in Madrid on the 28th is 08:00 UTC (winter time).
    world
        .clock
        .set(Utc.with_ymd_and_hms(2026, 3, 28, 7, 59, 59).unwrap());
    run(&mut engine);
    assert!(world.outbox().is_empty());
    world
        .clock
        .set(Utc.with_ymd_and_hms(2026, 3, 28, 8, 0, 0).unwrap());
    run(&mut engine);
    let reports = world.emails_to("team@example.com");
    assert_eq!(reports.len(), 1);
    let Action::Email(mail) = &reports[0].action else {
        panic!("not an e-mail")
    };
    assert_eq!(mail.subject, "Mailjet report for Friday 27 March 2026");
    assert!(
        mail.text.starts_with("sent: 2\nopens: 1\n"),
        "{}",
        mail.text
    );
    // On the 29th, 09:00 in Madrid is 07:00 UTC (summer time).
    world
        .clock
        .set(Utc.with_ymd_and_hms(2026, 3, 29, 6, 59, 59).unwrap());
    run(&mut engine);
    assert_eq!(world.emails_to("team@example.com").len(), 1);
    world
        .clock
        .set(Utc.with_ymd_and_hms(2026, 3, 29, 7, 0, 0).unwrap());
    run(&mut engine);
    let reports = world.emails_to("team@example.com");
    assert_eq!(reports.len(), 2);
    let Action::Email(mail) = &reports[1].action else {
        panic!("not an e-mail")
    };
    assert_eq!(mail.subject, "Mailjet report for Saturday 28 March 2026");
    assert!(mail.text.starts_with("sent: 1\n"), "{}", mail.text);
}

#[test]
fn an_open_stored_before_its_sent_still_gets_the_discount_once() {
    let world = World::with_shipped(&[DISCOUNT]);
    let mut engine = world.engine();
    // The open arrives first (an outage's backlog, a slow queue), 2 hours after the sending
    // in event time; then the sent.
    world.append(vec![mailjet("open", "a@example.com", 1, t0() + hours(2))]);
    run(&mut engine);
    assert!(world.emails_to("a@example.com").is_empty());
    world.append(vec![mailjet("sent", "a@example.com", 1, t0())]);
    run(&mut engine);
    assert_eq!(world.emails_to("a@example.com").len(), 1);
    // A second open in order: no second discount.
    world.append(vec![mailjet("open", "a@example.com", 1, t0() + hours(3))]);
    run(&mut engine);
    assert_eq!(world.emails_to("a@example.com").len(), 1);
    // An open stored before a sent but 25 hours after it: none.
    world.append(vec![mailjet(
        "open",
        "late@example.com",
        2,
        t0() + hours(25),
    )]);
    world.append(vec![mailjet("sent", "late@example.com", 2, t0())]);
    run(&mut engine);
    assert!(world.emails_to("late@example.com").is_empty());
    assert_eq!(engine.status().rules[0].errors, 0);
}

#[test]
fn a_backlog_delivered_at_once_gives_its_opens_late_grace_to_cancel_the_reminders() {
    let world = World::with_shipped(&[REMINDER]);
    let mut engine = world.engine();
    // After a two-day outage the provider delivers its backlog at once, at t0: two sents of
    // two days ago, and, a moment later, the open of one of them.
    let arrived = |mut event: gancho_core::NewEvent, at: chrono::DateTime<Utc>| {
        event.received = at;
        event
    };
    world.clock.set(t0());
    world.append(vec![
        arrived(
            mailjet("sent", "opened@example.com", 1, t0() - hours(48)),
            t0(),
        ),
        arrived(
            mailjet("sent", "not@example.com", 2, t0() - hours(48)),
            t0(),
        ),
    ]);
    run(&mut engine);
    // Due two days ago; not fired yet: the grace (2 minutes) runs from their arrival.
    world.clock.set(t0() + chrono::Duration::seconds(90));
    run(&mut engine);
    assert!(world.outbox().is_empty(), "{:?}", world.outbox());
    world.append(vec![arrived(
        mailjet("open", "opened@example.com", 1, t0() - hours(47)),
        t0() + chrono::Duration::seconds(91),
    )]);
    run(&mut engine);
    world.clock.set(t0() + chrono::Duration::minutes(3));
    run(&mut engine);
    run(&mut engine);
    assert!(world.emails_to("opened@example.com").is_empty());
    assert_eq!(world.emails_to("not@example.com").len(), 1);
}
