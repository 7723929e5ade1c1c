//! The providers whose fields are fixed (Postmark, SendGrid, Mailgun, Twilio): where each
//! keeps an event's type, time, id and correlation keys, as JSON pointers tried in turn, and
//! `adapter.rs` reads an item with them. Adding such a provider is a `Preset` here, its `KindName`
//! and verifier, and its section of `docs/sources.md`.

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
