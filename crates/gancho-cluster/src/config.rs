//! The `[cluster]` section: which NATS servers, this node's name, the partition count, the
//! lease, and how to authenticate. Its absence is single-node mode.

use std::path::PathBuf;
use std::time::Duration;

use gancho_core::config::duration;
use gancho_core::{KeyError, Secret, SecretString};
use serde::Deserialize;

/// The partition count when the config does not give one.
pub const DEFAULT_PARTITIONS: u16 = 16;
/// The most partitions a cluster may have: each is two streams replicated three times, and a
/// JetStream cluster's meta layer is not made for tens of thousands of assets.
pub const MAX_PARTITIONS: u16 = 1024;
// The global lane's number is outside every partition count.
const _: () = assert!(MAX_PARTITIONS < gancho_core::partition::GLOBAL);
/// The lease when the config does not give one.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);
/// The monitoring port a nats-server listens on by default (`http_port: 8222`).
pub const DEFAULT_MONITOR_PORT: u16 = 8222;

/// `[cluster]` as written in the config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// The NATS servers to connect to, at least one (the client learns the others from them).
    /// Example: `["nats://10.0.0.1:4222", "nats://10.0.0.2:4222", "nats://10.0.0.3:4222"]`.
    pub nats: Vec<String>,
    /// This node's name, unique in the cluster: letters, digits, `-` and `_`, at most 64.
    /// Example: `"gancho-1"`.
    pub node: String,
    /// How many partitions the events are spread over. Fixed when the cluster is first created;
    /// a node with another count is refused. Default: 16. Example: 32.
    #[serde(default = "default_partitions")]
    pub partitions: u16,
    /// How long a node's lease on its partitions lasts without renewal; a node that stops
    /// renewing loses them after this. Default: `"10s"`. Example: `"5s"`.
    #[serde(default = "default_lease", deserialize_with = "duration::deserialize")]
    pub lease: Duration,
    /// A NATS credentials file (user JWT and nkey seed). Example: `"/etc/gancho/nats.creds"`.
    pub creds_file: Option<PathBuf>,
    /// A NATS token; or `token_env` (an environment variable) or `token_file` (a file).
    pub token: Option<SecretString>,
    pub token_env: Option<String>,
    pub token_file: Option<PathBuf>,
    /// The servers' monitoring endpoints, where gancho reads each server's version and
    /// JetStream settings at start (`/varz`). Default: port 8222 on each host of `nats`.
    /// Example: `["http://10.0.0.1:8222"]`.
    pub monitor: Option<Vec<String>>,
}

fn default_partitions() -> u16 {
    DEFAULT_PARTITIONS
}

fn default_lease() -> Duration {
    DEFAULT_LEASE
}

/// How the node authenticates to NATS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatsAuth {
    None,
    /// A credentials file, read when connecting.
    Creds(PathBuf),
    /// A token; the binary reads it from its variable or file before connecting.
    Token(Secret),
}

/// The validated `[cluster]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub nats: Vec<url::Url>,
    pub node: String,
    pub partitions: u16,
    pub lease: Duration,
    pub auth: NatsAuth,
    /// The monitoring endpoints, given or derived from `nats`.
    pub monitor: Vec<url::Url>,
}

impl<'de> Deserialize<'de> for ClusterConfig {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> Result<ClusterConfig, D::Error> {
        let section = ClusterSection::deserialize(deserializer)?;
        ClusterConfig::try_from(section).map_err(serde::de::Error::custom)
    }
}

impl TryFrom<ClusterSection> for ClusterConfig {
    type Error = KeyError;

    fn try_from(section: ClusterSection) -> Result<ClusterConfig, KeyError> {
        if section.nats.is_empty() {
            return Err(KeyError::new("nats", "name at least one NATS server"));
        }
        let nats = section
            .nats
            .iter()
            .map(|text| nats_url(text))
            .collect::<Result<Vec<_>, _>>()?;
        check_node(&section.node)?;
        if section.partitions == 0 || section.partitions > MAX_PARTITIONS {
            return Err(KeyError::new(
                "partitions",
                format!("must be from 1 to {MAX_PARTITIONS}"),
            ));
        }
        if section.lease < Duration::from_secs(1) || section.lease > Duration::from_secs(600) {
            return Err(KeyError::new("lease", "must be from 1s to 10m"));
        }
        let token = Secret::from_keys(
            "token",
            section.token,
            section.token_env,
            section.token_file,
        )?;
        let auth = match (section.creds_file, token) {
            (None, None) => NatsAuth::None,
            (Some(path), None) => NatsAuth::Creds(path),
            (None, Some(token)) => NatsAuth::Token(token),
            (Some(_), Some(_)) => {
                return Err(KeyError::new(
                    "creds_file",
                    "give either creds_file or a token, not both",
                ));
            }
        };
        let monitor = match section.monitor {
            Some(list) if list.is_empty() => {
                return Err(KeyError::new(
                    "monitor",
                    "name at least one monitoring endpoint, or leave the key out",
                ));
            }
            Some(list) => list
                .iter()
                .map(|text| monitor_url(text))
                .collect::<Result<Vec<_>, _>>()?,
            None => derived_monitors(&nats),
        };
        Ok(ClusterConfig {
            nats,
            node: section.node,
            partitions: section.partitions,
            lease: section.lease,
            auth,
            monitor,
        })
    }
}

fn nats_url(text: &str) -> Result<url::Url, KeyError> {
    let url = url::Url::parse(text)
        .map_err(|err| KeyError::new("nats", format!("{text:?} is not a URL: {err}")))?;
    if !matches!(url.scheme(), "nats" | "tls") || url.host_str().is_none() {
        return Err(KeyError::new(
            "nats",
            format!("{text:?}: expected nats://HOST:PORT or tls://HOST:PORT"),
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(KeyError::new(
            "nats",
            format!(
                "{}: give credentials as creds_file or token, not in the URL",
                url.host_str().unwrap_or_default()
            ),
        ));
    }
    Ok(url)
}

fn monitor_url(text: &str) -> Result<url::Url, KeyError> {
    let url = url::Url::parse(text)
        .map_err(|err| KeyError::new("monitor", format!("{text:?} is not a URL: {err}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(KeyError::new(
            "monitor",
            format!("{text:?}: expected http://HOST:PORT or https://HOST:PORT"),
        ));
    }
    Ok(url)
}

/// Port 8222 on each distinct host of the NATS URLs.
fn derived_monitors(nats: &[url::Url]) -> Vec<url::Url> {
    let mut out: Vec<url::Url> = Vec::new();
    for server in nats {
        let Some(host) = server.host() else { continue };
        let text = format!("http://{host}:{DEFAULT_MONITOR_PORT}/");
        if let Ok(url) = url::Url::parse(&text)
            && !out.contains(&url)
        {
            out.push(url);
        }
    }
    out
}

/// A node's name goes into KV keys and subjects: letters, digits, `-` and `_` only.
fn check_node(node: &str) -> Result<(), KeyError> {
    let ok = !node.is_empty()
        && node.len() <= 64
        && node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(KeyError::new(
            "node",
            "1 to 64 letters, digits, '-' or '_' (it names this node in NATS keys and subjects)",
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ClusterConfig, String> {
        toml::from_str::<ClusterConfig>(text).map_err(|err| err.to_string())
    }

    #[test]
    fn the_defaults_and_every_key() {
        let config =
            parse("nats = [\"nats://10.0.0.1:4222\", \"nats://10.0.0.2:4222\"]\nnode = \"a-1\"\n")
                .unwrap();
        assert_eq!(config.partitions, 16);
        assert_eq!(config.lease, Duration::from_secs(10));
        assert_eq!(config.auth, NatsAuth::None);
        let monitors: Vec<String> = config.monitor.iter().map(|u| u.to_string()).collect();
        assert_eq!(monitors, ["http://10.0.0.1:8222/", "http://10.0.0.2:8222/"]);

        let config = parse(
            "nats = [\"tls://nats.example:4222\"]\nnode = \"b_2\"\npartitions = 32\nlease = \"5s\"\n\
             token_env = \"NATS_TOKEN\"\nmonitor = [\"https://nats.example:8222\"]\n",
        )
        .unwrap();
        assert_eq!(config.partitions, 32);
        assert_eq!(config.lease, Duration::from_secs(5));
        assert_eq!(
            config.auth,
            NatsAuth::Token(Secret::Env("NATS_TOKEN".into()))
        );
        assert_eq!(config.monitor[0].as_str(), "https://nats.example:8222/");

        let config =
            parse("nats = [\"nats://h:4222\"]\nnode = \"c\"\ncreds_file = \"/etc/n.creds\"\n")
                .unwrap();
        assert_eq!(config.auth, NatsAuth::Creds("/etc/n.creds".into()));
    }

    #[test]
    fn mistakes_name_their_key() {
        let cases = [
            ("nats = []\nnode = \"a\"\n", "`nats`"),
            ("nats = [\"http://h:4222\"]\nnode = \"a\"\n", "`nats`"),
            (
                "nats = [\"nats://u:p@h:4222\"]\nnode = \"a\"\n",
                "not in the URL",
            ),
            ("nats = [\"nats://h:4222\"]\nnode = \"a b\"\n", "`node`"),
            ("nats = [\"nats://h:4222\"]\nnode = \"\"\n", "`node`"),
            (
                "nats = [\"nats://h:4222\"]\nnode = \"a\"\npartitions = 0\n",
                "`partitions`",
            ),
            (
                "nats = [\"nats://h:4222\"]\nnode = \"a\"\npartitions = 5000\n",
                "`partitions`",
            ),
            (
                "nats = [\"nats://h:4222\"]\nnode = \"a\"\nlease = \"10ms\"\n",
                "`lease`",
            ),
            (
                "nats = [\"nats://h:4222\"]\nnode = \"a\"\nlease = \"ten\"\n",
                "lease",
            ),
            (
                "nats = [\"nats://h:4222\"]\nnode = \"a\"\ntoken = \"t\"\ntoken_env = \"T\"\n",
                "`token`",
            ),
            (
                "nats = [\"nats://h:4222\"]\nnode = \"a\"\ntoken = \"t\"\ncreds_file = \"/c\"\n",
                "`creds_file`",
            ),
            (
                "nats = [\"nats://h:4222\"]\nnode = \"a\"\nmonitor = []\n",
                "`monitor`",
            ),
            (
                "nats = [\"nats://h:4222\"]\nnode = \"a\"\nmonitor = [\"nats://h\"]\n",
                "`monitor`",
            ),
            ("nats = [\"nats://h:4222\"]\n", "node"),
            (
                "nats = [\"nats://h:4222\"]\nnode = \"a\"\nleases = \"5s\"\n",
                "leases",
            ),
        ];
        for (text, expected) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }

    #[test]
    fn a_token_is_not_shown_in_debug() {
        let config =
            parse("nats = [\"nats://h:4222\"]\nnode = \"a\"\ntoken = \"hunter2-token\"\n").unwrap();
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
