//! gancho's actions: carries out what rules decided. It owns the delivery of the outbox the
//! engine fills (`gancho-store`'s `O` keys): e-mail over SMTP (lettre) or to `.eml` files, SMS
//! through Twilio, Vonage or a local file, HTTP calls (reqwest) behind an SSRF guard and with
//! optional Standard Webhooks signatures; retries with backoff, per-destination breakers, and
//! dead letters an operator can list and put back.
//!
//! It must not decide anything: it never runs rules, never reads the event log, and never
//! delivers an action decided above the engine's durable cursor (a crash could undo that
//! decision). Delivery is at least once: every message carries the action's stable id
//! (`Idempotency-Key`, `webhook-id`, `Message-ID`, Vonage's `client-ref`) so a receiver can
//! drop the rare repeat.
//!
//! It owns the `[email]`, `[sms]`, `[http]` and `[retry]` sections of the config file: their
//! types deserialize from the file with their defaults, and the binary only composes them.

mod channel;
mod config;
mod email;
mod executor;
mod failure;
mod http;
mod lane;
mod retry;
mod sign;
mod sms;
mod ssrf;

pub use config::{
    ActionsConfig, ChannelLimits, EmailConfig, EmailTransport, HttpConfig, RetryPolicy, SmsConfig,
    SmsProvider,
};
pub use executor::{ActionsHandle, spawn};
pub use failure::{ActionsError, Failure};
pub use sign::sign_webhook;
pub use ssrf::is_public;

/// Installs ring as rustls' crypto provider for the process, once: reqwest is built without
/// one compiled in, and lettre and reqwest then share it.
pub fn install_crypto() {
    // Err means one is installed already, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
