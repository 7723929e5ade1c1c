//! How the actions are delivered, as the daemon's config file gave it (parsed and checked by
//! the binary).

use std::path::PathBuf;
use std::time::Duration;

use crate::ActionsError;

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
            email: EmailConfig {
                transport: EmailTransport::Files,
                from: "gancho <gancho@localhost.localdomain>".to_owned(),
                timeout: Duration::from_secs(30),
                limits: ChannelLimits::new(4),
                ca_file: None,
            },
            sms: SmsConfig {
                provider: SmsProvider::File,
                timeout: Duration::from_secs(15),
                limits: ChannelLimits::new(4),
            },
            http: HttpConfig {
                allow_hosts: Vec::new(),
                allow_private: false,
                timeout: Duration::from_secs(10),
                signing_secret: None,
                limits: ChannelLimits::new(32),
                per_host: 8,
            },
            retry: RetryPolicy::default(),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

impl ActionsConfig {
    /// Checks what can be checked before starting: addresses, URLs, secrets, limits. Errors
    /// name the config key.
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
            crate::email::SmtpTarget::parse(url).map_err(|m| fail("email.smtp_url", m))?;
        }
        crate::email::read_ca(self.email.ca_file.as_deref())?;
        match &self.sms.provider {
            SmsProvider::Twilio {
                base_url,
                from,
                messaging_service_sid,
                ..
            } => {
                check_base_url(base_url).map_err(|m| fail("sms.base_url", m))?;
                if from.is_none() == messaging_service_sid.is_none() {
                    return Err(fail(
                        "sms.from",
                        "twilio needs exactly one of from, messaging_service_sid".to_owned(),
                    ));
                }
            }
            SmsProvider::Vonage { base_url, .. } => {
                check_base_url(base_url).map_err(|m| fail("sms.base_url", m))?;
            }
            SmsProvider::File => {}
        }
        if let Some(secret) = &self.http.signing_secret {
            crate::sign::Signer::new(secret).map_err(|m| fail("http.signing_secret", m))?;
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
        if self.retry.max_attempts == 0 {
            return Err(fail("retry.max_attempts", "must be at least 1".to_owned()));
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

fn check_base_url(base_url: &str) -> Result<(), String> {
    let url = url::Url::parse(base_url).map_err(|err| format!("{base_url:?}: {err}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{base_url:?} is not an http(s) URL"));
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
}

#[derive(Debug, Clone)]
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

#[derive(Debug, Clone)]
pub enum EmailTransport {
    /// `smtp://` (plain, `?tls=required` for STARTTLS, `?tls=opportunistic`) or `smtps://`
    /// (implicit TLS), with credentials in the URL's user and password.
    Smtp { url: String },
    /// Each message as `data_dir/mail/ID.eml`.
    Files,
}

#[derive(Debug, Clone)]
pub struct SmsConfig {
    pub provider: SmsProvider,
    pub timeout: Duration,
    pub limits: ChannelLimits,
}

#[derive(Debug, Clone)]
pub enum SmsProvider {
    /// Twilio's Messages API.
    Twilio {
        base_url: String,
        account_sid: String,
        auth_token: String,
        /// The sender number, or
        from: Option<String>,
        /// a messaging service (one of the two).
        messaging_service_sid: Option<String>,
    },
    /// Vonage's SMS API.
    Vonage {
        base_url: String,
        api_key: String,
        api_secret: String,
        from: String,
    },
    /// Each message as a JSON line in `data_dir/sms.jsonl`.
    File,
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Hosts a rule may call (`hooks.example.com`, or `*.example.com` for its subdomains);
    /// empty: any host.
    pub allow_hosts: Vec<String>,
    /// Loopback, private, link-local and other non-public addresses are refused unless true.
    pub allow_private: bool,
    /// Whole request, connection included.
    pub timeout: Duration,
    /// `whsec_…`: signs every call the Standard Webhooks way.
    pub signing_secret: Option<String>,
    pub limits: ChannelLimits,
    /// Calls to one host at once, at most: a slow host cannot take every slot of the channel.
    pub per_host: usize,
}

/// When a failed send is tried again.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// The first wait; it doubles with each failure (with jitter) up to `max`.
    pub initial: Duration,
    pub max: Duration,
    /// Tries before the item goes to dead letters.
    pub max_attempts: u32,
    /// Age (since the first try) after which a failing item goes to dead letters.
    pub max_age: Option<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_secs(2),
            max: Duration::from_secs(3600),
            max_attempts: 15,
            max_age: Some(Duration::from_secs(3 * 24 * 3600)),
        }
    }
}
