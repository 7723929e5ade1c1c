//! The providers whose fields are fixed (Postmark, SendGrid, Mailgun, Twilio): where each
//! keeps an event's type, time, id and correlation keys, as JSON pointers tried in turn, and
//! how an item is read with them. Adding such a provider is a `Preset` here, its `KindName`
//! and verifier, and its section of `docs/sources.md`.

use gancho_core::{EventId, Keys, TimeUnit, key_text};
use serde_json::Value;

use crate::adapter::{Parts, checked_key, event_type, time_at};

/// Where a provider keeps an event's parts, each as JSON pointers tried in turn (the first
/// present wins): Postmark's time is `DeliveredAt` on a delivery, `BouncedAt` on a bounce.
#[derive(Debug, PartialEq, Eq)]
pub struct Preset {
    pub kind: &'static str,
    /// Empty: the time of receipt.
    pub time: &'static [&'static str],
    /// Empty: a hash of the content.
    pub id: &'static [&'static str],
    /// The id is every pointer of `id` joined with `:` (Twilio's sid and status), not the
    /// first present.
    pub id_joins: bool,
    /// Name and pointers. An array of strings (SendGrid's `category`) is joined with commas.
    pub keys: &'static [(&'static str, &'static [&'static str])],
}

/// Postmark: one object per request, routed by `RecordType`.
pub static POSTMARK: Preset = Preset {
    kind: "/RecordType",
    time: &["/DeliveredAt", "/BouncedAt", "/ReceivedAt", "/ChangedAt"],
    id: &[],
    id_joins: false,
    keys: &[
        ("MessageID", &["/MessageID"]),
        ("Recipient", &["/Recipient", "/Email"]),
        ("Tag", &["/Tag"]),
        ("MessageStream", &["/MessageStream"]),
    ],
};

/// SendGrid's Event Webhook: always an array.
pub static SENDGRID: Preset = Preset {
    kind: "/event",
    time: &["/timestamp"],
    id: &["/sg_event_id"],
    id_joins: false,
    keys: &[
        ("email", &["/email"]),
        ("sg_message_id", &["/sg_message_id"]),
        ("category", &["/category"]),
    ],
};

/// Mailgun's webhooks: `event-data` beside the `signature` block.
pub static MAILGUN: Preset = Preset {
    kind: "/event-data/event",
    time: &["/event-data/timestamp"],
    id: &["/event-data/id"],
    id_joins: false,
    keys: &[
        ("recipient", &["/event-data/recipient"]),
        ("message_id", &["/event-data/message/headers/message-id"]),
    ],
};

/// Twilio's status callbacks: one form per message status.
pub static TWILIO: Preset = Preset {
    kind: "/MessageStatus",
    time: &[],
    // Each status of a message is an event of its own.
    id: &["/MessageSid", "/MessageStatus"],
    id_joins: true,
    keys: &[
        ("MessageSid", &["/MessageSid", "/SmsSid"]),
        ("To", &["/To"]),
        ("From", &["/From"]),
        ("AccountSid", &["/AccountSid"]),
    ],
};

/// A provider's item, read with its preset pointers.
pub(crate) fn parts(preset: &Preset, text: &str, unit: TimeUnit) -> Result<Parts, String> {
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
