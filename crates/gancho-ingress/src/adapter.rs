//! Source adapters: from a parsed body to events, one adapter per kind of source.
//!
//! An adapter is a pure function of the body, the source and the receipt time. It splits a
//! batch into items, makes each item an event or a rejection with its reason, and never fails
//! for one bad item of a batch: a batch the provider can never deliver whole would otherwise be
//! retried for ever.

use chrono::{DateTime, Utc};
use gancho_core::{
    EventId, Keys, MAX_KEY_LEN, NewEvent, TimeError, TimeUnit, key_text, parse_event_time_in,
};
use gancho_store::{Rejected, Submission};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::presets::Preset;

/// The longest event type accepted, in bytes.
const MAX_TYPE_LEN: usize = 256;
/// The most items one body may carry. Providers batch tens to hundreds; a body of a million
/// tiny invalid items would otherwise become a million quarantine rows.
pub const MAX_ITEMS: usize = 10_000;

/// How a source's payloads are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    /// Mailjet's Event API: one event object, or an array of them ("Version 2" grouping).
    Mailjet,
    /// A provider whose fields are fixed: Postmark, SendGrid, Mailgun.
    Preset(&'static Preset),
    /// Any JSON object or array of objects, read with the configured JSON pointers.
    Json(JsonSpec),
}

/// The correlation keys of Mailjet events.
/// `hard_bounce` (on `bounce` and `blocked` events) is a key so that rules can count hard
/// bounces from the index, without reading every bounce.
const MAILJET_KEYS: [&str; 5] = [
    "email",
    "MessageID",
    "mj_campaign_id",
    "CustomID",
    "hard_bounce",
];

/// The event types Mailjet's Event API sends.
const MAILJET_TYPES: [&str; 7] = [
    "sent", "open", "click", "bounce", "blocked", "spam", "unsub",
];

impl SourceKind {
    /// The event types this kind of source sends, when they are known (`None`: any).
    pub fn known_types(&self) -> Option<Vec<String>> {
        match self {
            SourceKind::Mailjet => Some(MAILJET_TYPES.iter().map(|t| (*t).to_owned()).collect()),
            SourceKind::Json(_) | SourceKind::Preset(_) => None,
        }
    }

    /// The names of the correlation keys this kind of source extracts (and the store indexes).
    pub fn key_names(&self) -> Vec<String> {
        match self {
            SourceKind::Mailjet => MAILJET_KEYS.iter().map(|k| (*k).to_owned()).collect(),
            SourceKind::Json(spec) => spec.keys.iter().map(|(name, _)| name.clone()).collect(),
            SourceKind::Preset(preset) => preset
                .keys
                .iter()
                .map(|(name, _)| (*name).to_owned())
                .collect(),
        }
    }
}

/// Where a generic JSON source keeps an event's parts, as JSON pointers (RFC 6901).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonSpec {
    /// The event type (required).
    pub kind: String,
    /// The event time, RFC 3339 or Unix seconds; `None`: the time of receipt.
    pub time: Option<String>,
    /// The provider's event id, for dedup; `None`: a hash of the content.
    pub id: Option<String>,
    /// Correlation keys by name.
    pub keys: Vec<(String, String)>,
}

/// Why a body as a whole was refused. Nothing of it is stored.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BodyError {
    #[error("body is not valid JSON: {0}")]
    NotJson(String),
    #[error("body must be a JSON object or an array of objects, found {0}")]
    NotAnObjectOrArray(&'static str),
    #[error("invalid event: {0}")]
    InvalidEvent(String),
    #[error("the body holds {0} items; at most {MAX_ITEMS} are accepted in one request")]
    TooManyItems(usize),
}

/// Turns a body into what the store should keep.
///
/// The body is split into items without building them as trees: each item's payload is kept as
/// the exact text the provider sent, and only the fields an event needs are read from it. A
/// single object that is not a valid event is refused whole ([`BodyError::InvalidEvent`]); in
/// an array, each invalid item becomes a [`Rejected`] next to the valid events.
pub fn submission_from(
    source: &str,
    kind: &SourceKind,
    time: &TimePolicy,
    body: &str,
    received: DateTime<Utc>,
) -> Result<Submission, BodyError> {
    submission_with(source, kind, time, &Envelope::default(), body, received)
}

/// What a request's headers say of its events (GitHub's `X-GitHub-Event` and
/// `X-GitHub-Delivery`, a Standard Webhooks `webhook-id`): it takes the place of the body's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    /// The event type.
    pub kind: Option<String>,
    /// The provider's id of the delivery: the event's (`ID:N` for the Nth item of an array).
    pub id: Option<String>,
    /// Correlation keys the headers give (GitHub's `delivery`).
    pub keys: Vec<(String, String)>,
}

/// [`submission_from`], with what the request's headers say of its events.
pub fn submission_with(
    source: &str,
    kind: &SourceKind,
    time: &TimePolicy,
    envelope: &Envelope,
    body: &str,
    received: DateTime<Utc>,
) -> Result<Submission, BodyError> {
    let not_json = |err: serde_json::Error| BodyError::NotJson(err.to_string());
    let mut submission = Submission::default();
    match body.trim_start().as_bytes().first() {
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_str(body).map_err(not_json)?;
            if items.len() > MAX_ITEMS {
                return Err(BodyError::TooManyItems(items.len()));
            }
            submission.events.reserve(items.len());
            for (i, item) in items.into_iter().enumerate() {
                let envelope = Envelope {
                    kind: envelope.kind.clone(),
                    id: envelope.id.as_ref().map(|id| format!("{id}:{i}")),
                    keys: envelope.keys.clone(),
                };
                match event_from(source, kind, time, &envelope, item, received) {
                    Ok(event) => submission.events.push(event),
                    Err(reason) => submission.rejected.push(Rejected {
                        source: source.to_owned(),
                        received,
                        reason,
                        item: item.to_owned(),
                    }),
                }
            }
        }
        Some(b'{') => {
            let item: &RawValue = serde_json::from_str(body).map_err(not_json)?;
            let event = event_from(source, kind, time, envelope, item, received)
                .map_err(BodyError::InvalidEvent)?;
            submission.events.push(event);
        }
        _ => {
            let value: Value = serde_json::from_str(body).map_err(not_json)?;
            return Err(BodyError::NotAnObjectOrArray(json_type(&value)));
        }
    }
    Ok(submission)
}

/// How a source's event times are read and bounded (`time_unit`, `max_future`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimePolicy {
    /// How a number is read: seconds, milliseconds, or by its size.
    pub unit: TimeUnit,
    /// An event time further than this after its receipt is refused: a clock gone wrong, or
    /// milliseconds read as seconds, would otherwise set timers in a far future.
    pub max_future: std::time::Duration,
}

impl Default for TimePolicy {
    fn default() -> TimePolicy {
        TimePolicy {
            unit: TimeUnit::Auto,
            max_future: std::time::Duration::from_secs(24 * 3600),
        }
    }
}

fn event_from(
    source: &str,
    kind: &SourceKind,
    policy: &TimePolicy,
    envelope: &Envelope,
    item: &RawValue,
    received: DateTime<Utc>,
) -> Result<NewEvent, String> {
    let text = item.get();
    if !text.starts_with('{') {
        return Err(format!(
            "item must be a JSON object, found {}",
            raw_type(text)
        ));
    }
    let mut parts = match kind {
        SourceKind::Mailjet => mailjet(text, policy.unit)?,
        SourceKind::Preset(preset) => preset_parts(preset, text, policy.unit)?,
        SourceKind::Json(spec) => json(spec, text, policy.unit, envelope.kind.as_deref())?,
    };
    if let Some(kind) = &envelope.kind {
        parts.kind = event_type(kind)?;
    }
    if let Some(id) = &envelope.id {
        parts.id = Some(EventId::from_provider(&checked_key("id", id.clone())?));
    }
    for (name, value) in &envelope.keys {
        parts
            .keys
            .insert(name.clone(), checked_key(name, value.clone())?);
    }
    if let (Some(time), Some((field, value))) = (parts.time, &parts.time_read) {
        let ahead = time.signed_duration_since(received);
        if ahead.to_std().is_ok_and(|ahead| ahead > policy.max_future) {
            return Err(format!(
                "event time {field} is {value}, read as {}: more than max_future ({}) after its receipt",
                time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                humantime::format_duration(policy.max_future)
            ));
        }
    }
    Ok(NewEvent {
        id: parts.id.unwrap_or_else(|| EventId::from_content(text)),
        source: source.to_owned(),
        kind: parts.kind,
        time: parts.time.unwrap_or(received),
        received,
        keys: parts.keys,
        data: item.to_owned(),
    })
}

/// Everything of an event an adapter reads from its payload.
struct Parts {
    id: Option<EventId>,
    kind: String,
    /// `None`: the time of receipt.
    time: Option<DateTime<Utc>>,
    /// Where the time was read and the value as sent, for a refusal's reason.
    time_read: Option<(String, String)>,
    keys: Keys,
}

/// The fields of a Mailjet event gancho reads, borrowed as raw JSON text; the rest of the
/// payload is skipped unparsed.
#[derive(Deserialize)]
struct MailjetFields<'a> {
    #[serde(borrow)]
    event: Option<&'a RawValue>,
    #[serde(borrow)]
    time: Option<&'a RawValue>,
    #[serde(borrow)]
    email: Option<&'a RawValue>,
    #[serde(borrow, rename = "MessageID")]
    message_id: Option<&'a RawValue>,
    /// Older payloads carry the message id only here, as a string.
    #[serde(borrow)]
    mj_message_id: Option<&'a RawValue>,
    #[serde(borrow)]
    mj_campaign_id: Option<&'a RawValue>,
    #[serde(borrow, rename = "CustomID")]
    custom_id: Option<&'a RawValue>,
    #[serde(borrow)]
    hard_bounce: Option<&'a RawValue>,
}

/// The text of a scalar given as raw JSON: a string's contents, or a number's digits exactly as
/// sent. `None` for null, empty strings, and anything else.
fn raw_key_text(raw: &RawValue) -> Result<Option<String>, String> {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'"') => {
            let s: String = serde_json::from_str(text).map_err(|err| err.to_string())?;
            Ok((!s.is_empty()).then_some(s))
        }
        Some(b'-' | b'0'..=b'9') => Ok(Some(text.to_owned())),
        Some(b't' | b'f') => Ok(Some(text.to_owned())),
        _ => Ok(None),
    }
}

fn mailjet(text: &str, unit: TimeUnit) -> Result<Parts, String> {
    let fields: MailjetFields<'_> = serde_json::from_str(text).map_err(|err| err.to_string())?;
    let kind = match fields.event {
        Some(raw) if raw.get().starts_with('"') => {
            let s: String = serde_json::from_str(raw.get()).map_err(|err| err.to_string())?;
            event_type(&s)?
        }
        Some(raw) if raw.get() != "null" => {
            return Err(format!(
                "field `event` must be a string, found {}",
                raw_type(raw.get())
            ));
        }
        _ => return Err("missing field `event`".to_owned()),
    };
    let (time, time_text) = match fields.time {
        Some(raw) if raw.get() != "null" => (
            mailjet_time(raw.get(), unit).map_err(|err| format!("field `time`: {err}"))?,
            raw.get(),
        ),
        _ => return Err("missing field `time`".to_owned()),
    };
    let mut keys = Keys::new();
    let message_id = match fields.message_id {
        Some(raw) if raw.get() != "null" => Some(raw),
        _ => fields.mj_message_id,
    };
    let values = [
        fields.email,
        message_id,
        fields.mj_campaign_id,
        fields.custom_id,
        fields.hard_bounce,
    ];
    for (name, value) in MAILJET_KEYS.into_iter().zip(values) {
        if let Some(text) = value.map(raw_key_text).transpose()?.flatten() {
            keys.insert(name.to_owned(), checked_key(name, text)?);
        }
    }
    Ok(Parts {
        id: None,
        kind,
        time: Some(time),
        time_read: Some(("field `time`".to_owned(), shown_value(time_text))),
        keys,
    })
}

/// Mailjet sends Unix seconds as an integer: read those directly, anything else the long way.
fn mailjet_time(text: &str, unit: TimeUnit) -> Result<DateTime<Utc>, TimeError> {
    if unit != TimeUnit::Ms
        && let Ok(secs) = text.parse::<i64>()
        && (unit == TimeUnit::S || (secs as f64).abs() <= gancho_core::AUTO_MS_ABOVE)
        && let Some(t) = DateTime::from_timestamp(secs, 0)
    {
        return Ok(t);
    }
    let value: Value =
        serde_json::from_str(text).map_err(|_| TimeError::Unparsable(text.to_owned()))?;
    parse_event_time_in(&value, unit)
}

/// The event time `value` found at `pointer`, read in `unit`, with where it was read and the
/// value as sent (what `max_future`'s refusal names): as [`Parts`] keeps them.
type TimeRead = (Option<DateTime<Utc>>, Option<(String, String)>);

fn time_at(pointer: &str, value: &Value, unit: TimeUnit) -> Result<TimeRead, String> {
    let time =
        parse_event_time_in(value, unit).map_err(|err| format!("time at {pointer}: {err}"))?;
    Ok((
        Some(time),
        Some((format!("at {pointer}"), shown_value(&value.to_string()))),
    ))
}

/// A value as a refusal shows it: its JSON text, cut to 64 bytes.
fn shown_value(text: &str) -> String {
    match text.char_indices().nth(64) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// A provider's item, read with its preset pointers.
fn preset_parts(preset: &Preset, text: &str, unit: TimeUnit) -> Result<Parts, String> {
    let item: Value = serde_json::from_str(text).map_err(|err| err.to_string())?;
    let first = |pointers: &[&'static str]| {
        pointers.iter().find_map(|p| match item.pointer(p) {
            None | Some(Value::Null) => None,
            Some(v) => Some((*p, v)),
        })
    };
    let kind = match item.pointer(preset.kind) {
        Some(Value::String(s)) => event_type(s)?,
        _ => return Err(format!("no event type at {}", preset.kind)),
    };
    let (time, time_read) = match first(preset.time) {
        None => (None, None),
        Some((pointer, t)) => time_at(pointer, t, unit)?,
    };
    let id = match preset.id_joins {
        true => preset
            .id
            .iter()
            .map(|p| item.pointer(p).and_then(key_text))
            .collect::<Option<Vec<String>>>()
            .map(|parts| parts.join(":")),
        false => first(preset.id).and_then(|(_, v)| key_text(v)),
    };
    let id = match id {
        Some(id) => Some(EventId::from_provider(&checked_key("id", id)?)),
        None => None,
    };
    let mut keys = Keys::new();
    for (name, pointers) in preset.keys {
        let text = match first(pointers) {
            Some((_, Value::Array(items))) => {
                let joined: Vec<String> = items.iter().filter_map(key_text).collect();
                (!joined.is_empty()).then(|| joined.join(","))
            }
            Some((_, Value::Object(_))) | None => None,
            Some((_, v)) => key_text(v),
        };
        if let Some(text) = text {
            keys.insert((*name).to_owned(), checked_key(name, text)?);
        }
    }
    Ok(Parts {
        id,
        kind,
        time,
        time_read,
        keys,
    })
}

/// A JSON item read with `spec`; `header_kind`: the type came with the request, the body's is
/// not read.
fn json(
    spec: &JsonSpec,
    text: &str,
    unit: TimeUnit,
    header_kind: Option<&str>,
) -> Result<Parts, String> {
    let item: Value = serde_json::from_str(text).map_err(|err| err.to_string())?;
    let kind = match item.pointer(&spec.kind) {
        _ if header_kind.is_some() => String::new(),
        Some(Value::String(s)) => event_type(s)?,
        Some(v @ Value::Number(_)) => event_type(&v.to_string())?,
        Some(other) => {
            return Err(format!(
                "type at {} must be a string, found {}",
                spec.kind,
                json_type(other)
            ));
        }
        None => return Err(format!("no event type at {}", spec.kind)),
    };
    let (time, time_read) = match &spec.time {
        None => (None, None),
        Some(pointer) => match item.pointer(pointer) {
            Some(t) => time_at(pointer, t, unit)?,
            None => return Err(format!("no event time at {pointer}")),
        },
    };
    let id = match &spec.id {
        None => None,
        Some(pointer) => match item.pointer(pointer).and_then(key_text) {
            Some(id) => Some(EventId::from_provider(&checked_key("id", id)?)),
            None => return Err(format!("no event id at {pointer}")),
        },
    };
    let mut keys = Keys::new();
    for (name, pointer) in &spec.keys {
        match item.pointer(pointer) {
            None | Some(Value::Null) => {}
            Some(v @ (Value::Array(_) | Value::Object(_))) => {
                return Err(format!(
                    "key {name} at {pointer} must be a string or a number, found {}",
                    json_type(v)
                ));
            }
            Some(v) => {
                if let Some(text) = key_text(v) {
                    keys.insert(name.clone(), checked_key(name, text)?);
                }
            }
        }
    }
    Ok(Parts {
        id,
        kind,
        time,
        time_read,
        keys,
    })
}

fn event_type(s: &str) -> Result<String, String> {
    if s.is_empty() {
        Err("event type is empty".to_owned())
    } else if s.len() > MAX_TYPE_LEN {
        Err(format!("event type is longer than {MAX_TYPE_LEN} bytes"))
    } else {
        Ok(s.to_owned())
    }
}

fn checked_key(name: &str, text: String) -> Result<String, String> {
    if text.len() > MAX_KEY_LEN {
        Err(format!("{name} is longer than {MAX_KEY_LEN} bytes"))
    } else {
        Ok(text)
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The type of a valid JSON text, from its first byte.
fn raw_type(text: &str) -> &'static str {
    match text.as_bytes().first() {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

#[cfg(test)]
mod tests {
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
        let sub =
            submission_from("mg", &SourceKind::Preset(&MAILGUN), &policy, &body, now()).unwrap();
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
        let b =
            r#"{"event":"open","time":1433103519,"MessageID":"19421777396190491","email":"a@x"}"#;
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
}
