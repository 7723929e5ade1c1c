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
mod tests;
