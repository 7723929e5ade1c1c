//! The engine database's records and key layouts (prefixes by first byte):
//!
//! | prefix | key                                         | value                         |
//! |--------|---------------------------------------------|-------------------------------|
//! | `M`    | `cursor`                                    | u64 BE: log processed up to   |
//! | `M`    | `format`                                    | u32 BE: format version        |
//! | `S`    | rule, key                                   | [`StateValue`], JSON          |
//! | `A`    | rule, timer name                            | [`Timer`], JSON               |
//! | `W`    | due time, rule, timer name                  | empty (timers by due time)    |
//! | `E`    | source, type, n, name×n, rule, callback     | empty ([`ExpectShape`]s)      |
//! | `O`    | channel, event seq, rule, position          | `ActionRequest`, JSON         |
//! | `R`    | rule                                        | i64 BE: last cron tick, ms    |
//! | `J`    | commit number, chunk number (`u32::MAX`: marker) | journal of one commit    |
//!
//! `P`, `N` and `Z` (delivery records, retry index, dead letters) are the outbox's
//! (`outbox.rs`).

use gancho_core::{ActionRequest, Channel};
use gancho_store::StoreError;
pub(crate) use gancho_store::keys::push_str;
use gancho_store::keys::time_key;
use serde::{Deserialize, Serialize};

pub(crate) const CURSOR_KEY: &[u8] = b"Mcursor";
pub(crate) const STATE: u8 = b'S';
pub(crate) const TIMER: u8 = b'A';
pub(crate) const DUE: u8 = b'W';
pub(crate) const SHAPE: u8 = b'E';
pub(crate) const CRON: u8 = b'R';

/// A value of a rule's persistent state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateValue {
    pub value: serde_json::Value,
    /// In event time, ms: the value is gone for events at or after this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<i64>,
}

/// A durable timer: when it comes due, an event `timer.NAME` is appended to the log and, when
/// the engine reaches it, the rule's `callback` runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timer {
    pub rule: String,
    pub name: String,
    /// Unique per setting of the timer (a timer set again under its name gets a new uid): the
    /// firing event's provider id, so a firing is appended to the log once.
    pub uid: String,
    /// In event time, ms.
    pub due_ms: i64,
    pub callback: String,
    /// What the callback receives.
    pub data: serde_json::Value,
    /// The seq of the event whose processing set it.
    pub origin_seq: u64,
    /// Set for an expectation (`expect`): the event that would cancel it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<Expectation>,
    /// It came due when its rule or function was missing: kept, not due, until a version of
    /// the rule that defines the function is loaded (or an operator discards it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub orphaned: bool,
}

/// "An event of this type with these keys, with an event time in `from_ms..=to_ms`."
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expectation {
    pub source: String,
    pub kind: String,
    /// Sorted by name.
    pub keys: Vec<(String, String)>,
    pub from_ms: i64,
    pub to_ms: i64,
}

/// What a rule's expectations wait on: events of (source, type) carrying the keys `names`
/// (sorted), else `callback` runs. Recorded once per shape; with an event's key values it names
/// the only timer that event can cancel ([`expectation_name`]), so finding the expectations an
/// event fulfils takes one lookup per shape, not a scan.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ExpectShape {
    pub source: String,
    pub kind: String,
    pub names: Vec<String>,
    pub rule: String,
    pub callback: String,
}

/// The timer name of an expectation of events of (source, type) with these key values (sorted
/// by name) that calls `callback`: a rule has at most one such expectation at a time.
pub fn expectation_name(source: &str, kind: &str, keys: &[(&str, &str)], callback: &str) -> String {
    let keys = serde_json::to_string(keys).unwrap_or_default();
    format!("expect:{source}.{kind}:{keys}:{callback}")
}

/// One change the engine decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    PutState {
        rule: String,
        key: String,
        value: StateValue,
    },
    DeleteState {
        rule: String,
        key: String,
    },
    /// Sets a timer; the caller deletes the one it replaces first ([`Change::DeleteTimer`]).
    /// A due-time entry left behind is skipped, and dropped, by [`EngineState::due_timers`].
    PutTimer(Timer),
    /// Deletes this exact timer (and its due-time entry).
    DeleteTimer(Timer),
    PutAction(ActionRequest),
    /// Records that a rule's expectations wait on events of this shape, so the engine looks
    /// such events up ([`EngineState::expectation_shapes`]). Written once per shape, not per
    /// expectation.
    PutShape(ExpectShape),
    /// The last cron tick appended for a rule.
    CronMark {
        rule: String,
        tick_ms: i64,
    },
}

pub(crate) fn corrupt(key: &str, reason: &str) -> StoreError {
    StoreError::Corrupt {
        key: key.to_owned(),
        reason: reason.to_owned(),
    }
}

pub(crate) fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|err| corrupt("engine record", &err.to_string()))
}

pub(crate) fn state_key(rule: &str, key: &str) -> Vec<u8> {
    let mut out = vec![STATE];
    push_str(&mut out, rule);
    push_str(&mut out, key);
    out
}

pub(crate) fn timer_key(rule: &str, name: &str) -> Vec<u8> {
    let mut out = vec![TIMER];
    push_str(&mut out, rule);
    push_str(&mut out, name);
    out
}

pub(crate) fn due_key(timer: &Timer) -> Vec<u8> {
    let mut out = vec![DUE];
    out.extend_from_slice(&time_key(timer.due_ms));
    push_str(&mut out, &timer.rule);
    push_str(&mut out, &timer.name);
    out
}

pub(crate) fn shape_key(shape: &ExpectShape) -> Vec<u8> {
    let mut out = vec![SHAPE];
    push_str(&mut out, &shape.source);
    push_str(&mut out, &shape.kind);
    out.extend_from_slice(&(shape.names.len() as u32).to_be_bytes());
    for name in &shape.names {
        push_str(&mut out, name);
    }
    push_str(&mut out, &shape.rule);
    push_str(&mut out, &shape.callback);
    out
}

/// A shape key without its prefix byte.
pub(crate) fn parse_shape(key: &[u8]) -> Option<ExpectShape> {
    let mut fields = Fields::new(key);
    let source = fields.string()?;
    let kind = fields.string()?;
    let n = fields.u32()?;
    let names = (0..n).map(|_| fields.string()).collect::<Option<_>>()?;
    Some(ExpectShape {
        source,
        kind,
        names,
        rule: fields.string()?,
        callback: fields.string()?,
    })
}

/// Reads length-prefixed fields back.
pub(crate) struct Fields<'a> {
    bytes: &'a [u8],
}

impl<'a> Fields<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Fields<'a> {
        Fields { bytes }
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        let (head, rest) = self.bytes.split_at_checked(4)?;
        self.bytes = rest;
        Some(u32::from_be_bytes(head.try_into().ok()?))
    }

    pub(crate) fn string(&mut self) -> Option<String> {
        let len = usize::try_from(self.u32()?).ok()?;
        let (head, rest) = self.bytes.split_at_checked(len)?;
        self.bytes = rest;
        String::from_utf8(head.to_vec()).ok()
    }
}

pub(crate) const OUTBOX: u8 = b'O';
pub(crate) const DELIVERY: u8 = b'P';
pub(crate) const NEXT: u8 = b'N';
pub(crate) const DEAD: u8 = b'Z';

/// The byte that stands for a channel in every outbox key: the one table of them, which the
/// key layout and the migrations use. The match is exhaustive, so a new channel cannot be
/// added without its byte; `channel_bytes_are_distinct` checks that no two share one.
pub(crate) fn channel_byte(channel: Channel) -> u8 {
    match channel {
        Channel::Email => b'e',
        Channel::Sms => b's',
        Channel::Http => b'h',
    }
}

/// Whether `byte` stands for a channel.
pub(crate) fn channel_byte_known(byte: u8) -> bool {
    Channel::ALL
        .iter()
        .any(|&channel| channel_byte(channel) == byte)
}

/// The `O` key of an action: channel first, so each channel is a range of its own.
pub(crate) fn outbox_key(action: &ActionRequest) -> Vec<u8> {
    let mut key = vec![OUTBOX, channel_byte(action.action.channel())];
    key.extend_from_slice(&action.event_seq.to_be_bytes());
    push_str(&mut key, &action.rule);
    key.extend_from_slice(&action.position.to_be_bytes());
    key
}
