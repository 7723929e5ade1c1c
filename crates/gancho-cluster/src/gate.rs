//! The checks a NATS deployment must pass before a node runs on it.
//!
//! A JetStream that acknowledges before it has synced, or gets compare-and-set or deduplication
//! wrong, would break the very guarantees cluster mode exists to keep, silently. So a node
//! reads every server's `/varz` at start and refuses, naming the server and what is wrong:
//! - the version must be 2.14.0 or later: before 2.10 a write was acknowledged before fsync and
//!   KV compare-and-set was unsafe under concurrent writers; before 2.11 a leader change could
//!   answer "duplicate" for a message the stream does not hold; 2.14 fixed sourcing with
//!   deduplication and a stream frozen by a disk error (`docs/cluster.md` has the references);
//! - JetStream must be on, with file storage;
//! - `sync_interval: always`: each write synced before its acknowledgement.
//!
//! Then it connects with the node's credentials and checks that the account has JetStream.
//! The version is read from the client connection too, so a server behind a monitoring
//! endpoint that lies about itself is still caught where it matters.

use std::time::Duration;

use serde::Deserialize;

use crate::config::{ClusterConfig, NatsAuth};
use crate::error::ClusterError;

/// The oldest nats-server a node runs on.
pub const MIN_SERVER: (u32, u32, u32) = (2, 14, 0);

/// How long one monitoring request or the connection may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// What a server's `/varz` says about what gancho needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerReport {
    /// The monitoring endpoint it was read from.
    pub endpoint: String,
    pub name: String,
    pub version: String,
    pub jetstream: bool,
    pub file_storage: bool,
    pub sync_always: bool,
}

impl ServerReport {
    /// What keeps gancho off this server, if anything.
    pub fn refusal(&self) -> Option<ClusterError> {
        let server = format!("{} ({})", self.name, self.endpoint);
        if !version_meets_floor(&self.version) {
            return Some(ClusterError::TooOld {
                server,
                version: self.version.clone(),
            });
        }
        if !self.jetstream {
            return Some(ClusterError::NoJetStream { server });
        }
        if !self.file_storage {
            return Some(ClusterError::NoFileStorage { server });
        }
        if !self.sync_always {
            return Some(ClusterError::NotSyncAlways { server });
        }
        None
    }
}

#[derive(Debug, Deserialize)]
struct Varz {
    #[serde(default)]
    server_name: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    jetstream: Option<VarzJetStream>,
}

#[derive(Debug, Deserialize)]
struct VarzJetStream {
    #[serde(default)]
    config: Option<VarzJetStreamConfig>,
}

#[derive(Debug, Deserialize)]
struct VarzJetStreamConfig {
    #[serde(default)]
    max_storage: i64,
    #[serde(default)]
    store_dir: String,
    /// Present (and true) only with `sync_interval: always`.
    #[serde(default)]
    sync_always: bool,
}

/// Reads a `/varz` document.
pub fn parse_varz(endpoint: &str, body: &str) -> Result<ServerReport, ClusterError> {
    let varz: Varz = serde_json::from_str(body).map_err(|err| ClusterError::Monitor {
        endpoint: endpoint.to_owned(),
        reason: format!("its /varz is not a nats-server's: {err}"),
    })?;
    if varz.version.is_empty() {
        return Err(ClusterError::Monitor {
            endpoint: endpoint.to_owned(),
            reason: "its /varz has no version: is it a nats-server?".to_owned(),
        });
    }
    let config = varz.jetstream.and_then(|js| js.config);
    Ok(ServerReport {
        endpoint: endpoint.to_owned(),
        name: varz.server_name,
        version: varz.version,
        jetstream: config.is_some(),
        file_storage: config
            .as_ref()
            .is_some_and(|c| c.max_storage != 0 && !c.store_dir.is_empty()),
        sync_always: config.as_ref().is_some_and(|c| c.sync_always),
    })
}

/// Whether a nats-server version is at least [`MIN_SERVER`]. A pre-release (`2.14.0-RC.1`)
/// comes before its release, and text that is not a version does not meet it.
pub fn version_meets_floor(version: &str) -> bool {
    let version = version.trim_start_matches('v');
    let (numbers, pre) = match version.split_once('-') {
        Some((numbers, pre)) => (numbers, Some(pre)),
        None => (version, None),
    };
    let parts: Vec<Option<u32>> = numbers.split('.').map(|n| n.parse().ok()).collect();
    let [Some(major), Some(minor), Some(patch)] = parts[..] else {
        return false;
    };
    let found = (major, minor, patch);
    found > MIN_SERVER || (found == MIN_SERVER && pre.is_none())
}

/// Reads `/varz` from every monitoring endpoint of `config`, and refuses at the first server
/// that does not meet gancho's needs. Returns every server's report.
pub async fn check_servers(config: &ClusterConfig) -> Result<Vec<ServerReport>, ClusterError> {
    // reqwest is built without a compiled-in crypto provider (the workspace uses ring for
    // every TLS client); the binary installs it at start, and this makes the crate usable alone.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|err| ClusterError::Monitor {
            endpoint: String::new(),
            reason: format!("cannot build an HTTP client: {err}"),
        })?;
    let mut reports = Vec::with_capacity(config.monitor.len());
    let mut cluster_size = 1;
    for endpoint in &config.monitor {
        let report = read_varz(&http, endpoint).await?;
        if let Some(refusal) = report.refusal() {
            return Err(refusal);
        }
        reports.push(report);
        cluster_size = cluster_size.max(read_cluster_size(&http, endpoint).await?);
    }
    // Every server of the JetStream cluster may hold replicas: one that was not checked could
    // be old or acknowledge before syncing.
    let mut checked: Vec<&str> = reports.iter().map(|r| r.name.as_str()).collect();
    checked.sort_unstable();
    checked.dedup();
    if cluster_size > checked.len() {
        return Err(ClusterError::UncheckedServers {
            checked: checked.len(),
            cluster_size,
        });
    }
    Ok(reports)
}

/// The JetStream cluster's size as a server's `/jsz` gives it (1 for a server not clustered).
async fn read_cluster_size(
    http: &reqwest::Client,
    endpoint: &url::Url,
) -> Result<usize, ClusterError> {
    Ok(parse_cluster_size(
        &monitor_get(http, endpoint, "jsz").await?,
    ))
}

/// `meta_cluster.cluster_size` of a `/jsz` document; 1 when absent (not clustered).
pub fn parse_cluster_size(jsz: &str) -> usize {
    serde_json::from_str::<serde_json::Value>(jsz)
        .ok()
        .and_then(|v| v["meta_cluster"]["cluster_size"].as_u64())
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(1)
        .max(1)
}

async fn read_varz(
    http: &reqwest::Client,
    endpoint: &url::Url,
) -> Result<ServerReport, ClusterError> {
    let body = monitor_get(http, endpoint, "varz").await?;
    parse_varz(endpoint.as_str().trim_end_matches('/'), &body)
}

/// The body of a monitoring endpoint's page `path`, or why it could not be read.
async fn monitor_get(
    http: &reqwest::Client,
    endpoint: &url::Url,
    path: &str,
) -> Result<String, ClusterError> {
    let monitor_error = |reason: String| ClusterError::Monitor {
        endpoint: endpoint.as_str().trim_end_matches('/').to_owned(),
        reason,
    };
    let url = endpoint
        .join(path)
        .map_err(|err| monitor_error(err.to_string()))?;
    let response = http
        .get(url)
        .send()
        .await
        .map_err(|err| monitor_error(error_chain(&err)))?;
    if !response.status().is_success() {
        return Err(monitor_error(format!(
            "/{path} answered {}",
            response.status()
        )));
    }
    response
        .text()
        .await
        .map_err(|err| monitor_error(error_chain(&err)))
}

/// Connects to NATS as `config` says, with the token read already (`token`), and checks the
/// server it reached and that the account has JetStream.
pub async fn connect(
    config: &ClusterConfig,
    token: Option<&str>,
) -> Result<async_nats::Client, ClusterError> {
    let urls: Vec<async_nats::ServerAddr> = config
        .nats
        .iter()
        .map(|url| async_nats::ServerAddr::from_url(url.clone()))
        .collect::<Result<_, _>>()
        .map_err(|err| ClusterError::Connect {
            servers: shown_urls(config),
            reason: err.to_string(),
        })?;
    let mut options = match &config.auth {
        NatsAuth::Creds(path) => async_nats::ConnectOptions::with_credentials_file(path.clone())
            .await
            .map_err(|err| ClusterError::Connect {
                servers: shown_urls(config),
                reason: format!("cannot read creds_file {}: {err}", path.display()),
            })?,
        NatsAuth::Token(_) | NatsAuth::None => async_nats::ConnectOptions::new(),
    };
    if let Some(token) = token {
        options = options.token(token.to_owned());
    }
    let client = options
        .name(format!("gancho {}", config.node))
        .connection_timeout(TIMEOUT)
        .connect(urls)
        .await
        .map_err(|err| ClusterError::Connect {
            servers: shown_urls(config),
            reason: err.to_string(),
        })?;
    let info = client.server_info();
    if !version_meets_floor(&info.version) {
        return Err(ClusterError::TooOld {
            server: format!("{} (connected)", info.server_name),
            version: info.version,
        });
    }
    if !info.jetstream {
        return Err(ClusterError::NoJetStream {
            server: format!("{} (connected)", info.server_name),
        });
    }
    let jetstream = async_nats::jetstream::new(client.clone());
    tokio::time::timeout(TIMEOUT, jetstream.query_account())
        .await
        .map_err(|_| ClusterError::NoJetStreamAccount {
            reason: "no answer from the JetStream API".to_owned(),
        })?
        .map_err(|err| ClusterError::NoJetStreamAccount {
            reason: err.to_string(),
        })?;
    Ok(client)
}

fn shown_urls(config: &ClusterConfig) -> String {
    config
        .nats
        .iter()
        .map(|u| u.as_str().trim_end_matches('/'))
        .collect::<Vec<_>>()
        .join(", ")
}

/// An error with its causes, one line.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SYNC: &str = include_str!("../tests/fixtures/varz-2.15.1-sync-always.json");
    const NO_SYNC: &str = include_str!("../tests/fixtures/varz-2.15.1-no-sync.json");

    #[test]
    fn the_cluster_size_from_jsz() {
        assert_eq!(
            parse_cluster_size(r#"{"meta_cluster":{"leader":"c3","cluster_size":3}}"#),
            3
        );
        assert_eq!(parse_cluster_size(r#"{"config":{}}"#), 1);
        assert_eq!(parse_cluster_size("not json"), 1);
    }

    #[test]
    fn versions_against_the_floor() {
        for ok in [
            "2.14.0",
            "2.14.6",
            "2.15.1",
            "v2.15.1",
            "3.0.0",
            "2.20.0-beta.1",
        ] {
            assert!(version_meets_floor(ok), "{ok}");
        }
        for old in [
            "2.13.9",
            "2.12.8",
            "2.10.25",
            "2.9.10",
            "2.14.0-RC.1",
            "1.99.99",
            "",
            "2.14",
            "x.y.z",
        ] {
            assert!(!version_meets_floor(old), "{old}");
        }
    }

    #[test]
    fn a_real_varz_with_and_without_sync_always() {
        let report = parse_varz("http://127.0.0.1:18222", SYNC).unwrap();
        assert_eq!(report.version, "2.15.1");
        assert!(report.jetstream && report.file_storage && report.sync_always);
        assert!(report.refusal().is_none());

        let report = parse_varz("http://127.0.0.1:18223", NO_SYNC).unwrap();
        assert!(report.jetstream && !report.sync_always);
        let refusal = report.refusal().unwrap().to_string();
        assert!(refusal.contains("sync_interval: always"), "{refusal}");
        assert!(refusal.contains("http://127.0.0.1:18223"), "{refusal}");
    }

    #[test]
    fn a_server_without_jetstream_or_too_old_is_refused() {
        let report = parse_varz(
            "m",
            r#"{"server_name":"x","version":"2.15.1","jetstream":{}}"#,
        )
        .unwrap();
        assert!(report.refusal().unwrap().to_string().contains("JetStream"));
        let report = parse_varz(
            "m",
            r#"{"server_name":"x","version":"2.12.8","jetstream":{"config":{"max_storage":1,"store_dir":"/s","sync_always":true}}}"#,
        )
        .unwrap();
        let refusal = report.refusal().unwrap().to_string();
        assert!(
            refusal.contains("2.12.8") && refusal.contains("2.14.0"),
            "{refusal}"
        );
        assert!(parse_varz("m", "<html>").is_err());
        assert!(parse_varz("m", "{}").is_err());
    }
}
