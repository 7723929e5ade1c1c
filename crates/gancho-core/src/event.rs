use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use xxhash_rust::xxh3::Xxh3;

/// Correlation keys of an event, by name (`email`, `MessageID`, `account`): the values rules
/// join events on, and the store indexes. Values are text, so an id sent once as a number and
/// once as a string is the same key.
pub type Keys = BTreeMap<String, String>;

/// The identity of an event for deduplication, unique within its source.
///
/// Either the provider's own event id (`p:` prefix) or, for providers whose events carry none
/// (Mailjet), a 128-bit hash of the event's content (`h:` prefix). A provider that retries a
/// delivery sends the same id or the same content, so the retry is stored once.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(String);

impl EventId {
    pub fn from_provider(id: &str) -> EventId {
        EventId(format!("p:{id}"))
    }

    /// Hashes an event's JSON text with its insignificant white space removed, so a retry that
    /// went through another serialiser (pretty-printed, or compacted) has the same id. Object
    /// keys are taken in the order sent: providers re-send the same bytes, and sorting them
    /// would mean building every payload as a tree on the hot path.
    pub fn from_content(json: &str) -> EventId {
        let mut hasher = Xxh3::new();
        hash_minified(json.as_bytes(), &mut hasher);
        EventId(format!("h:{:032x}", hasher.digest128()))
    }

    /// An id as [`EventId::as_str`] gave it, read back from storage.
    pub fn from_stored(id: &str) -> EventId {
        EventId(id.to_owned())
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

/// Feeds the hasher the JSON text without the white space between tokens. Inside strings every
/// byte counts; an escaped quote does not end a string. Strings are skipped with `memchr`, so
/// the cost is close to hashing the text once.
fn hash_minified(json: &[u8], hasher: &mut Xxh3) {
    let mut at = 0;
    let mut run_start = 0;
    while at < json.len() {
        match json[at] {
            b'"' => {
                // Find the closing quote: the next quote not preceded by an escaping backslash.
                at += 1;
                loop {
                    match memchr::memchr2(b'"', b'\\', &json[at..]) {
                        Some(i) if json[at + i] == b'\\' => at = (at + i + 2).min(json.len()),
                        Some(i) => {
                            at += i + 1;
                            break;
                        }
                        None => {
                            at = json.len();
                            break;
                        }
                    }
                }
            }
            b' ' | b'\t' | b'\n' | b'\r' => {
                hasher.update(&json[run_start..at]);
                at += 1;
                run_start = at;
            }
            _ => at += 1,
        }
    }
    hasher.update(&json[run_start.min(json.len())..]);
}

/// An event as a source adapter builds it, before the store gives it a place in the log.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// The payload exactly as the provider sent it (one item of a batch): kept as JSON text,
    /// so every digit of every id survives and the hot path never builds it as a tree.
    pub data: Box<RawValue>,
}

/// An event in the log: a [`NewEvent`] and its sequence number, which orders the log and never
/// repeats.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    pub id: EventId,
    pub source: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub time: DateTime<Utc>,
    pub received: DateTime<Utc>,
    pub keys: Keys,
    pub data: Box<RawValue>,
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

    /// The payload parsed into a JSON value.
    pub fn data_value(&self) -> Result<Value, serde_json::Error> {
        serde_json::from_str(self.data.get())
    }
}

impl PartialEq for Event {
    fn eq(&self, other: &Event) -> bool {
        self.seq == other.seq
            && self.id == other.id
            && self.source == other.source
            && self.kind == other.kind
            && self.time == other.time
            && self.received == other.received
            && self.keys == other.keys
            && self.data.get() == other.data.get()
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
    fn content_id_ignores_white_space_between_tokens_only() {
        let pretty = "{\n  \"a\": 1,\n  \"b\": [1, 2],\n  \"s\": \"x y\"\n}";
        let compact = r#"{"a":1,"b":[1,2],"s":"x y"}"#;
        let other_string = r#"{"a":1,"b":[1,2],"s":"xy"}"#;
        assert_eq!(
            EventId::from_content(pretty),
            EventId::from_content(compact)
        );
        assert_ne!(
            EventId::from_content(compact),
            EventId::from_content(other_string)
        );
    }

    #[test]
    fn escaped_quotes_do_not_end_strings() {
        // If the escaped quote ended the string, the spaces after it would be dropped.
        let a = r#"{"s":"a\" b"}"#;
        let b = r#"{"s":"a\"b"}"#;
        assert_ne!(EventId::from_content(a), EventId::from_content(b));
        let c = r#"{"s":"a\\" , "t":1}"#;
        let d = r#"{"s":"a\\","t":1}"#;
        assert_eq!(EventId::from_content(c), EventId::from_content(d));
    }

    /// The obvious byte-by-byte version, to check the fast one against.
    fn minified_naive(json: &[u8]) -> Vec<u8> {
        let (mut out, mut in_string, mut escaped) = (Vec::new(), false, false);
        for &b in json {
            if in_string {
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    in_string = false;
                }
            } else if b == b'"' {
                in_string = true;
            } else if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                continue;
            }
            out.push(b);
        }
        out
    }

    #[test]
    fn fast_minified_hash_agrees_with_the_naive_one() {
        let cases = [
            r#"{"a": "x y", "b" : [1, 2 ,3]}"#,
            r#"{"s":"a\" b", "t": "\\", "u": " "}"#,
            "{\n\t\"k\" :\r\n \"v\"\n}",
            r#"{"unterminated": "abc \"#,
            r#"{"trailing backslash": "\"#,
            r#""\\\\" , "#,
            "",
            "   ",
        ];
        for case in cases {
            let mut fast = Xxh3::new();
            hash_minified(case.as_bytes(), &mut fast);
            let mut naive = Xxh3::new();
            naive.update(&minified_naive(case.as_bytes()));
            assert_eq!(fast.digest128(), naive.digest128(), "{case:?}");
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
        let a = r#"{"MessageID": 19421777835146490}"#;
        let b = r#"{"MessageID": 19421777835146491}"#;
        assert_ne!(EventId::from_content(a), EventId::from_content(b));
    }

    #[test]
    fn payload_text_survives_a_round_trip_exactly() {
        let data = RawValue::from_string(r#"{"MessageID":19421777835146491,"x":1.50}"#.to_owned())
            .unwrap();
        let event = Event {
            seq: 1,
            id: EventId::from_content(data.get()),
            source: "mailjet".into(),
            kind: "open".into(),
            time: DateTime::<Utc>::UNIX_EPOCH,
            received: DateTime::<Utc>::UNIX_EPOCH,
            keys: Keys::new(),
            data,
        };
        let text = serde_json::to_string(&event).unwrap();
        assert!(
            text.contains(r#""data":{"MessageID":19421777835146491,"x":1.50}"#),
            "{text}"
        );
        let back: Event = serde_json::from_str(&text).unwrap();
        assert_eq!(back, event);
    }
}
