//! gancho's front door: the HTTP server that receives webhooks (`POST /hooks/{source}`), checks
//! who sent them, turns each payload into events with the source's adapter, and answers only
//! once the store says the events are durable.
//!
//! Only this crate knows actix-web; no actix type appears in its public API. It knows nothing of
//! rules, scripts or outgoing actions, and it never reads the wall clock directly (receipt times
//! come from the injected [`gancho_core::Clock`]). A key design decision made here is that a
//! request is answered by what the store did with it: 200 means every event in it is on disk
//! (or was already) and every invalid item of a batch is in the quarantine; any other status
//! means nothing of it was acknowledged, so the provider's retry is always safe. In cluster
//! mode the events go to the shared log through the binary's [`gancho_core::publish::EventPublisher`]
//! instead, and 200 means every one of them is acknowledged there.
//!
//! It also owns the `[sources.NAME]` sections of the config file ([`SourceConfig`]), beside the
//! adapters that read their JSON pointers.

mod adapter;
mod auth;
mod config;
mod formats;
mod presets;
mod publish;
mod server;
mod sources;
mod verify;

pub use adapter::{
    BodyError, Envelope, JsonSpec, SourceKind, TimePolicy, submission_from, submission_with,
};
pub use auth::{BasicAuth, constant_time_eq};
pub use config::{BasicAuthConfig, KindName, SourceConfig};
pub use formats::{form_to_json, xml_to_json};
pub use presets::{MAILGUN, POSTMARK, Preset, SENDGRID, TWILIO};
pub use server::{IngressConfig, IngressHandle, IngressServer, Readiness, block_on};
pub use sources::{BodyFormat, PartitionSpec, Rotated, Source, Sources};
pub use verify::{Encoding, HeaderFields, Tokens, Verifier, p256_point};
