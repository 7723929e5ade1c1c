use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::hash::Hasher as _;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use xxhash_rust::xxh3::Xxh3;

/// Correlation keys of an event, by name (`email`, `MessageID`, `account`): the values rules
/// join events on, and the store indexes. Values are text, so an id sent once as a number and
/// once as a string is the same key.
pub type Keys = BTreeMap<String, String>;

/// The identity of an event for deduplication, unique within its source.
///
/// Either the provider's own event id (`p:` prefix) or, for providers whose events carry none
/// (Mailjet), a 128-bit hash of the event's canonical content (`h:` prefix). A provider that
/// retries a delivery sends the same id or the same content, so the retry is stored once.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(String);

impl EventId {
    pub fn from_provider(id: &str) -> EventId {
        EventId(format!("p:{id}"))
    }

    /// Hashes the event's content in a canonical form: object keys sorted, numbers in their
    /// exact decimal text, no whitespace. The form does not depend on how serde_json was built
    /// (`preserve_order` or not), so ids stay stable across builds and upgrades.
    pub fn from_content(data: &Value) -> EventId {
        let mut hasher = Xxh3::new();
        hash_canonical(data, &mut hasher);
        EventId(format!("h:{:032x}", hasher.digest128()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Writes a value into the hasher as a tagged, length-delimited byte stream, so that no two
/// different values produce the same stream (`["a","b"]` and `["ab"]` differ, and so do `1`
/// and `"1"`).
fn hash_canonical(value: &Value, hasher: &mut Xxh3) {
    match value {
        Value::Null => hasher.write_u8(0),
        Value::Bool(b) => {
            hasher.write_u8(1);
            hasher.write_u8(u8::from(*b));
        }
        Value::Number(n) => {
            hasher.write_u8(2);
            let mut text = String::with_capacity(24);
            // Writing into a String cannot fail.
            let _ = write!(text, "{n}");
            hash_str(&text, hasher);
        }
        Value::String(s) => {
            hasher.write_u8(3);
            hash_str(s, hasher);
        }
        Value::Array(items) => {
            hasher.write_u8(4);
            hasher.write_u64(items.len() as u64);
            for item in items {
                hash_canonical(item, hasher);
            }
        }
        Value::Object(map) => {
            hasher.write_u8(5);
            hasher.write_u64(map.len() as u64);
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            for (k, v) in entries {
                hash_str(k, hasher);
                hash_canonical(v, hasher);
            }
        }
    }
}

fn hash_str(s: &str, hasher: &mut Xxh3) {
    hasher.write_u64(s.len() as u64);
    hasher.write(s.as_bytes());
}

/// An event as a source adapter builds it, before the store gives it a place in the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewEvent {
    pub id: EventId,
    /// The configured source name (`mailjet`, `bank`).
    pub source: String,
    /// The event type in the source's words (`open`, `withdrawal`).
    #[serde(rename = "type")]
    pub kind: String,
    /// When it happened, by the provider's clock.
    pub time: DateTime<Utc>,
    /// When gancho received it.
    pub received: DateTime<Utc>,
    pub keys: Keys,
    /// The payload as the provider sent it (one item of a batch).
    pub data: Value,
}

/// An event in the log: a [`NewEvent`] and its sequence number, which orders the log and never
/// repeats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    pub id: EventId,
    pub source: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub time: DateTime<Utc>,
    pub received: DateTime<Utc>,
    pub keys: Keys,
    pub data: Value,
}

impl Event {
    pub fn new(seq: u64, new: NewEvent) -> Event {
        Event {
            seq,
            id: new.id,
            source: new.source,
            kind: new.kind,
            time: new.time,
            received: new.received,
            keys: new.keys,
            data: new.data,
        }
    }

    /// The name rules know the event by: `source.type`, as in `mailjet.open`.
    pub fn qualified_type(&self) -> String {
        format!("{}.{}", self.source, self.kind)
    }
}

/// The text of a scalar JSON value, for use as a correlation key or a provider id.
///
/// Strings are kept as they are, numbers in their exact decimal form (serde_json keeps
/// integers up to 2^64 exactly, so Mailjet's 17-digit `MessageID` survives), booleans as
/// `true`/`false`. Null, empty strings, arrays and objects have no key text.
pub fn key_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn content_id_ignores_key_order_and_whitespace() {
        let a: Value = serde_json::from_str(r#"{"a": 1, "b": [1, 2]}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"b":[1,2],"a":1}"#).unwrap();
        assert_eq!(EventId::from_content(&a), EventId::from_content(&b));
    }

    #[test]
    fn content_id_distinguishes_types_and_boundaries() {
        let ids = [
            json!({"a": 1}),
            json!({"a": "1"}),
            json!(["a", "b"]),
            json!(["ab"]),
            json!({"a": null}),
            json!({}),
        ]
        .map(|v| EventId::from_content(&v));
        for (i, x) in ids.iter().enumerate() {
            for y in &ids[i + 1..] {
                assert_ne!(x, y);
            }
        }
    }

    #[test]
    fn large_ids_keep_every_digit() {
        let v: Value = serde_json::from_str("19421777835146491").unwrap();
        assert_eq!(key_text(&v).as_deref(), Some("19421777835146491"));
        assert_eq!(
            key_text(&json!("19421777835146491")).as_deref(),
            Some("19421777835146491")
        );
        assert_eq!(key_text(&json!("")), None);
        assert_eq!(key_text(&json!(null)), None);
    }

    #[test]
    fn ids_above_2_pow_53_hash_differently() {
        let a: Value = serde_json::from_str(r#"{"MessageID": 19421777835146490}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"MessageID": 19421777835146491}"#).unwrap();
        assert_ne!(EventId::from_content(&a), EventId::from_content(&b));
    }
}
