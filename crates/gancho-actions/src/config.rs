//! The `[email]`, `[sms]`, `[http]` and `[retry]` sections of the config file: their shape,
//! their one set of defaults, and the types the executor runs with.
//!
//! The sections live here, beside the code that uses them, so a key, its default and its docs
//! change together (the binary only composes the sections). Each public type deserializes from
//! its section through a private `*Section` struct that mirrors the file (flat keys, a secret's
//! three spellings), so whatever the file gets wrong is a deserialization error with its line;
//! `ActionsConfig::check` is left with what needs a secret's value or a library's parser. The
//! secrets arrive unread (`KEY_env`, `KEY_file`): the binary reads them through
//! [`ActionsConfig::secrets_mut`] before the executor starts.

use std::path::PathBuf;
use std::time::Duration;

use gancho_core::config::duration;
use gancho_core::{KeyError, Secret, SecretString};
use serde::Deserialize;

use crate::ActionsError;

/// Twilio's API root, when `base_url` is not given.
const TWILIO_BASE_URL: &str = "https://api.twilio.com";
/// Vonage's API root, when `base_url` is not given.
const VONAGE_BASE_URL: &str = "https://rest.nexmo.com";

/// Everything the executor needs.
#[derive(Debug, Clone)]
pub struct ActionsConfig {
    /// Where the file transports write (`mail/*.eml`, `sms.jsonl`).
    pub data_dir: PathBuf,
    pub email: EmailConfig,
    pub sms: SmsConfig,
    pub http: HttpConfig,
    pub retry: RetryPolicy,
    /// How long a stop waits for sends in flight; what it abandons is sent again after the
    /// next start.
    pub shutdown_grace: Duration,
}

impl ActionsConfig {
    /// Files for e-mail and SMS, any public HTTP host, default limits: what a fresh install
    /// runs with.
    pub fn local(data_dir: impl Into<PathBuf>) -> ActionsConfig {
        ActionsConfig {
            data_dir: data_dir.into(),
            email: EmailConfig::default(),
            sms: SmsConfig::default(),
            http: HttpConfig::default(),
            retry: RetryPolicy::default(),
            shutdown_grace: Duration::from_secs(10),
        }
    }

    /// Every secret of the sections in use, with its dotted key, so the binary can read those
    /// given as `KEY_env` or `KEY_file` and put their values in place.
    pub fn secrets_mut(&mut self) -> Vec<(&'static str, &mut Secret)> {
        let mut secrets = Vec::new();
        if let EmailTransport::Smtp { url } = &mut self.email.transport {
            secrets.push(("email.smtp_url", url));
        }
        match &mut self.sms.provider {
            SmsProvider::Twilio { auth_token, .. } => secrets.push(("sms.auth_token", auth_token)),
            SmsProvider::Vonage { api_secret, .. } => secrets.push(("sms.api_secret", api_secret)),
            SmsProvider::File => {}
        }
        if let Some(secret) = &mut self.http.signing_secret {
            secrets.push(("http.signing_secret", secret));
        }
        secrets
    }

    /// Checks what needs a secret's value or a library's parser before starting: addresses,
    /// the SMTP URL, the signing secret, limits. Errors name the config key.
    pub fn check(&self) -> Result<(), ActionsError> {
        let fail = |key: &str, message: String| ActionsError::Config {
            key: key.to_owned(),
            message,
        };
        self.email
            .from
            .parse::<lettre::message::Mailbox>()
            .map_err(|err| fail("email.from", format!("{:?}: {err}", self.email.from)))?;
        if let EmailTransport::Smtp { url } = &self.email.transport {
            // The URL may hold a password: errors never echo it.
            crate::email::SmtpTarget::parse(exposed(url, "email.smtp_url")?)
                .map_err(|m| fail("email.smtp_url", m))?;
        }
        crate::email::read_ca(self.email.ca_file.as_deref())?;
        if let Some(secret) = &self.http.signing_secret {
            crate::sign::Signer::new(exposed(secret, "http.signing_secret")?)
                .map_err(|m| fail("http.signing_secret", m))?;
        }
        for (key, limits) in [
            ("email", self.email.limits),
            ("sms", self.sms.limits),
            ("http", self.http.limits),
        ] {
            if limits.concurrency == 0 {
                return Err(fail(
                    &format!("{key}.concurrency"),
                    "must be at least 1".to_owned(),
                ));
            }
            let rate = limits.rate_per_sec;
            if !(rate == 0.0 || (0.001..=1_000_000.0).contains(&rate)) {
                return Err(fail(
                    &format!("{key}.rate_per_second"),
                    "must be 0 (no limit) or from 0.001 to 1000000".to_owned(),
                ));
            }
        }
        if self.http.per_host == 0 {
            return Err(fail("http.per_host", "must be at least 1".to_owned()));
        }
        if self.retry.initial.is_zero() || self.retry.max < self.retry.initial {
            return Err(fail(
                "retry.max",
                "initial must be above zero and max at least initial".to_owned(),
            ));
        }
        Ok(())
    }
}

/// A secret's value, or a config error naming its key when the binary has not read it yet.
pub(crate) fn exposed<'a>(secret: &'a Secret, key: &str) -> Result<&'a str, ActionsError> {
    secret.expose().ok_or_else(|| ActionsError::Config {
        key: key.to_owned(),
        message: "the secret was not read from its variable or file".to_owned(),
    })
}

fn check_base_url(base_url: &str) -> Result<(), KeyError> {
    let fail = |message| KeyError::new("base_url", message);
    let url = url::Url::parse(base_url).map_err(|err| fail(format!("{base_url:?}: {err}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(fail(format!("{base_url:?} is not an http(s) URL")));
    }
    Ok(())
}

/// How many sends of a channel run at once, and how many start per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChannelLimits {
    pub concurrency: usize,
    /// Sends started per second at most; 0: no limit.
    pub rate_per_sec: f64,
}

impl ChannelLimits {
    pub fn new(concurrency: usize) -> ChannelLimits {
        ChannelLimits {
            concurrency,
            rate_per_sec: 0.0,
        }
    }

    fn with(self, concurrency: Option<usize>, rate_per_second: Option<f64>) -> ChannelLimits {
        ChannelLimits {
            concurrency: concurrency.unwrap_or(self.concurrency),
            rate_per_sec: rate_per_second.unwrap_or(self.rate_per_sec),
        }
    }
}

/// Outgoing e-mail, from the `[email]` section (keys on `EmailSection` below).
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "EmailSection")]
pub struct EmailConfig {
    pub transport: EmailTransport,
    /// The default `From`, as `Shop <shop@example.com>`.
    pub from: String,
    /// Per SMTP command.
    pub timeout: Duration,
    pub limits: ChannelLimits,
    /// A PEM file of the CA that signed the SMTP server's certificate: then only it is
    /// trusted (a private relay). Absent: the system's trust store.
    pub ca_file: Option<PathBuf>,
}

impl Default for EmailConfig {
    fn default() -> EmailConfig {
        EmailConfig {
            transport: EmailTransport::Files,
            from: "gancho <gancho@localhost.localdomain>".to_owned(),
            timeout: Duration::from_secs(30),
            limits: ChannelLimits::new(4),
            ca_file: None,
        }
    }
}

#[derive(Debug, Clone)]
pub enum EmailTransport {
    /// `smtp://` (plain, `?tls=required` for STARTTLS, `?tls=opportunistic`) or `smtps://`
    /// (implicit TLS), with credentials in the URL's user and password: a secret.
    Smtp { url: Secret },
    /// Each message as `data_dir/mail/ID.eml`.
    Files,
}

/// `[email]` as written. Without `smtp_url`, messages are written to `DATA_DIR/mail/ID.eml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmailSection {
    /// `smtp://HOST:PORT` (plain; `?tls=required` for STARTTLS, `?tls=opportunistic` to use it
    /// when offered), `smtps://HOST:PORT` (implicit TLS), with `USER:PASSWORD@`
    /// (percent-encoded) when the server wants them. A secret: or `smtp_url_env =
    /// "GANCHO_SMTP_URL"`, or `smtp_url_file = "/etc/gancho/smtp.url"`. Default: none (files).
    /// Example: `"smtps://shop%40example.com:PASSWORD@smtp.example.com:465"`.
    smtp_url: Option<SecretString>,
    smtp_url_env: Option<String>,
    smtp_url_file: Option<PathBuf>,
    /// The PEM file of the CA that signed a private relay's certificate; then only it is
    /// trusted. Default: none (the system's trust store). Example: `"/etc/gancho/smtp-ca.pem"`.
    ca_file: Option<PathBuf>,
    /// The `From` of every message. Default: `"gancho <gancho@localhost.localdomain>"`.
    /// Example: `"Shop <shop@example.com>"`.
    from: Option<String>,
    /// Time allowed per SMTP command. Default: `"30s"`. Example: `"1m"`.
    #[serde(default, deserialize_with = "duration::option::deserialize")]
    timeout: Option<Duration>,
    /// Messages sent at once (pooled connections). Default: 4. Example: 8.
    concurrency: Option<usize>,
    /// Messages started per second at most; 0: no limit. Default: 0. Example: 10.
    rate_per_second: Option<f64>,
}

impl TryFrom<EmailSection> for EmailConfig {
    type Error = KeyError;

    fn try_from(section: EmailSection) -> Result<EmailConfig, KeyError> {
        let defaults = EmailConfig::default();
        let url = Secret::from_keys(
            "smtp_url",
            section.smtp_url,
            section.smtp_url_env,
            section.smtp_url_file,
        )?;
        Ok(EmailConfig {
            transport: url.map_or(EmailTransport::Files, |url| EmailTransport::Smtp { url }),
            from: section.from.unwrap_or(defaults.from),
            timeout: section.timeout.unwrap_or(defaults.timeout),
            limits: defaults
                .limits
                .with(section.concurrency, section.rate_per_second),
            ca_file: section.ca_file,
        })
    }
}

/// Outgoing SMS, from the `[sms]` section (keys on `SmsSection` below).
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "SmsSection")]
pub struct SmsConfig {
    pub provider: SmsProvider,
    /// Per request.
    pub timeout: Duration,
    pub limits: ChannelLimits,
}

impl Default for SmsConfig {
    fn default() -> SmsConfig {
        SmsConfig {
            provider: SmsProvider::File,
            timeout: Duration::from_secs(15),
            limits: ChannelLimits::new(4),
        }
    }
}

/// Who sends the messages: `provider = "twilio" | "vonage" | "file"` in `[sms]`, with the keys
/// that provider needs (a missing one is an error of the section, with its line).
#[derive(Debug, Clone)]
pub enum SmsProvider {
    /// Twilio's Messages API.
    Twilio {
        base_url: String,
        account_sid: String,
        auth_token: Secret,
        /// The sender number, or
        from: Option<String>,
        /// a messaging service (one of the two).
        messaging_service_sid: Option<String>,
    },
    /// Vonage's SMS API.
    Vonage {
        base_url: String,
        api_key: String,
        api_secret: Secret,
        from: String,
    },
    /// Each message as a JSON line in `data_dir/sms.jsonl`.
    File,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum ProviderName {
    Twilio,
    Vonage,
    #[default]
    File,
}

/// `[sms]` as written: one flat table whatever the provider, as the file has always been.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SmsSection {
    /// `"twilio"`, `"vonage"` or `"file"` (each message appended to `DATA_DIR/sms.jsonl`).
    /// Default: `"file"`.
    #[serde(default)]
    provider: ProviderName,
    /// The provider's API root; tests point it at a local server. Default:
    /// `"https://api.twilio.com"` (twilio), `"https://rest.nexmo.com"` (vonage).
    base_url: Option<String>,
    /// Twilio (required): the account. Example: `"ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"`.
    account_sid: Option<String>,
    /// Twilio (required): the auth token. A secret: or `auth_token_env = "TWILIO_AUTH_TOKEN"`,
    /// or `auth_token_file = "/etc/gancho/twilio.token"`.
    auth_token: Option<SecretString>,
    auth_token_env: Option<String>,
    auth_token_file: Option<PathBuf>,
    /// Twilio: the messaging service that sends, instead of `from`.
    /// Example: `"MGaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"`.
    messaging_service_sid: Option<String>,
    /// The sender: a number (twilio: this or `messaging_service_sid`) or a name (vonage,
    /// required). Example: `"+15017122661"`.
    from: Option<String>,
    /// Vonage (required): the API key. Example: `"abcd1234"`.
    api_key: Option<String>,
    /// Vonage (required): the API secret. A secret: or `api_secret_env = "VONAGE_API_SECRET"`,
    /// or `api_secret_file`.
    api_secret: Option<SecretString>,
    api_secret_env: Option<String>,
    api_secret_file: Option<PathBuf>,
    /// Time allowed per request. Default: `"15s"`. Example: `"30s"`.
    #[serde(default, deserialize_with = "duration::option::deserialize")]
    timeout: Option<Duration>,
    /// Messages sent at once. Default: 4. Example: 2.
    concurrency: Option<usize>,
    /// Messages started per second at most; 0: no limit. Default: 0. Example: 1 (Twilio
    /// queues above 1/s per long-code number).
    rate_per_second: Option<f64>,
}

impl TryFrom<SmsSection> for SmsConfig {
    type Error = KeyError;

    fn try_from(section: SmsSection) -> Result<SmsConfig, KeyError> {
        let defaults = SmsConfig::default();
        let auth_token = Secret::from_keys(
            "auth_token",
            section.auth_token,
            section.auth_token_env,
            section.auth_token_file,
        )?;
        let api_secret = Secret::from_keys(
            "api_secret",
            section.api_secret,
            section.api_secret_env,
            section.api_secret_file,
        )?;
        let provider = match section.provider {
            ProviderName::File => SmsProvider::File,
            ProviderName::Twilio => {
                let base_url = section.base_url.unwrap_or(TWILIO_BASE_URL.to_owned());
                check_base_url(&base_url)?;
                let account_sid = required("twilio", "account_sid", section.account_sid)?;
                let auth_token = required("twilio", "auth_token", auth_token)?;
                if section.from.is_none() == section.messaging_service_sid.is_none() {
                    return Err(KeyError::new(
                        "from",
                        "twilio needs exactly one of from, messaging_service_sid",
                    ));
                }
                SmsProvider::Twilio {
                    base_url,
                    account_sid,
                    auth_token,
                    from: section.from,
                    messaging_service_sid: section.messaging_service_sid,
                }
            }
            ProviderName::Vonage => {
                let base_url = section.base_url.unwrap_or(VONAGE_BASE_URL.to_owned());
                check_base_url(&base_url)?;
                SmsProvider::Vonage {
                    base_url,
                    api_key: required("vonage", "api_key", section.api_key)?,
                    api_secret: required("vonage", "api_secret", api_secret)?,
                    from: required("vonage", "from", section.from)?,
                }
            }
        };
        Ok(SmsConfig {
            provider,
            timeout: section.timeout.unwrap_or(defaults.timeout),
            limits: defaults
                .limits
                .with(section.concurrency, section.rate_per_second),
        })
    }
}

/// A key the provider cannot work without.
fn required<T>(provider: &str, key: &str, value: Option<T>) -> Result<T, KeyError> {
    value.ok_or_else(|| KeyError::new(key, format!("required for provider {provider}")))
}

/// Rules' HTTP calls, from the `[http]` section (keys on `HttpSection` below).
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "HttpSection")]
pub struct HttpConfig {
    /// Hosts a rule may call (`hooks.example.com`, or `*.example.com` for its subdomains);
    /// empty: any host.
    pub allow_hosts: Vec<String>,
    /// Loopback, private, link-local and other non-public addresses are refused unless true.
    pub allow_private: bool,
    /// Whole request, connection included.
    pub timeout: Duration,
    /// `whsec_…`: signs every call the Standard Webhooks way.
    pub signing_secret: Option<Secret>,
    pub limits: ChannelLimits,
    /// Calls to one host at once, at most: a slow host cannot take every slot of the channel.
    pub per_host: usize,
}

impl Default for HttpConfig {
    fn default() -> HttpConfig {
        HttpConfig {
            allow_hosts: Vec::new(),
            allow_private: false,
            timeout: Duration::from_secs(10),
            signing_secret: None,
            limits: ChannelLimits::new(32),
            per_host: 8,
        }
    }
}

/// `[http]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpSection {
    /// Hosts rules may call; `"*.example.com"` allows its subdomains. Default: `[]` (any public
    /// host). Example: `["hooks.example.com", "*.shop.example"]`.
    allow_hosts: Option<Vec<String>>,
    /// Allow loopback, private (10/8, 172.16/12, 192.168/16, fc00::/7), link-local (where cloud
    /// metadata lives) and other non-public targets. Default: false.
    allow_private: Option<bool>,
    /// Time allowed per call, connection included. Default: `"10s"`. Example: `"30s"`.
    #[serde(default, deserialize_with = "duration::option::deserialize")]
    timeout: Option<Duration>,
    /// `whsec_...`: sign every call the Standard Webhooks way (`webhook-id`,
    /// `webhook-timestamp`, `webhook-signature`). A secret: or `signing_secret_env`, or
    /// `signing_secret_file`. Default: none (unsigned).
    signing_secret: Option<SecretString>,
    signing_secret_env: Option<String>,
    signing_secret_file: Option<PathBuf>,
    /// Calls at once. Default: 32. Example: 64.
    concurrency: Option<usize>,
    /// Calls at once to one host, so a slow host cannot take every slot. Default: 8.
    per_host: Option<usize>,
    /// Calls started per second at most; 0: no limit. Default: 0. Example: 50.
    rate_per_second: Option<f64>,
}

impl TryFrom<HttpSection> for HttpConfig {
    type Error = KeyError;

    fn try_from(section: HttpSection) -> Result<HttpConfig, KeyError> {
        let defaults = HttpConfig::default();
        Ok(HttpConfig {
            allow_hosts: section.allow_hosts.unwrap_or(defaults.allow_hosts),
            allow_private: section.allow_private.unwrap_or(defaults.allow_private),
            timeout: section.timeout.unwrap_or(defaults.timeout),
            signing_secret: Secret::from_keys(
                "signing_secret",
                section.signing_secret,
                section.signing_secret_env,
                section.signing_secret_file,
            )?,
            limits: defaults
                .limits
                .with(section.concurrency, section.rate_per_second),
            per_host: section.per_host.unwrap_or(defaults.per_host),
        })
    }
}

/// When a failed send is tried again: the `[retry]` section. A failed send is tried again after
/// `initial`, doubling (with jitter) up to `max`, honouring the peer's `Retry-After`; permanent
/// refusals are never retried.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// The first wait; it doubles with each failure (with jitter) up to `max`. Default: `"2s"`.
    /// Example: `"10s"`.
    #[serde(deserialize_with = "duration::deserialize")]
    pub initial: Duration,
    /// The longest wait between tries. Default: `"1h"`. Example: `"30m"`.
    #[serde(deserialize_with = "duration::deserialize")]
    pub max: Duration,
    /// Tries before the item goes to dead letters; 0: no cap, `max_age` alone ends the
    /// retries (an SMTP outage of a day is retried through). Default: 0. Example: 20.
    pub max_attempts: u32,
    /// Age (since the first try) after which a failing item goes to dead letters.
    /// Default: `"3d"`. Example: `"12h"`.
    #[serde(deserialize_with = "duration::option::deserialize")]
    pub max_age: Option<Duration>,
    /// How long dead letters are kept (since they died); `"0"` keeps them for ever. Default:
    /// `"30d"`. Example: `"90d"`.
    #[serde(deserialize_with = "duration::retention::deserialize")]
    pub dead_retention: Option<Duration>,
    /// How long the delivery history (`gancho sent`) keeps a delivered action; `"0"` keeps
    /// them for ever. Default: `"7d"`. Example: `"30d"`.
    #[serde(deserialize_with = "duration::retention::deserialize")]
    pub sent_retention: Option<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_secs(2),
            max: Duration::from_secs(3600),
            max_attempts: 0,
            max_age: Some(Duration::from_secs(3 * 24 * 3600)),
            dead_retention: Some(Duration::from_secs(30 * 24 * 3600)),
            sent_retention: Some(Duration::from_secs(7 * 24 * 3600)),
        }
    }
}
