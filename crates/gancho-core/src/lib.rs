//! The domain types every other gancho crate speaks: [`Event`], [`NewEvent`], the correlation
//! [`Keys`], event ids and event time, the [`Clock`] through which time is read, and what the
//! crates' config sections are made of ([`config`]: secrets that redact themselves, durations).
//!
//! This crate does no I/O and knows no storage engine, HTTP server or script engine: it is the
//! vocabulary, not the machinery. A key design decision made here is that an event's identity
//! for deduplication ([`EventId`]) is decided when the event is built, from the provider's id
//! where one exists and otherwise from a canonical hash of its content, so that every path that
//! appends to the log (webhooks now, timers and cron ticks later) deduplicates the same way.

mod action;
mod clock;
pub mod config;
mod event;
pub mod failpoint;
pub mod heartbeat;
pub mod partition;
pub mod publish;
pub mod signature;
mod time;

pub use action::{
    Action, ActionRequest, Channel, EmailAction, HttpAction, InvalidAction, SmsAction, action_id,
};
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{KeyError, Secret, SecretString};
pub use event::{Event, EventId, Keys, NewEvent, key_text};
pub use time::{
    AUTO_MS_ABOVE, TimeError, TimeUnit, millis_to_time, parse_event_time, parse_event_time_in,
    time_to_millis,
};

/// The longest correlation-key value, in bytes, that the store indexes. Adapters reject an
/// item carrying a longer one (it goes to the quarantine with this reason) rather than index
/// a truncated value that no query could match.
pub const MAX_KEY_LEN: usize = 1024;
