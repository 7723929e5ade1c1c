//! The `[sources.NAME]` sections of the config file, and their checks into a [`Source`].
//!
//! A source's section lives here, beside the adapters that read its JSON pointers, so a key,
//! its meaning and its checks change together; the binary only composes the sections. What the
//! file cannot spell (a wrong type, an unknown key, a password given two ways) fails while the
//! file is read, with its line; what depends on other keys (the pointers a kind takes, the
//! password once the binary has read it) is checked by [`SourceConfig::into_source`].
//! `signing.rs` holds what a signature check is made of.

use std::collections::BTreeMap;
use std::path::PathBuf;

use gancho_core::{KeyError, Secret, SecretString};
use serde::Deserialize;

use crate::adapter::{JsonSpec, SourceKind};
use crate::auth::BasicAuth;
use crate::sources::Source;

mod signing;

pub use signing::HmacSection;

/// The most correlation keys a json source may name.
const MAX_KEYS: usize = 64;

/// One `[sources.NAME]` section: `POST /hooks/NAME` is read by this kind of adapter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// `"mailjet"` (Mailjet's Event API; its fields are fixed) or `"json"` (any JSON object or
    /// array of objects, read with the pointers below). Required.
    pub kind: KindName,
    /// The HTTP basic credentials the sender must present. Default: none (anyone who can reach
    /// the port may post). Example: `{ user = "mailjet", password_env = "MAILJET_HOOK_PASSWORD" }`.
    pub basic_auth: Option<BasicAuthConfig>,
    /// json only (required): JSON pointer to the event type, a string or a number.
    /// Example: `"/kind"`.
    #[serde(rename = "type")]
    pub type_pointer: Option<String>,
    /// json only: JSON pointer to the event time (RFC 3339 or Unix seconds). Default: none (the
    /// time of receipt). Example: `"/at"`.
    pub time: Option<String>,
    /// json only: JSON pointer to the provider's event id, used to store a retried delivery
    /// once. Default: none (a hash of the content). Example: `"/id"`.
    pub id: Option<String>,
    /// json only: correlation keys, name to JSON pointer; rules join events on them and the
    /// store indexes them. At most 64. Default: none. Example: `{ account = "/account" }`.
    #[serde(default)]
    pub keys: BTreeMap<String, String>,
    /// How a number given as the event time is read: `"s"` (Unix seconds), `"ms"` (Unix
    /// milliseconds) or `"auto"` (a number above 10^11 is milliseconds). Default: `"auto"`.
    pub time_unit: Option<gancho_core::TimeUnit>,
    /// An event whose time is further than this after its receipt is refused (422; in a batch,
    /// quarantined): a sender's clock gone wrong, or milliseconds read as seconds. Default:
    /// `"1d"`. Example: `"1h"`.
    #[serde(
        default,
        deserialize_with = "gancho_core::config::duration::option::deserialize"
    )]
    pub max_future: Option<std::time::Duration>,
    /// stripe, github, standard-webhooks: the signing secret (`whsec_…` for Stripe and
    /// Standard Webhooks, as the provider shows it); or `secret_env`, `secret_file`.
    pub secret: Option<SecretString>,
    pub secret_env: Option<String>,
    pub secret_file: Option<PathBuf>,
    /// More secrets, all accepted at once (during a rotation). Example:
    /// `["whsec_new…", "whsec_old…"]`.
    #[serde(default)]
    pub secrets: Vec<SecretString>,
    /// stripe, standard-webhooks: a signature's timestamp may be this far from now, either
    /// way. Default: `"5m"`.
    #[serde(
        default,
        deserialize_with = "gancho_core::config::duration::option::deserialize"
    )]
    pub tolerance: Option<std::time::Duration>,
    /// mailgun: the HTTP webhook signing key (Mailgun's Sending → Webhooks page); or
    /// `signing_key_env`, `signing_key_file`.
    pub signing_key: Option<SecretString>,
    pub signing_key_env: Option<String>,
    pub signing_key_file: Option<PathBuf>,
    /// json, form: a generic HMAC signature check, with `secret` (or `secrets`). Example:
    /// `{ header = "X-Shop-Signature", algorithm = "sha256", encoding = "hex", prefix = "sha256=" }`.
    pub hmac: Option<HmacSection>,
    /// twilio: the account's auth token, which signs its callbacks; or `auth_token_env`,
    /// `auth_token_file`.
    pub auth_token: Option<SecretString>,
    pub auth_token_env: Option<String>,
    pub auth_token_file: Option<PathBuf>,
    /// twilio: the URL Twilio calls, exactly as configured there (`https://…/hooks/NAME`): it
    /// is part of what Twilio signs, and a proxy in front changes what gancho sees.
    pub public_url: Option<String>,
    /// sendgrid: the verification key, base64 DER as SendGrid shows it. Without it, SendGrid's
    /// requests are not signature-checked (give `basic_auth` then).
    pub public_key: Option<String>,
    /// Cluster mode: the correlation key whose value decides which partition an event goes to
    /// (its windows, `expect` and state are that partition's). Default: `email` for mailjet and
    /// sendgrid, `Recipient` for postmark, `recipient` for mailgun, `To` for twilio; other
    /// kinds must name one in cluster mode. Ignored on a single node. Example: `"account"`.
    pub partition_key: Option<String>,
    /// Cluster mode: correlation keys the operator asserts follow `partition_key` (every event
    /// with the same value of one of them has the same partition key), so rules may query by
    /// them too. Default: the message id for the e-mail kinds (mailjet: `MessageID`), the
    /// message's `MessageSid` for twilio; none for others. Example: `["order"]`.
    pub colocated: Option<Vec<String>>,
    /// `secret` (or `signing_key`), from the file, its variable or its file once read
    /// ([`SourceConfig::secrets_mut`]), or why they could not be.
    #[serde(skip)]
    resolved: Option<Result<Option<(&'static str, Secret)>, KeyError>>,
}

/// The kinds of source, as `kind` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KindName {
    Mailjet,
    Json,
    /// Stripe's events, signed with `Stripe-Signature`.
    Stripe,
    /// GitHub's webhooks, signed with `X-Hub-Signature-256`.
    Github,
    /// Any sender of Standard Webhooks (`webhook-id`, `webhook-timestamp`,
    /// `webhook-signature`).
    StandardWebhooks,
    /// Postmark's webhooks (unsigned: give `basic_auth`).
    Postmark,
    /// SendGrid's Event Webhook, signed with ECDSA when `public_key` is given.
    Sendgrid,
    /// Mailgun's webhooks, signed in the body with `signing_key`.
    Mailgun,
    /// Twilio's status callbacks (forms), signed with `X-Twilio-Signature`.
    Twilio,
    /// Any HTML form (`application/x-www-form-urlencoded`), read with the pointers as `json`.
    Form,
    /// Any XML document, read as a JSON object with the pointers as `json`.
    Xml,
}

impl KindName {
    /// Whether the kind checks a signature with `secret` (or `signing_key`).
    fn signed(self) -> bool {
        matches!(
            self,
            KindName::Stripe
                | KindName::Github
                | KindName::StandardWebhooks
                | KindName::Mailgun
                | KindName::Twilio
        )
    }
}

/// `basic_auth = { user = "...", password = "..." }`, the password given in exactly one way.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "BasicAuthSection")]
pub struct BasicAuthConfig {
    pub user: String,
    /// `None` when none of the three keys is given, which [`SourceConfig::into_source`] refuses.
    pub password: Option<Secret>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BasicAuthSection {
    /// The user the sender presents; without ':'. Example: `"mailjet"`.
    user: String,
    /// The password itself (keep the file mode 0600); or `password_env`, an environment
    /// variable holding it (systemd: `Environment=` or `EnvironmentFile=`); or `password_file`,
    /// a file holding it (a trailing newline is ignored). Exactly one.
    password: Option<SecretString>,
    password_env: Option<String>,
    password_file: Option<PathBuf>,
}

impl TryFrom<BasicAuthSection> for BasicAuthConfig {
    type Error = KeyError;

    fn try_from(section: BasicAuthSection) -> Result<BasicAuthConfig, KeyError> {
        Ok(BasicAuthConfig {
            user: section.user,
            password: Secret::from_keys(
                "password",
                section.password,
                section.password_env,
                section.password_file,
            )?,
        })
    }
}

impl SourceConfig {
    /// Whether `name` can be a source's name: it is part of the URL, `/hooks/NAME`.
    pub fn check_name(name: &str) -> Result<(), KeyError> {
        if name.len() > 64 {
            return Err(KeyError::new(
                "",
                "a source name may be at most 64 bytes long",
            ));
        }
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(KeyError::new(
                "",
                "a source name may hold only letters, digits, '-' and '_' (it is part of the URL)",
            ));
        }
        Ok(())
    }

    /// The source `name` as the server runs it. Errors name the key within the section (empty
    /// for the name itself).
    pub fn into_source(mut self, name: &str) -> Result<Source, KeyError> {
        SourceConfig::check_name(name)?;
        let secrets = self.signing_secrets()?;
        let (verify, verify_fingerprint) = self.verifier(&secrets)?;
        let auth = self.basic_auth.take().map(basic_auth).transpose()?;
        let mut headers = crate::verify::HeaderFields::default();
        let kind = match self.kind {
            KindName::Mailjet => {
                for (field, set) in [
                    ("type", self.type_pointer.is_some()),
                    ("time", self.time.is_some()),
                    ("id", self.id.is_some()),
                    ("keys", !self.keys.is_empty()),
                ] {
                    if set {
                        return Err(KeyError::new(
                            field,
                            "only sources of kind \"json\" take JSON pointers; mailjet's fields are fixed",
                        ));
                    }
                }
                SourceKind::Mailjet
            }
            KindName::Stripe => {
                self.no_pointers("stripe")?;
                SourceKind::Json(JsonSpec {
                    kind: "/type".to_owned(),
                    time: Some("/created".to_owned()),
                    id: Some("/id".to_owned()),
                    keys: preset_keys(
                        &[
                            ("customer", "/data/object/customer"),
                            ("object", "/data/object/id"),
                        ],
                        std::mem::take(&mut self.keys),
                    )?,
                })
            }
            KindName::Postmark | KindName::Sendgrid | KindName::Mailgun | KindName::Twilio => {
                let (name, preset) = match self.kind {
                    KindName::Postmark => ("postmark", &crate::presets::POSTMARK),
                    KindName::Sendgrid => ("sendgrid", &crate::presets::SENDGRID),
                    KindName::Twilio => ("twilio", &crate::presets::TWILIO),
                    _ => ("mailgun", &crate::presets::MAILGUN),
                };
                self.no_pointers(name)?;
                if !self.keys.is_empty() {
                    return Err(KeyError::new(
                        "keys",
                        format!("the {name} kind's keys are fixed (docs/sources.md)"),
                    ));
                }
                SourceKind::Preset(preset)
            }
            KindName::Github => {
                self.no_pointers("github")?;
                // GitHub signs the body only: `X-GitHub-Delivery` could be changed on a replayed
                // body, so the id is the content's hash (a replay, or GitHub's own redelivery,
                // is stored once). `X-GitHub-Event` is not signed either; the first delivery of
                // a body decides its type.
                headers = crate::verify::HeaderFields {
                    kind: Some("x-github-event"),
                    id: None,
                    keys: &[("delivery", "x-github-delivery")],
                };
                SourceKind::Json(JsonSpec {
                    kind: String::new(),
                    time: None,
                    id: None,
                    keys: preset_keys(
                        &[
                            ("repository", "/repository/full_name"),
                            ("sender", "/sender/login"),
                        ],
                        std::mem::take(&mut self.keys),
                    )?,
                })
            }
            KindName::Json | KindName::StandardWebhooks | KindName::Form | KindName::Xml => {
                if self.kind == KindName::StandardWebhooks {
                    headers.id = Some("webhook-id");
                    // The Standard Webhooks payload: `type`, `timestamp`, `data`.
                    self.type_pointer.get_or_insert_with(|| "/type".to_owned());
                    self.time.get_or_insert_with(|| "/timestamp".to_owned());
                }
                let Some(kind_pointer) = self.type_pointer else {
                    return Err(KeyError::new(
                        "type",
                        "required for kind \"json\": a JSON pointer to the event type, such as \"/type\"",
                    ));
                };
                check_pointer(&kind_pointer, "type")?;
                if let Some(pointer) = &self.time {
                    check_pointer(pointer, "time")?;
                }
                if let Some(pointer) = &self.id {
                    check_pointer(pointer, "id")?;
                }
                if self.keys.len() > MAX_KEYS {
                    return Err(KeyError::new("keys", "at most 64 correlation keys"));
                }
                let mut keys = Vec::with_capacity(self.keys.len());
                for (key_name, pointer) in self.keys {
                    let key = format!("keys.{key_name}");
                    if key_name.is_empty() || key_name.len() > 256 {
                        return Err(KeyError::new(key, "a key name must be 1 to 256 bytes long"));
                    }
                    check_pointer(&pointer, &key)?;
                    keys.push((key_name, pointer));
                }
                SourceKind::Json(JsonSpec {
                    kind: kind_pointer,
                    time: self.time,
                    id: self.id,
                    keys,
                })
            }
        };
        let mut names = kind.key_names();
        names.extend(headers.keys.iter().map(|(name, _)| (*name).to_owned()));
        let partition = partition_spec(
            self.kind,
            self.partition_key.take(),
            self.colocated.take(),
            &names,
        )?;
        let defaults = crate::adapter::TimePolicy::default();
        let format = match self.kind {
            KindName::Twilio | KindName::Form => crate::sources::BodyFormat::Form,
            KindName::Xml => crate::sources::BodyFormat::Xml,
            _ => crate::sources::BodyFormat::Json,
        };
        Ok(Source {
            name: name.to_owned(),
            kind,
            format,
            verify,
            verify_fingerprint,
            headers,
            time: crate::adapter::TimePolicy {
                unit: self.time_unit.unwrap_or(defaults.unit),
                max_future: self.max_future.unwrap_or(defaults.max_future),
            },
            auth,
            partition,
        })
    }
}

/// The partition key of a source and the keys colocated with it, as given or as its kind's
/// default; each must be one of the source's correlation keys.
fn partition_spec(
    kind: KindName,
    key: Option<String>,
    colocated: Option<Vec<String>>,
    names: &[String],
) -> Result<Option<crate::sources::PartitionSpec>, KeyError> {
    let (default_key, default_colocated): (&str, &[&str]) = match kind {
        KindName::Mailjet => ("email", &["MessageID"]),
        KindName::Sendgrid => ("email", &["sg_message_id"]),
        KindName::Postmark => ("Recipient", &["MessageID"]),
        KindName::Mailgun => ("recipient", &["message_id"]),
        KindName::Twilio => ("To", &["MessageSid"]),
        _ => ("", &[]),
    };
    let known = |key: &str, field: &str| -> Result<(), KeyError> {
        if names.iter().any(|n| n == key) {
            Ok(())
        } else {
            Err(KeyError::new(
                field,
                format!(
                    "{key:?} is not one of this source's correlation keys ({})",
                    if names.is_empty() {
                        "it has none".to_owned()
                    } else {
                        names.join(", ")
                    }
                ),
            ))
        }
    };
    let key = match key {
        Some(key) => {
            known(&key, "partition_key")?;
            key
        }
        None if colocated.is_some() && default_key.is_empty() => {
            return Err(KeyError::new(
                "colocated",
                "name the partition_key the colocated keys follow",
            ));
        }
        None if default_key.is_empty() => return Ok(None),
        None => default_key.to_owned(),
    };
    let colocated = match colocated {
        Some(list) => {
            for name in &list {
                known(name, "colocated")?;
                if *name == key {
                    return Err(KeyError::new(
                        "colocated",
                        format!("{name:?} is the partition key itself"),
                    ));
                }
            }
            list
        }
        None => default_colocated.iter().map(|k| (*k).to_owned()).collect(),
    };
    Ok(Some(crate::sources::PartitionSpec { key, colocated }))
}

/// A kind's own correlation keys, and those the config adds (which may replace one).
impl SourceConfig {
    /// The kinds whose fields are fixed take no pointers.
    fn no_pointers(&self, kind: &str) -> Result<(), KeyError> {
        for (field, set) in [
            ("type", self.type_pointer.is_some()),
            ("time", self.time.is_some()),
            ("id", self.id.is_some()),
        ] {
            if set {
                return Err(KeyError::new(
                    field,
                    format!("the {kind} kind reads its own fields; only keys may be added"),
                ));
            }
        }
        Ok(())
    }
}

fn preset_keys(
    preset: &[(&str, &str)],
    added: BTreeMap<String, String>,
) -> Result<Vec<(String, String)>, KeyError> {
    let mut keys: BTreeMap<String, String> = preset
        .iter()
        .map(|(name, pointer)| ((*name).to_owned(), (*pointer).to_owned()))
        .collect();
    for (name, pointer) in added {
        check_pointer(&pointer, &format!("keys.{name}"))?;
        keys.insert(name, pointer);
    }
    if keys.len() > MAX_KEYS {
        return Err(KeyError::new("keys", "at most 64 correlation keys"));
    }
    Ok(keys.into_iter().collect())
}

fn basic_auth(config: BasicAuthConfig) -> Result<BasicAuth, KeyError> {
    let Some(password) = config.password else {
        return Err(KeyError::new(
            "basic_auth",
            "give exactly one of password, password_env, password_file",
        ));
    };
    let Some(password) = password.expose() else {
        return Err(KeyError::new(
            "basic_auth.password",
            "the secret was not read from its variable or file",
        ));
    };
    if config.user.contains(':') {
        return Err(KeyError::new(
            "basic_auth.user",
            "a basic-auth user cannot contain ':'",
        ));
    }
    Ok(BasicAuth {
        user: config.user,
        password: password.to_owned(),
    })
}

fn check_pointer(pointer: &str, key: &str) -> Result<(), KeyError> {
    if pointer.starts_with('/') {
        Ok(())
    } else {
        Err(KeyError::new(
            key,
            format!(
                "{pointer:?} is not a JSON pointer; pointers start with '/', as \"/{pointer}\""
            ),
        ))
    }
}
