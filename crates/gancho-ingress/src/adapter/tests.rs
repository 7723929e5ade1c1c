//! The adapters' tests: every kind read from real payloads (tests/fixtures), event times,
//! keys, refusals and their reasons.

use super::*;
use crate::formats::xml_to_json;
use crate::presets::{MAILGUN, POSTMARK, SENDGRID};
use chrono::TimeZone;
use serde_json::json;

fn now() -> DateTime<Utc> {
    Utc.timestamp_opt(1_764_320_100, 0).unwrap()
}

fn bank() -> SourceKind {
    SourceKind::Json(JsonSpec {
        kind: "/kind".into(),
        time: Some("/at".into()),
        id: Some("/id".into()),
        keys: vec![("account".into(), "/account".into())],
    })
}

fn fixture(path: &str) -> String {
    let file = format!("{}/../../tests/fixtures/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&file).unwrap_or_else(|err| panic!("{file}: {err}"))
}

#[test]
fn the_providers_fixtures_are_read_by_their_presets() {
    let policy = TimePolicy::default();
    let postmark = SourceKind::Preset(&POSTMARK);
    for (file, kind, recipient_key) in [
        ("delivery", "Delivery", "Recipient"),
        ("bounce", "Bounce", "Recipient"),
        ("open", "Open", "Recipient"),
        ("click", "Click", "Recipient"),
        ("spam_complaint", "SpamComplaint", "Recipient"),
        ("subscription_change", "SubscriptionChange", "Recipient"),
    ] {
        let body = fixture(&format!("postmark/{file}.json"));
        let sub = submission_from("pm", &postmark, &policy, &body, now()).unwrap();
        let event = &sub.events[0];
        assert_eq!(event.kind, kind);
        assert_eq!(
            event.keys.get(recipient_key).map(String::as_str),
            Some("john@example.com"),
            "{file}"
        );
        assert_eq!(event.time.timestamp(), 1_743_870_834, "{file}");
    }
    let body = fixture("sendgrid/docs_all_events_batch.json");
    let sendgrid = SourceKind::Preset(&SENDGRID);
    let sub = submission_from("sg", &sendgrid, &policy, &body, now()).unwrap();
    assert!(sub.rejected.is_empty(), "{:?}", sub.rejected);
    assert!(sub.events.len() > 5);
    let kinds: Vec<&str> = sub.events.iter().map(|e| e.kind.as_str()).collect();
    assert!(
        kinds.contains(&"processed") && kinds.contains(&"open"),
        "{kinds:?}"
    );
    assert_eq!(sub.events[0].id, EventId::from_provider("sg_event_id"));
    assert_eq!(
        sub.events[0].keys.get("category").map(String::as_str),
        Some("cat facts")
    );
    let array_category = r#"[{"event":"open","timestamp":1513299569,"email":"a@x","sg_event_id":"e1","category":["a","b"]}]"#;
    let sub = submission_from("sg", &sendgrid, &policy, array_category, now()).unwrap();
    assert_eq!(
        sub.events[0].keys.get("category").map(String::as_str),
        Some("a,b")
    );
    let body = fixture("mailgun/delivered.json");
    let sub = submission_from("mg", &SourceKind::Preset(&MAILGUN), &policy, &body, now()).unwrap();
    let event = &sub.events[0];
    assert_eq!(event.kind, "delivered");
    assert_eq!(event.time.timestamp_millis(), 1_534_108_637_153);
    assert_eq!(
        event.keys.get("recipient").map(String::as_str),
        Some("recipient@example.com")
    );
    assert_eq!(
        event.keys.get("message_id").map(String::as_str),
        Some("20180812211713.1.DF5966851B4BAA99@example.org")
    );
}

#[test]
fn xml_becomes_a_json_object_of_attributes_children_and_text() {
    let xml = r#"<?xml version="1.0"?>
        <!-- a comment -->
        <order id="o-1" status="paid">
          <customer>c&amp;9 &#x41;</customer>
          <item sku="a">2</item>
          <item sku="b">3</item>
          <note><![CDATA[<b>fragile</b>]]></note>
          <empty/>
          <at>2025-11-28T08:00:00Z</at>
        </order>"#;
    let json: Value = serde_json::from_str(&xml_to_json(xml).unwrap()).unwrap();
    assert_eq!(json["@id"], "o-1");
    assert_eq!(json["customer"], "c&9 A");
    assert_eq!(json["item"][1]["@sku"], "b");
    assert_eq!(json["item"][1]["#text"], "3");
    assert_eq!(json["note"], "<b>fragile</b>");
    assert_eq!(json["empty"], "");
    let spec = SourceKind::Json(JsonSpec {
        kind: "/@status".into(),
        time: Some("/at".into()),
        id: Some("/@id".into()),
        keys: vec![("customer".into(), "/customer".into())],
    });
    let sub = submission_from(
        "shop",
        &spec,
        &TimePolicy::default(),
        &xml_to_json(xml).unwrap(),
        now(),
    )
    .unwrap();
    assert_eq!(sub.events[0].kind, "paid");
    assert_eq!(sub.events[0].id, EventId::from_provider("o-1"));
    for bad in [
        "<a><b></a>",
        "<a>",
        "",
        "not xml",
        "<a/><b/>",
        "<!DOCTYPE a [<!ENTITY e \"x\">]><a>&e;</a>",
        "<a>&unknown;</a>",
    ] {
        assert!(xml_to_json(bad).is_err(), "{bad:?} was accepted");
    }
    let deep = format!("{}{}", "<a>".repeat(65), "</a>".repeat(65));
    assert!(xml_to_json(&deep).unwrap_err().contains("deeper than 64"));
    let fine = format!("{}{}", "<a>".repeat(64), "</a>".repeat(64));
    assert!(xml_to_json(&fine).is_ok());
}

#[test]
fn milliseconds_are_read_as_such_and_a_far_future_time_is_refused_naming_it() {
    let policy = TimePolicy::default();
    let body = r#"{"id":"w1","kind":"withdrawal","at":1764320000000,"account":"A"}"#;
    let sub = submission_from("bank", &bank(), &policy, body, now()).unwrap();
    assert_eq!(sub.events[0].time.timestamp(), 1_764_320_000);
    // Seconds near the ms threshold: the year 5138, far past max_future.
    let far = r#"{"id":"w2","kind":"withdrawal","at":99999999999,"account":"A"}"#;
    let err = submission_from("bank", &bank(), &policy, far, now()).unwrap_err();
    let BodyError::InvalidEvent(reason) = &err else {
        panic!("{err:?}")
    };
    assert!(reason.contains("at /at is 99999999999"), "{reason}");
    assert!(reason.contains("max_future (1day)"), "{reason}");
    // In a batch, that item alone is set aside.
    let batch = format!("[{body},{far}]");
    let sub = submission_from("bank", &bank(), &policy, &batch, now()).unwrap();
    assert_eq!((sub.events.len(), sub.rejected.len()), (1, 1));
    // Told the unit is seconds, milliseconds are far in the future: refused, not stored.
    let seconds = TimePolicy {
        unit: TimeUnit::S,
        ..policy
    };
    assert!(submission_from("bank", &bank(), &seconds, body, now()).is_err());
    // Mailjet's times take the same rules.
    let mj = r#"{"event":"open","time":1764320000000,"MessageID":1,"email":"a@x"}"#;
    let sub = submission_from("mailjet", &SourceKind::Mailjet, &policy, mj, now()).unwrap();
    assert_eq!(sub.events[0].time.timestamp(), 1_764_320_000);
    let mj_far = r#"{"event":"open","time":1864320000,"MessageID":1,"email":"a@x"}"#;
    let err = submission_from("mailjet", &SourceKind::Mailjet, &policy, mj_far, now());
    assert!(
        format!("{err:?}").contains("field `time` is 1864320000"),
        "{err:?}"
    );
}

#[test]
fn mailjet_event_with_big_id_as_number_or_string_keys_the_same() {
    let a = r#"{"event":"open","time":1433103519,"MessageID":19421777396190491,"email":"a@x"}"#;
    let b = r#"{"event":"open","time":1433103519,"MessageID":"19421777396190491","email":"a@x"}"#;
    for body in [a, b] {
        let sub = submission_from(
            "mailjet",
            &SourceKind::Mailjet,
            &TimePolicy::default(),
            body,
            now(),
        )
        .unwrap();
        assert_eq!(sub.events[0].data.get(), body);
        assert_eq!(sub.events[0].keys["MessageID"], "19421777396190491");
        assert_eq!(sub.events[0].kind, "open");
    }
}

#[test]
fn mailjet_batch_keeps_good_items_and_rejects_bad_ones_with_reasons() {
    let body = json!([
        {"event":"sent","time":1433333949,"email":"a@x","mj_message_id":"42"},
        {"time":1433333949},
        {"event":"open","time":"soon"},
        7
    ]);
    let sub = submission_from(
        "mailjet",
        &SourceKind::Mailjet,
        &TimePolicy::default(),
        &body.to_string(),
        now(),
    )
    .unwrap();
    assert_eq!(sub.events.len(), 1);
    assert_eq!(sub.events[0].keys["MessageID"], "42");
    let reasons: Vec<_> = sub.rejected.iter().map(|r| r.reason.as_str()).collect();
    assert_eq!(
        reasons,
        [
            "missing field `event`",
            "field `time`: time \"soon\" is not an ISO 8601 date-time nor a Unix time",
            "item must be a JSON object, found a number"
        ]
    );
}

#[test]
fn a_single_invalid_object_is_refused_whole() {
    let err = submission_from(
        "mailjet",
        &SourceKind::Mailjet,
        &TimePolicy::default(),
        r#"{"time": 1}"#,
        now(),
    )
    .unwrap_err();
    assert_eq!(err, BodyError::InvalidEvent("missing field `event`".into()));
    let err = submission_from(
        "mailjet",
        &SourceKind::Mailjet,
        &TimePolicy::default(),
        r#" "hi" "#,
        now(),
    )
    .unwrap_err();
    assert_eq!(err, BodyError::NotAnObjectOrArray("a string"));
    let err = submission_from(
        "mailjet",
        &SourceKind::Mailjet,
        &TimePolicy::default(),
        r#"[{"event":"open"},"#,
        now(),
    )
    .unwrap_err();
    assert!(matches!(err, BodyError::NotJson(_)), "{err:?}");
}

#[test]
fn a_body_with_too_many_items_is_refused_whole() {
    let body = format!("[{}]", vec!["1"; MAX_ITEMS + 1].join(","));
    let err = submission_from(
        "mailjet",
        &SourceKind::Mailjet,
        &TimePolicy::default(),
        &body,
        now(),
    )
    .unwrap_err();
    assert_eq!(err, BodyError::TooManyItems(MAX_ITEMS + 1));
}

#[test]
fn json_source_reads_pointers() {
    let body =
        json!({"id":"w-1","kind":"withdrawal","at":1764320000,"account":"ES76","amount":120});
    let sub = submission_from(
        "bank",
        &bank(),
        &TimePolicy::default(),
        &body.to_string(),
        now(),
    )
    .unwrap();
    let e = &sub.events[0];
    assert_eq!(e.kind, "withdrawal");
    assert_eq!(e.id, EventId::from_provider("w-1"));
    assert_eq!(e.time, Utc.timestamp_opt(1_764_320_000, 0).unwrap());
    assert_eq!(e.keys["account"], "ES76");
}

#[test]
fn json_source_without_time_pointer_uses_receipt() {
    let kind = SourceKind::Json(JsonSpec {
        kind: "/type".into(),
        time: None,
        id: None,
        keys: vec![],
    });
    let sub = submission_from(
        "shop",
        &kind,
        &TimePolicy::default(),
        r#"{"type": "order.created"}"#,
        now(),
    )
    .unwrap();
    assert_eq!(sub.events[0].time, now());
    assert!(sub.events[0].id.as_str().starts_with("h:"));
}

#[test]
fn json_source_rejects_what_its_pointers_cannot_read() {
    let cases = [
        (
            json!({"kind":"w","at":1,"id":"x","account":{"iban":1}}),
            "key account at /account must be a string or a number, found an object",
        ),
        (json!({"at":1,"id":"x"}), "no event type at /kind"),
        (json!({"kind":"w","id":"x"}), "no event time at /at"),
        (json!({"kind":"w","at":1}), "no event id at /id"),
        (json!({"kind":"","at":1,"id":"x"}), "event type is empty"),
        (
            json!({"kind":"w","at":1,"id":"x","account":"a".repeat(2000)}),
            "account is longer than 1024 bytes",
        ),
    ];
    for (item, reason) in cases {
        let sub = submission_from(
            "bank",
            &bank(),
            &TimePolicy::default(),
            &json!([item]).to_string(),
            now(),
        )
        .unwrap();
        assert_eq!(sub.rejected.len(), 1);
        assert_eq!(sub.rejected[0].reason, reason);
    }
}
