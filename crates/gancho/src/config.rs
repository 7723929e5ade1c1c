//! The config file: its TOML shape, its defaults, and its validation into what the crates need.
//!
//! The whole file is read and checked before anything binds a port or opens the store. Every
//! error names the key it is about, in one line, so an operator can fix it without guessing.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use gancho_ingress::{BasicAuth, IngressConfig, JsonSpec, Source, SourceKind};
use gancho_store::StoreConfig;
use serde::Deserialize;

/// The config used when neither `--config` nor `GANCHO_CONFIG` names a file: listen on
/// loopback, keep data in `./data`, and accept the two example sources.
pub const DEFAULT_CONFIG: &str = include_str!("default.toml");

/// A config key and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {key}: {message}")]
pub struct ConfigError {
    /// The file (and line, when known) or `embedded defaults`.
    pub origin: String,
    /// The dotted path of the key, `sources.bank.type`.
    pub key: String,
    pub message: String,
}

/// The config file as written. Every field documents its unit, default and an example;
/// `deploy/gancho.toml` shows them all.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    /// Address and port the webhook server listens on. Default: `127.0.0.1:8080`.
    #[serde(default = "default_listen")]
    listen: String,
    /// Folder of the store and the control socket, created if missing. Relative paths are
    /// relative to the working directory. Default: `data`.
    #[serde(default = "default_data_dir")]
    data_dir: PathBuf,
    /// Folder of the `.rhai` rules. Default: `rules`.
    #[serde(default = "default_rules_dir")]
    rules_dir: PathBuf,
    /// The largest webhook body accepted, in bytes; larger ones get 413. Default: 1048576.
    #[serde(default = "default_max_body_bytes")]
    max_body_bytes: u64,
    /// HTTP worker threads; 0 means one per core. Default: 0.
    #[serde(default)]
    http_workers: usize,
    /// How long a stop waits for requests in flight, as `30s`, `1m`. Default: `30s`.
    #[serde(default = "default_shutdown_grace")]
    shutdown_grace: String,
    #[serde(default)]
    store: StoreSection,
    #[serde(default)]
    sources: BTreeMap<String, SourceSection>,
    #[serde(default)]
    email: EmailSection,
    #[serde(default)]
    sms: SmsSection,
    #[serde(default)]
    http: HttpSection,
    #[serde(default)]
    retry: RetrySection,
}

/// Outgoing e-mail. Without `smtp_url`, messages are written to `DATA_DIR/mail/ID.eml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmailSection {
    /// `smtp://HOST:PORT` (plain; `?tls=required` for STARTTLS), `smtps://HOST:PORT`
    /// (implicit TLS), with `USER:PASSWORD@` (percent-encoded) when the server wants them. Or
    /// `smtp_url_env` / `smtp_url_file`.
    smtp_url: Option<String>,
    smtp_url_env: Option<String>,
    smtp_url_file: Option<PathBuf>,
    /// The CA (PEM) that signed a private relay's certificate; then only it is trusted.
    ca_file: Option<PathBuf>,
    /// The `From` of every message. Default: `gancho <gancho@localhost.localdomain>`.
    from: Option<String>,
    /// Per SMTP command. Default: `30s`.
    timeout: Option<String>,
    /// Messages sent at once (pooled connections). Default: 4.
    concurrency: Option<usize>,
    /// Messages started per second at most; 0: no limit. Default: 0.
    rate_per_second: Option<f64>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
enum ProviderName {
    Twilio,
    Vonage,
    #[default]
    File,
}

/// Outgoing SMS. Default provider `file`: messages are appended to `DATA_DIR/sms.jsonl`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SmsSection {
    #[serde(default)]
    provider: ProviderName,
    /// The provider's API root. Defaults: `https://api.twilio.com`, `https://rest.nexmo.com`.
    base_url: Option<String>,
    /// Twilio: the account, its auth token (or `auth_token_env` / `auth_token_file`), and the
    /// sender: `from` or `messaging_service_sid`.
    account_sid: Option<String>,
    auth_token: Option<String>,
    auth_token_env: Option<String>,
    auth_token_file: Option<PathBuf>,
    messaging_service_sid: Option<String>,
    /// Twilio and Vonage: the sender number or name.
    from: Option<String>,
    /// Vonage: the API key and secret (or `api_secret_env` / `api_secret_file`).
    api_key: Option<String>,
    api_secret: Option<String>,
    api_secret_env: Option<String>,
    api_secret_file: Option<PathBuf>,
    /// Per request. Default: `15s`.
    timeout: Option<String>,
    /// Default: 4.
    concurrency: Option<usize>,
    /// Default: 0 (no limit).
    rate_per_second: Option<f64>,
}

/// Rules' HTTP calls.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpSection {
    /// Hosts rules may call (`*.example.com` for subdomains); empty: any public host.
    #[serde(default)]
    allow_hosts: Vec<String>,
    /// Allow loopback, private and link-local targets. Default: false.
    #[serde(default)]
    allow_private: bool,
    /// Per call, connection included. Default: `10s`.
    timeout: Option<String>,
    /// `whsec_...`: sign calls the Standard Webhooks way. Or `signing_secret_env` /
    /// `signing_secret_file`.
    signing_secret: Option<String>,
    signing_secret_env: Option<String>,
    signing_secret_file: Option<PathBuf>,
    /// Calls at once. Default: 32.
    concurrency: Option<usize>,
    /// Calls at once to one host. Default: 8.
    per_host: Option<usize>,
    /// Default: 0 (no limit).
    rate_per_second: Option<f64>,
}

/// Retries of failed deliveries.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetrySection {
    /// The first wait; doubles (with jitter) up to `max`. Default: `2s`.
    initial: Option<String>,
    /// Default: `1h`.
    max: Option<String>,
    /// Tries before dead letters. Default: 15.
    max_attempts: Option<u32>,
    /// Failing this long since the first try: dead letters. Default: `3d`.
    max_age: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreSection {
    /// `fdatasync` after each group flush, so an acknowledged event survives a power loss; off,
    /// it survives a crash of the process only. Default: true.
    #[serde(default = "yes")]
    fsync: bool,
    /// The store's page cache, in MiB. Default: 256.
    #[serde(default = "default_cache_mb")]
    cache_mb: u64,
}

impl Default for StoreSection {
    fn default() -> StoreSection {
        StoreSection {
            fsync: true,
            cache_mb: default_cache_mb(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
enum KindName {
    Mailjet,
    Json,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceSection {
    /// `mailjet` or `json`.
    kind: KindName,
    /// HTTP basic credentials the sender must present.
    basic_auth: Option<BasicAuthSection>,
    /// json only: JSON pointer to the event type, as `/kind`.
    #[serde(rename = "type")]
    type_pointer: Option<String>,
    /// json only: JSON pointer to the event time (RFC 3339 or Unix seconds); absent: receipt.
    time: Option<String>,
    /// json only: JSON pointer to the provider's event id; absent: a hash of the content.
    id: Option<String>,
    /// json only: correlation keys, name to JSON pointer.
    #[serde(default)]
    keys: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BasicAuthSection {
    user: String,
    /// The password itself; or `password_env`, an environment variable holding it; or
    /// `password_file`, a file holding it (a trailing newline is ignored). Exactly one.
    password: Option<String>,
    password_env: Option<String>,
    password_file: Option<PathBuf>,
}

fn default_listen() -> String {
    "127.0.0.1:8080".to_owned()
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}
fn default_rules_dir() -> PathBuf {
    PathBuf::from("rules")
}
fn default_max_body_bytes() -> u64 {
    1024 * 1024
}
fn default_shutdown_grace() -> String {
    "30s".to_owned()
}
fn default_cache_mb() -> u64 {
    256
}
fn yes() -> bool {
    true
}

/// The validated config.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub rules_dir: PathBuf,
    pub store: StoreConfig,
    pub ingress: IngressConfig,
    pub actions: gancho_actions::ActionsConfig,
}

impl Config {
    /// The store lives in a folder of its own inside the data folder, beside the control
    /// socket.
    pub fn store_dir(&self) -> PathBuf {
        self.data_dir.join("store")
    }

    pub fn socket_path(&self) -> PathBuf {
        self.data_dir.join("gancho.sock")
    }

    /// How the engine runs: the rules folder, and each source's correlation keys, so a rule
    /// querying by a key its source does not have fails with a clear error.
    pub fn engine(&self) -> gancho_engine::EngineConfig {
        let mut engine = gancho_engine::EngineConfig::new(&self.rules_dir);
        engine.source_keys = Some(
            self.ingress
                .sources
                .iter()
                .map(|s| (s.name.clone(), s.kind.key_names().into_iter().collect()))
                .collect(),
        );
        engine
    }
}

/// Reads and validates the config file, or the embedded defaults when `path` is `None`.
pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
    match path {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|err| ConfigError {
                origin: path.display().to_string(),
                key: "(file)".to_owned(),
                message: format!("cannot read: {err}"),
            })?;
            parse(&text, &path.display().to_string())
        }
        None => parse(DEFAULT_CONFIG, "embedded defaults"),
    }
}

/// Parses and validates config text; `origin` names it in errors.
pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
    let deserializer = toml::Deserializer::new(text);
    let file: FileConfig = serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let line = err.inner().span().map(|span| {
            1 + text.as_bytes()[..span.start.min(text.len())]
                .iter()
                .filter(|b| **b == b'\n')
                .count()
        });
        let path = err.path().to_string();
        ConfigError {
            origin: match line {
                Some(line) => format!("{origin}:{line}"),
                None => origin.to_owned(),
            },
            key: if path == "." {
                "(file)".to_owned()
            } else {
                path
            },
            message: err.inner().message().trim().to_owned(),
        }
    })?;
    validate(file, origin)
}

fn validate(file: FileConfig, origin: &str) -> Result<Config, ConfigError> {
    let fail = |key: &str, message: String| ConfigError {
        origin: origin.to_owned(),
        key: key.to_owned(),
        message,
    };
    let listen: SocketAddr = file.listen.parse().map_err(|_| {
        fail(
            "listen",
            format!(
                "{:?} is not an address and port such as 127.0.0.1:8080",
                file.listen
            ),
        )
    })?;
    let shutdown_grace = humantime::parse_duration(&file.shutdown_grace).map_err(|err| {
        fail(
            "shutdown_grace",
            format!("{:?}: {err}", file.shutdown_grace),
        )
    })?;
    if file.data_dir.as_os_str().is_empty() {
        return Err(fail("data_dir", "must not be empty".to_owned()));
    }
    if file.max_body_bytes == 0 {
        return Err(fail("max_body_bytes", "must be at least 1".to_owned()));
    }
    let max_body_bytes = usize::try_from(file.max_body_bytes)
        .map_err(|_| fail("max_body_bytes", "too large for this machine".to_owned()))?;
    if file.store.cache_mb == 0 {
        return Err(fail("store.cache_mb", "must be at least 1".to_owned()));
    }
    let actions = validate_actions(&file, &shutdown_grace, &fail)?;
    let mut sources = Vec::with_capacity(file.sources.len());
    for (name, section) in file.sources {
        sources.push(validate_source(&name, section, &fail)?);
    }
    Ok(Config {
        listen,
        actions,
        data_dir: file.data_dir,
        rules_dir: file.rules_dir,
        store: StoreConfig {
            fsync: file.store.fsync,
            cache_capacity: file.store.cache_mb.saturating_mul(1024 * 1024),
        },
        ingress: IngressConfig {
            sources,
            max_body_bytes,
            workers: file.http_workers,
            shutdown_grace,
        },
    })
}

fn validate_actions(
    file: &FileConfig,
    shutdown_grace: &std::time::Duration,
    fail: &impl Fn(&str, String) -> ConfigError,
) -> Result<gancho_actions::ActionsConfig, ConfigError> {
    use gancho_actions::{EmailTransport, SmsProvider};
    let duration = |key: &str, text: &Option<String>, default: std::time::Duration| match text {
        None => Ok(default),
        Some(text) => {
            humantime::parse_duration(text).map_err(|err| fail(key, format!("{text:?}: {err}")))
        }
    };
    let mut actions = gancho_actions::ActionsConfig::local(&file.data_dir);
    // Sends in flight get at most 10 s of the stop after the HTTP server's grace, so the whole
    // stop stays within the unit's TimeoutStopSec; what is abandoned is sent after the restart.
    actions.shutdown_grace = (*shutdown_grace).min(std::time::Duration::from_secs(10));

    let email = &file.email;
    if let Some(url) = secret(
        &email.smtp_url,
        &email.smtp_url_env,
        &email.smtp_url_file,
        "email.smtp_url",
        fail,
    )? {
        actions.email.transport = EmailTransport::Smtp { url };
    }
    if let Some(from) = &email.from {
        actions.email.from = from.clone();
    }
    actions.email.ca_file = email.ca_file.clone();
    actions.email.timeout = duration("email.timeout", &email.timeout, actions.email.timeout)?;
    limits(
        &mut actions.email.limits,
        email.concurrency,
        email.rate_per_second,
    );

    let sms = &file.sms;
    let required = |key: &str, value: &Option<String>| {
        value.clone().ok_or_else(|| {
            fail(
                &format!("sms.{key}"),
                format!("required for provider {:?}", sms.provider),
            )
        })
    };
    actions.sms.provider = match sms.provider {
        ProviderName::File => SmsProvider::File,
        ProviderName::Twilio => SmsProvider::Twilio {
            base_url: sms
                .base_url
                .clone()
                .unwrap_or_else(|| "https://api.twilio.com".to_owned()),
            account_sid: required("account_sid", &sms.account_sid)?,
            auth_token: secret(
                &sms.auth_token,
                &sms.auth_token_env,
                &sms.auth_token_file,
                "sms.auth_token",
                fail,
            )?
            .ok_or_else(|| fail("sms.auth_token", "required for provider twilio".to_owned()))?,
            from: sms.from.clone(),
            messaging_service_sid: sms.messaging_service_sid.clone(),
        },
        ProviderName::Vonage => SmsProvider::Vonage {
            base_url: sms
                .base_url
                .clone()
                .unwrap_or_else(|| "https://rest.nexmo.com".to_owned()),
            api_key: required("api_key", &sms.api_key)?,
            api_secret: secret(
                &sms.api_secret,
                &sms.api_secret_env,
                &sms.api_secret_file,
                "sms.api_secret",
                fail,
            )?
            .ok_or_else(|| fail("sms.api_secret", "required for provider vonage".to_owned()))?,
            from: required("from", &sms.from)?,
        },
    };
    actions.sms.timeout = duration("sms.timeout", &sms.timeout, actions.sms.timeout)?;
    limits(
        &mut actions.sms.limits,
        sms.concurrency,
        sms.rate_per_second,
    );

    let http = &file.http;
    actions.http.allow_hosts = http.allow_hosts.clone();
    actions.http.allow_private = http.allow_private;
    actions.http.timeout = duration("http.timeout", &http.timeout, actions.http.timeout)?;
    actions.http.signing_secret = secret(
        &http.signing_secret,
        &http.signing_secret_env,
        &http.signing_secret_file,
        "http.signing_secret",
        fail,
    )?;
    limits(
        &mut actions.http.limits,
        http.concurrency,
        http.rate_per_second,
    );
    if let Some(per_host) = http.per_host {
        actions.http.per_host = per_host;
    }

    let retry = &file.retry;
    actions.retry.initial = duration("retry.initial", &retry.initial, actions.retry.initial)?;
    actions.retry.max = duration("retry.max", &retry.max, actions.retry.max)?;
    if let Some(n) = retry.max_attempts {
        actions.retry.max_attempts = n;
    }
    if retry.max_age.is_some() {
        actions.retry.max_age = Some(duration(
            "retry.max_age",
            &retry.max_age,
            Default::default(),
        )?);
    }
    actions.check().map_err(|err| match err {
        gancho_actions::ActionsError::Config { key, message } => fail(&key, message),
        other => fail("(actions)", other.to_string()),
    })?;
    Ok(actions)
}

fn limits(
    limits: &mut gancho_actions::ChannelLimits,
    concurrency: Option<usize>,
    rate: Option<f64>,
) {
    if let Some(n) = concurrency {
        limits.concurrency = n;
    }
    if let Some(rate) = rate {
        limits.rate_per_sec = rate;
    }
}

/// A secret given as `KEY`, `KEY_env` (an environment variable) or `KEY_file` (a file; a
/// trailing newline is ignored): at most one of them.
fn secret(
    value: &Option<String>,
    env: &Option<String>,
    file: &Option<PathBuf>,
    key: &str,
    fail: &impl Fn(&str, String) -> ConfigError,
) -> Result<Option<String>, ConfigError> {
    let found = match (value, env, file) {
        (None, None, None) => return Ok(None),
        (Some(value), None, None) => value.clone(),
        (None, Some(var), None) => std::env::var(var).map_err(|_| {
            fail(
                &format!("{key}_env"),
                format!("environment variable {var} is not set (or not UTF-8)"),
            )
        })?,
        (None, None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|err| {
                fail(
                    &format!("{key}_file"),
                    format!("cannot read {}: {err}", path.display()),
                )
            })?;
            text.trim_end_matches(['\r', '\n']).to_owned()
        }
        _ => {
            return Err(fail(
                key,
                format!("give at most one of {key}, {key}_env, {key}_file"),
            ));
        }
    };
    if found.is_empty() {
        return Err(fail(key, "is empty".to_owned()));
    }
    Ok(Some(found))
}

fn validate_source(
    name: &str,
    section: SourceSection,
    fail: &impl Fn(&str, String) -> ConfigError,
) -> Result<Source, ConfigError> {
    let key = |field: &str| {
        format!(
            "sources.{name}{}{field}",
            if field.is_empty() { "" } else { "." }
        )
    };
    if name.len() > 64 {
        return Err(fail(
            &key(""),
            "a source name may be at most 64 bytes long".to_owned(),
        ));
    }
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(fail(
            &key(""),
            "a source name may hold only letters, digits, '-' and '_' (it is part of the URL)"
                .to_owned(),
        ));
    }
    if [gancho_engine::TIMER_SOURCE, gancho_engine::CRON_SOURCE].contains(&name) {
        return Err(fail(
            &key(""),
            format!("the source name {name:?} is reserved for the engine's own events"),
        ));
    }
    let auth = match section.basic_auth {
        None => None,
        Some(auth) => Some(resolve_basic_auth(auth, &key("basic_auth"), fail)?),
    };
    let kind = match section.kind {
        KindName::Mailjet => {
            for (field, set) in [
                ("type", section.type_pointer.is_some()),
                ("time", section.time.is_some()),
                ("id", section.id.is_some()),
                ("keys", !section.keys.is_empty()),
            ] {
                if set {
                    return Err(fail(
                        &key(field),
                        "only sources of kind \"json\" take JSON pointers; mailjet's fields are fixed".to_owned(),
                    ));
                }
            }
            SourceKind::Mailjet
        }
        KindName::Json => {
            let Some(kind_pointer) = section.type_pointer else {
                return Err(fail(
                    &key("type"),
                    "required for kind \"json\": a JSON pointer to the event type, such as \"/type\"".to_owned(),
                ));
            };
            check_pointer(&kind_pointer, &key("type"), fail)?;
            if let Some(p) = &section.time {
                check_pointer(p, &key("time"), fail)?;
            }
            if let Some(p) = &section.id {
                check_pointer(p, &key("id"), fail)?;
            }
            if section.keys.len() > 64 {
                return Err(fail(&key("keys"), "at most 64 correlation keys".to_owned()));
            }
            let mut keys = Vec::with_capacity(section.keys.len());
            for (key_name, pointer) in section.keys {
                if key_name.is_empty() || key_name.len() > 256 {
                    return Err(fail(
                        &key(&format!("keys.{key_name}")),
                        "a key name must be 1 to 256 bytes long".to_owned(),
                    ));
                }
                check_pointer(&pointer, &key(&format!("keys.{key_name}")), fail)?;
                keys.push((key_name, pointer));
            }
            SourceKind::Json(JsonSpec {
                kind: kind_pointer,
                time: section.time,
                id: section.id,
                keys,
            })
        }
    };
    Ok(Source {
        name: name.to_owned(),
        kind,
        auth,
    })
}

fn check_pointer(
    pointer: &str,
    key: &str,
    fail: &impl Fn(&str, String) -> ConfigError,
) -> Result<(), ConfigError> {
    if pointer.starts_with('/') {
        Ok(())
    } else {
        Err(fail(
            key,
            format!(
                "{pointer:?} is not a JSON pointer; pointers start with '/', as \"/{pointer}\""
            ),
        ))
    }
}

fn resolve_basic_auth(
    section: BasicAuthSection,
    key: &str,
    fail: &impl Fn(&str, String) -> ConfigError,
) -> Result<BasicAuth, ConfigError> {
    let password = secret(
        &section.password,
        &section.password_env,
        &section.password_file,
        &format!("{key}.password"),
        fail,
    )?
    .ok_or_else(|| {
        fail(
            key,
            "give exactly one of password, password_env, password_file".to_owned(),
        )
    })?;
    if section.user.contains(':') {
        return Err(fail(
            &format!("{key}.user"),
            "a basic-auth user cannot contain ':'".to_owned(),
        ));
    }
    Ok(BasicAuth {
        user: section.user,
        password,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_are_valid() {
        let config = load(None).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.data_dir, PathBuf::from("data"));
        assert!(config.store.fsync);
    }

    #[test]
    fn the_deploy_example_parses_with_every_key() {
        // SAFETY of the test: the example reads a password from this variable.
        let text = include_str!("../../../deploy/gancho.toml");
        let config = parse(text, "deploy/gancho.toml").unwrap();
        let names: Vec<_> = config
            .ingress
            .sources
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(names, ["bank", "mailjet"]);
        assert!(config.ingress.sources.iter().all(|s| s.auth.is_some()));
        let actions = &config.actions;
        assert!(matches!(
            &actions.email.transport,
            gancho_actions::EmailTransport::Smtp { url } if url.starts_with("smtps://")
        ));
        assert!(matches!(
            &actions.sms.provider,
            gancho_actions::SmsProvider::Twilio { from: Some(_), .. }
        ));
        assert_eq!(actions.http.allow_hosts.len(), 2);
        assert!(actions.http.signing_secret.is_some());
        assert_eq!(actions.sms.limits.rate_per_sec, 1.0);
        assert_eq!(actions.retry.max_attempts, 15);
        assert_eq!(actions.retry.max, std::time::Duration::from_secs(3600));
    }

    #[test]
    fn action_sections_are_checked() {
        for (text, expected) in [
            (
                "[email]\nsmtp_url = \"http://mail.example.com\"\n",
                "email.smtp_url: must be smtp://",
            ),
            (
                "[email]\nsmtp_url = \"smtp://mail.example.com?tls=maybe\"\n",
                "email.smtp_url: tls= takes",
            ),
            ("[email]\nfrom = \"not an address\"\n", "email.from:"),
            (
                "[sms]\nprovider = \"twilio\"\naccount_sid = \"AC1\"\nauth_token = \"t\"\n",
                "sms.from: twilio needs exactly one of from, messaging_service_sid",
            ),
            (
                "[sms]\nprovider = \"vonage\"\napi_key = \"k\"\nfrom = \"Shop\"\n",
                "sms.api_secret: required for provider vonage",
            ),
            (
                "[http]\nsigning_secret = \"whsec_!!\"\n",
                "http.signing_secret:",
            ),
            (
                "[http]\nper_host = 0\n",
                "http.per_host: must be at least 1",
            ),
            ("[retry]\nmax = \"soon\"\n", "retry.max:"),
            (
                "[email]\nsmtp_url = \"smtp://a.example\"\nsmtp_url_env = \"X\"\n",
                "email.smtp_url: give at most one of",
            ),
        ] {
            let message = err(text);
            assert!(message.contains(expected), "{text}: {message}");
        }
    }

    fn err(text: &str) -> String {
        parse(text, "t.toml").unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_key_in_one_line() {
        let cases = [
            (
                "listen = \"nowhere\"",
                "t.toml: listen: \"nowhere\" is not an address",
            ),
            ("lisen = \"x\"", "t.toml:1: lisen: unknown field `lisen`"),
            (
                "[sources.bank]\nkind = \"json\"\n",
                "t.toml: sources.bank.type: required for kind \"json\"",
            ),
            (
                "[sources.bank]\nkind = \"json\"\ntype = \"kind\"\n",
                "t.toml: sources.bank.type: \"kind\" is not a JSON pointer",
            ),
            (
                "[sources.m]\nkind = \"mailjet\"\ntype = \"/x\"\n",
                "t.toml: sources.m.type: only sources of kind \"json\"",
            ),
            (
                "[sources.m]\nkind = \"smtp\"\n",
                "t.toml:2: sources.m.kind: unknown variant `smtp`",
            ),
            (
                "[sources.m]\nkind = \"mailjet\"\nbasic_auth = { user = \"u\" }\n",
                "t.toml: sources.m.basic_auth: give exactly one of",
            ),
            (
                "[sources.m]\nkind = \"mailjet\"\nbasic_auth = { user = \"u\", password_env = \"GANCHO_TEST_SURELY_UNSET\" }\n",
                "t.toml: sources.m.basic_auth.password_env: environment variable GANCHO_TEST_SURELY_UNSET is not set",
            ),
            (
                "[sources.\"a b\"]\nkind = \"mailjet\"\n",
                "t.toml: sources.a b: a source name may hold only",
            ),
            (
                "[sources.cron]\nkind = \"mailjet\"\n",
                "t.toml: sources.cron: the source name \"cron\" is reserved",
            ),
            (
                "shutdown_grace = \"soon\"",
                "t.toml: shutdown_grace: \"soon\"",
            ),
            (
                "[store]\nfsync = \"yes\"\n",
                "t.toml:2: store.fsync: invalid type",
            ),
        ];
        for (text, want) in cases {
            let got = err(text);
            assert!(got.starts_with(want), "{text:?}\n got: {got}\nwant: {want}");
            assert!(!got.contains('\n'), "{got:?} is not one line");
        }
    }

    #[test]
    fn password_file_is_read_without_its_newline() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        let text = format!(
            "[sources.m]\nkind = \"mailjet\"\nbasic_auth = {{ user = \"u\", password_file = {:?} }}\n",
            file.display().to_string()
        );
        let config = parse(&text, "t").unwrap();
        assert_eq!(
            config.ingress.sources[0].auth.as_ref().unwrap().password,
            "s3cret"
        );
    }
}
