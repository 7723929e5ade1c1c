//! What a rule asks to be done: an [`ActionRequest`] in the outbox.
//!
//! Validation lives here so that the engine (which refuses a malformed action as a rule error)
//! and the actions crate (which delivers it) agree on what a well-formed action is.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_128;

/// One action a rule decided, as it waits in the outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionRequest {
    /// Stable across reprocessing: the engine derives it from (rule, event seq, position) with a
    /// MAC keyed by the store's secret, so it cannot be guessed from outside ([`action_id`] is
    /// the unkeyed form, for tests and benchmarks). Receivers get it as `Idempotency-Key` /
    /// `webhook-id` / `Message-ID`.
    pub id: String,
    pub rule: String,
    /// The log event whose processing decided it (a webhook, a timer firing or a cron tick).
    pub event_seq: u64,
    /// Its place among the actions the rule decided for that event.
    pub position: u32,
    /// When the engine decided it, ms since the epoch (0: not recorded, an older item).
    #[serde(default)]
    pub decided_ms: i64,
    #[serde(flatten)]
    pub action: Action,
}

/// The three channels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "channel", rename_all = "lowercase")]
pub enum Action {
    Email(EmailAction),
    Sms(SmsAction),
    Http(HttpAction),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmailAction {
    pub to: Vec<String>,
    pub subject: String,
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SmsAction {
    pub to: String,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpAction {
    pub method: String,
    pub url: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

/// The channel an action goes out on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Email,
    Sms,
    Http,
}

impl Channel {
    pub const ALL: [Channel; 3] = [Channel::Email, Channel::Sms, Channel::Http];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Sms => "sms",
            Channel::Http => "http",
        }
    }
}

impl std::fmt::Display for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an action is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidAction(pub String);

fn invalid(reason: impl Into<String>) -> InvalidAction {
    InvalidAction(reason.into())
}

/// The id of the `position`-th action rule `rule` decided for log event `seq`: the same
/// (rule, event, position) always gives the same id, so a decision made again after a crash
/// (it never is, but a delivery can be repeated) is recognisable.
pub fn action_id(rule: &str, seq: u64, position: u32) -> String {
    let text = format!("{rule}\u{0}{seq}\u{0}{position}");
    format!("{:032x}", xxh3_128(text.as_bytes()))
}

impl Action {
    pub fn channel(&self) -> Channel {
        match self {
            Action::Email(_) => Channel::Email,
            Action::Sms(_) => Channel::Sms,
            Action::Http(_) => Channel::Http,
        }
    }

    /// Whom it goes to, as operators read it: the addresses, the number, or the method and URL.
    pub fn destination(&self) -> String {
        match self {
            Action::Email(email) => email.to.join(", "),
            Action::Sms(sms) => sms.to.clone(),
            Action::Http(http) => format!("{} {}", http.method, http.url),
        }
    }

    /// Checks what can be checked without the network: recipients, URL, method, sizes.
    pub fn validate(&self) -> Result<(), InvalidAction> {
        match self {
            Action::Email(email) => {
                if email.to.is_empty() {
                    return Err(invalid("email: no recipient (`to`)"));
                }
                for to in &email.to {
                    check_mailbox(to)?;
                }
                if email.subject.contains(['\r', '\n']) {
                    return Err(invalid("email: the subject contains a line break"));
                }
                Ok(())
            }
            Action::Sms(sms) => {
                check_phone(&sms.to)?;
                if sms.text.is_empty() {
                    return Err(invalid("sms: empty `text`"));
                }
                Ok(())
            }
            Action::Http(http) => {
                const METHODS: [&str; 7] =
                    ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];
                if !METHODS.contains(&http.method.as_str()) {
                    return Err(invalid(format!(
                        "http: method {:?} is not one of {}",
                        http.method,
                        METHODS.join(", ")
                    )));
                }
                let url = url::Url::parse(&http.url)
                    .map_err(|err| invalid(format!("http: bad url {:?}: {err}", http.url)))?;
                if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                    return Err(invalid(format!(
                        "http: url {:?} is not an http(s) URL with a host",
                        http.url
                    )));
                }
                if http.json.is_some() && http.body.is_some() {
                    return Err(invalid("http: give `json` or `body`, not both"));
                }
                for (name, value) in &http.headers {
                    let bad_name = name.is_empty()
                        || !name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
                    if bad_name || value.contains(['\r', '\n']) {
                        return Err(invalid(format!("http: bad header {name:?}")));
                    }
                }
                Ok(())
            }
        }
    }
}

/// `local@domain` or `Name <local@domain>`: what a mail server would take as one recipient.
fn check_mailbox(text: &str) -> Result<(), InvalidAction> {
    let addr = match (text.rfind('<'), text.ends_with('>')) {
        (Some(open), true) => &text[open + 1..text.len() - 1],
        _ => text,
    };
    let bad = || invalid(format!("email: {text:?} is not an e-mail address"));
    let (local, domain) = addr.rsplit_once('@').ok_or_else(bad)?;
    let ok = !local.is_empty()
        && !domain.is_empty()
        && domain.contains('.')
        && !addr.contains(|c: char| c.is_whitespace() || c == ',' || c == ';')
        && !domain.starts_with('.')
        && !domain.ends_with('.');
    if ok { Ok(()) } else { Err(bad()) }
}

/// E.164: `+` and 8 to 15 digits.
fn check_phone(text: &str) -> Result<(), InvalidAction> {
    let digits = text.strip_prefix('+').unwrap_or("");
    if (8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(invalid(format!(
            "sms: {text:?} is not a phone number in E.164 form (+ and 8 to 15 digits)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn email(to: &str) -> Action {
        Action::Email(EmailAction {
            to: vec![to.to_owned()],
            subject: "s".to_owned(),
            text: "t".to_owned(),
            html: None,
        })
    }

    #[test]
    fn mailboxes() {
        assert!(email("a@b.co").validate().is_ok());
        assert!(email("Ana <a@b.co>").validate().is_ok());
        assert!(email("nobody").validate().is_err());
        assert!(email("a@b.co, c@d.co").validate().is_err());
        assert!(email("a@localhost").validate().is_err());
    }

    #[test]
    fn phones_and_urls() {
        let sms = |to: &str| {
            Action::Sms(SmsAction {
                to: to.to_owned(),
                text: "x".to_owned(),
            })
        };
        assert!(sms("+34600000001").validate().is_ok());
        assert!(sms("600000001").validate().is_err());
        let http = |url: &str| {
            Action::Http(HttpAction {
                method: "POST".to_owned(),
                url: url.to_owned(),
                headers: BTreeMap::new(),
                json: None,
                body: None,
            })
        };
        assert!(http("https://hooks.example.com/x").validate().is_ok());
        assert!(http("ftp://example.com").validate().is_err());
        assert!(http("not a url").validate().is_err());
    }

    #[test]
    fn ids_are_stable_and_distinct() {
        assert_eq!(action_id("r", 1, 0), action_id("r", 1, 0));
        assert_ne!(action_id("r", 1, 0), action_id("r", 1, 1));
        assert_ne!(action_id("r", 1, 0), action_id("s", 1, 0));
    }
}
