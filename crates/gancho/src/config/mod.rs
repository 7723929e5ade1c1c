//! The config file: the binary's own keys, composed with the sections the crates own, then
//! checked as a whole.
//!
//! Each crate defines the `Deserialize` type of its section with its defaults and docs
//! (`[email]`, `[sms]`, `[http]`, `[retry]` in `gancho-actions`, `[sources.NAME]` in
//! `gancho-ingress`); this module adds the top-level keys and `[store]`, reads the secrets given
//! as `KEY_env` or `KEY_file` (only the binary reads the environment), and checks what spans
//! sections. The whole file is read and checked before anything binds a port or opens the
//! store. Every error names the key it is about, in one line, so an operator can fix it
//! without guessing.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gancho_actions::{ActionsConfig, EmailConfig, HttpConfig, RetryPolicy, SmsConfig};
use gancho_core::config::duration;
use gancho_core::{KeyError, Secret};
use gancho_ingress::{IngressConfig, SourceConfig};
use gancho_store::StoreConfig;
use serde::Deserialize;

/// The config used when neither `--config` nor `GANCHO_CONFIG` names a file: the defaults
/// (listen on loopback, data in `./data`) and the two example sources.
pub const DEFAULT_CONFIG: &str = include_str!("../default.toml");

/// Sends in flight get at most this much of a stop after the HTTP server's grace, so the whole
/// stop stays within the unit's `TimeoutStopSec`; what is abandoned is sent after the restart.
const ACTIONS_GRACE: Duration = Duration::from_secs(10);

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

/// The config file as written. `deploy/gancho.toml` shows every key; the sections' keys are
/// documented on their types in the crates that own them.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct FileConfig {
    /// Address and port the webhook server listens on. Default: `"127.0.0.1:8080"`.
    /// Example: `"0.0.0.0:8080"`.
    listen: String,
    /// Folder of the store and the control socket, created if missing. Relative paths are
    /// relative to the working directory. Default: `"data"`. Example: `"/var/lib/gancho"`.
    data_dir: PathBuf,
    /// Folder of the `.rhai` rules. Default: `"rules"`. Example: `"/etc/gancho/rules"`.
    rules_dir: PathBuf,
    /// The largest webhook body accepted, in bytes; larger ones get 413. Default: 1048576
    /// (1 MiB). Example: 4194304.
    max_body_bytes: u64,
    /// HTTP worker threads; 0 means one per core. Default: 0. Example: 4.
    http_workers: usize,
    /// How long a stop waits for requests in flight. Default: `"30s"`. Example: `"1m"`.
    #[serde(deserialize_with = "duration::deserialize")]
    shutdown_grace: Duration,
    /// How long a request's body may take to arrive; a slower one gets 408 and its connection
    /// is closed. Default: `"10s"`. Example: `"30s"`.
    #[serde(deserialize_with = "duration::deserialize")]
    body_timeout: Duration,
    /// Connections open at once, at most; more wait to be accepted. Default: 10000.
    max_connections: usize,
    /// How log lines are written to stderr: `"text"` (human-readable, for journald) or
    /// `"json"` (one JSON object per line). Default: `"text"`.
    log_format: LogFormat,
    store: StoreConfig,
    engine: gancho_engine::EngineSection,
    sources: BTreeMap<String, SourceConfig>,
    email: EmailConfig,
    sms: SmsConfig,
    http: HttpConfig,
    retry: RetryPolicy,
    admin: AdminFile,
    /// Cluster mode on NATS JetStream (`gancho_cluster::ClusterSection` documents its keys).
    /// Absent: a single node, with no NATS.
    cluster: Option<gancho_cluster::ClusterConfig>,
}

/// The `[admin]` section as written: the operators' listener (admin API, metrics,
/// readiness), apart from the public one.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct AdminFile {
    /// Address and port of the admin listener. It starts only with a token. Default:
    /// `"127.0.0.1:9090"`. Example: `"10.0.0.5:9090"`.
    listen: String,
    /// The bearer token every admin route but `/healthz` and `/readyz` requires, at least 16
    /// characters; or `token_env` (an environment variable) or `token_file` (a file). No
    /// token: no admin listener. Example: `token_file = "/etc/gancho/admin.token"`.
    token: Option<gancho_core::SecretString>,
    token_env: Option<String>,
    token_file: Option<PathBuf>,
    /// Serve `/metrics` without the token (for a Prometheus on a trusted network). Default:
    /// false.
    metrics_public: bool,
    /// `/readyz` answers 503 while the indexer or the engine is more than this many events
    /// behind the log. Default: 100000.
    ready_max_lag: u64,
}

impl Default for AdminFile {
    fn default() -> AdminFile {
        AdminFile {
            listen: "127.0.0.1:9090".to_owned(),
            token: None,
            token_env: None,
            token_file: None,
            metrics_public: false,
            ready_max_lag: 100_000,
        }
    }
}

/// The validated `[admin]` section.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Read already; `None`: the admin listener does not start.
    pub token: Option<Secret>,
    pub metrics_public: bool,
    pub ready_max_lag: u64,
}

/// How log lines are written (`log_format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines, for journald and a terminal.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `fields` (`message` among them),
    /// `target`, and the spans.
    Json,
}

/// An admin token is at least this long.
const MIN_TOKEN_LEN: usize = 16;

impl Default for FileConfig {
    fn default() -> FileConfig {
        let ingress = IngressConfig::default();
        FileConfig {
            listen: "127.0.0.1:8080".to_owned(),
            data_dir: PathBuf::from("data"),
            rules_dir: PathBuf::from("rules"),
            max_body_bytes: ingress.max_body_bytes as u64,
            http_workers: ingress.workers,
            shutdown_grace: ingress.shutdown_grace,
            body_timeout: ingress.body_timeout,
            max_connections: ingress.max_connections,
            log_format: LogFormat::default(),
            store: StoreConfig::default(),
            engine: gancho_engine::EngineSection::default(),
            sources: BTreeMap::new(),
            email: EmailConfig::default(),
            sms: SmsConfig::default(),
            http: HttpConfig::default(),
            retry: RetryPolicy::default(),
            admin: AdminFile::default(),
            cluster: None,
        }
    }
}

/// The validated config. Its `Debug` shows no secret: they are `Secret`s, and `BasicAuth`
/// redacts its password.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub rules_dir: PathBuf,
    pub store: StoreConfig,
    pub engine: gancho_engine::EngineSection,
    pub ingress: IngressConfig,
    pub actions: ActionsConfig,
    pub admin: AdminConfig,
    pub log_format: LogFormat,
    /// `[cluster]`, its token read already; `None`: a single node.
    pub cluster: Option<gancho_cluster::ClusterConfig>,
}

impl Config {
    /// The store lives in a folder of its own inside the data folder, beside the control
    /// socket.
    pub fn store_dir(&self) -> PathBuf {
        self.data_dir.join("store")
    }

    /// The store the commands open themselves when no daemon answers on the socket: `None` on
    /// a cluster node, whose partitions' stores may be another node's by then (its own store
    /// holds its quarantine only).
    pub fn stopped_store_dir(&self) -> Option<PathBuf> {
        self.cluster.is_none().then(|| self.store_dir())
    }

    pub fn socket_path(&self) -> PathBuf {
        self.data_dir.join("gancho.sock")
    }

    /// How the engine runs: the rules folder, and each source's correlation keys, so a rule
    /// querying by a key its source does not have fails with a clear error.
    pub fn engine(&self) -> gancho_engine::EngineConfig {
        let mut engine = gancho_engine::EngineConfig::new(&self.rules_dir);
        engine.late_grace_ms =
            i64::try_from(self.engine.late_grace.as_millis()).unwrap_or(i64::MAX);
        engine.trace_retention_ms = self
            .engine
            .trace_retention
            .map(|keep| i64::try_from(keep.as_millis()).unwrap_or(i64::MAX / 2));
        engine.retention_ms = self
            .store
            .retention
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        engine.source_keys = Some(
            self.ingress
                .sources
                .iter()
                .map(|s| {
                    let mut names: Vec<String> = s.kind.key_names();
                    names.extend(s.headers.keys.iter().map(|(name, _)| (*name).to_owned()));
                    (s.name.clone(), names.into_iter().collect())
                })
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
    let file: FileConfig = serde_path_to_error::deserialize(deserializer)
        .map_err(|err| deserialize_error(&err, text, origin))?;
    validate(file, origin)
}

/// A TOML or section error as one line: the file and line, the dotted key, the message. A
/// section's [`KeyError`] arrives as text and names a key within the section.
fn deserialize_error(
    err: &serde_path_to_error::Error<toml::de::Error>,
    text: &str,
    origin: &str,
) -> ConfigError {
    let line = err.inner().span().map(|span| {
        1 + text.as_bytes()[..span.start.min(text.len())]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
    });
    let path = err.path().to_string();
    let message = err.inner().message().trim();
    let (key, message) = match KeyError::parse(message) {
        Some((key, message)) => (join_key(&path, key), message),
        None if path == "." => ("(file)".to_owned(), message),
        None => (path, message),
    };
    ConfigError {
        origin: match line {
            Some(line) => format!("{origin}:{line}"),
            None => origin.to_owned(),
        },
        key,
        message: message.to_owned(),
    }
}

/// `section.key`, or the one that is not empty.
fn join_key(section: &str, key: &str) -> String {
    match (section, key) {
        (".", key) | ("", key) => key.to_owned(),
        (section, "") => section.to_owned(),
        (section, key) => format!("{section}.{key}"),
    }
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
    if file.data_dir.as_os_str().is_empty() {
        return Err(fail("data_dir", "must not be empty".to_owned()));
    }
    if file.max_body_bytes == 0 {
        return Err(fail("max_body_bytes", "must be at least 1".to_owned()));
    }
    let max_body_bytes = usize::try_from(file.max_body_bytes)
        .map_err(|_| fail("max_body_bytes", "too large for this machine".to_owned()))?;
    if file.body_timeout.is_zero() {
        return Err(fail("body_timeout", "must be longer than 0s".to_owned()));
    }
    if file.max_connections == 0 {
        return Err(fail("max_connections", "must be at least 1".to_owned()));
    }

    let mut actions = ActionsConfig {
        data_dir: file.data_dir.clone(),
        email: file.email,
        sms: file.sms,
        http: file.http,
        retry: file.retry,
        shutdown_grace: file.shutdown_grace.min(ACTIONS_GRACE),
    };
    for (key, secret) in actions.secrets_mut() {
        read_secret(secret, key, &fail)?;
    }
    actions.check().map_err(|err| match err {
        gancho_actions::ActionsError::Config { key, message } => fail(&key, message),
        other => fail("(actions)", other.to_string()),
    })?;

    let mut sources = Vec::with_capacity(file.sources.len());
    for (name, mut section) in file.sources {
        let fail_in =
            |err: KeyError| fail(&join_key(&format!("sources.{name}"), &err.key), err.message);
        SourceConfig::check_name(&name).map_err(fail_in)?;
        if [gancho_engine::TIMER_SOURCE, gancho_engine::CRON_SOURCE].contains(&name.as_str()) {
            return Err(fail(
                &format!("sources.{name}"),
                format!("the source name {name:?} is reserved for the engine's own events"),
            ));
        }
        for (key, secret) in section.secrets_mut() {
            read_secret(secret, &format!("sources.{name}.{key}"), &fail)?;
        }
        sources.push(section.into_source(&name).map_err(fail_in)?);
    }

    let admin_listen: SocketAddr = file.admin.listen.parse().map_err(|_| {
        fail(
            "admin.listen",
            format!(
                "{:?} is not an address and port such as 127.0.0.1:9090",
                file.admin.listen
            ),
        )
    })?;
    let mut token = Secret::from_keys(
        "token",
        file.admin.token,
        file.admin.token_env,
        file.admin.token_file,
    )
    .map_err(|err| fail(&join_key("admin", &err.key), err.message))?;
    if let Some(secret) = &mut token {
        read_secret(secret, "admin.token", &fail)?;
        if secret.expose().is_some_and(|t| t.len() < MIN_TOKEN_LEN) {
            return Err(fail(
                "admin.token",
                format!("must be at least {MIN_TOKEN_LEN} characters"),
            ));
        }
    }
    if admin_listen == listen && listen.port() != 0 {
        return Err(fail(
            "admin.listen",
            "must differ from listen (the public port)".to_owned(),
        ));
    }
    let admin = AdminConfig {
        listen: admin_listen,
        token,
        metrics_public: file.admin.metrics_public,
        ready_max_lag: file.admin.ready_max_lag,
    };

    let mut cluster = file.cluster;
    if let Some(cluster) = &mut cluster {
        if let gancho_cluster::NatsAuth::Token(secret) = &mut cluster.auth {
            read_secret(secret, "cluster.token", &fail)?;
        }
        // Every source must say which key places its events in a partition.
        if let Some(source) = sources.iter().find(|s| s.partition.is_none()) {
            let mut names = source.kind.key_names();
            names.extend(
                source
                    .headers
                    .keys
                    .iter()
                    .map(|(name, _)| (*name).to_owned()),
            );
            return Err(fail(
                &format!("sources.{}.partition_key", source.name),
                format!(
                    "required in cluster mode: the correlation key whose value decides an \
                     event's partition (one of: {})",
                    if names.is_empty() {
                        "none; give the source keys first".to_owned()
                    } else {
                        names.join(", ")
                    }
                ),
            ));
        }
    }

    Ok(Config {
        cluster,
        admin,
        log_format: file.log_format,
        listen,
        actions,
        data_dir: file.data_dir,
        rules_dir: file.rules_dir,
        store: file.store,
        engine: file.engine,
        ingress: IngressConfig {
            sources,
            max_body_bytes,
            workers: file.http_workers,
            shutdown_grace: file.shutdown_grace,
            body_timeout: file.body_timeout,
            max_connections: file.max_connections,
        },
    })
}

/// Reads a secret given as `KEY_env` (an environment variable) or `KEY_file` (a file; a
/// trailing newline is ignored) and puts its value in place. Errors never echo a value.
fn read_secret(
    secret: &mut Secret,
    key: &str,
    fail: &impl Fn(&str, String) -> ConfigError,
) -> Result<(), ConfigError> {
    let value = match secret {
        Secret::Value(value) => value.expose().to_owned(),
        Secret::Env(var) => std::env::var(&*var).map_err(|_| {
            fail(
                &format!("{key}_env"),
                format!("environment variable {var} is not set (or not UTF-8)"),
            )
        })?,
        Secret::File(path) => {
            let text = std::fs::read_to_string(&*path).map_err(|err| {
                fail(
                    &format!("{key}_file"),
                    format!("cannot read {}: {err}", path.display()),
                )
            })?;
            text.trim_end_matches(['\r', '\n']).to_owned()
        }
    };
    if value.is_empty() {
        return Err(fail(key, "is empty".to_owned()));
    }
    *secret = Secret::Value(value.into());
    Ok(())
}

#[cfg(test)]
mod tests;
