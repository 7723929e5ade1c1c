//! How the engine runs, what goes wrong outside any one rule, and the names of the sources
//! of its own events.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use gancho_store::StoreError;

use crate::sandbox::Limits;

/// The source name of timer firings (`timer.NAME`) and cron ticks (`cron.RULE`).
pub const TIMER_SOURCE: &str = "timer";
pub const CRON_SOURCE: &str = "cron";

/// What went wrong outside any one rule.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Cluster mode: the engine's own events could not be published to its partition's stream.
    #[error(transparent)]
    Publish(#[from] gancho_core::publish::PublishError),
    /// The cause is in the message, not a `source`: printed as a chain it said it twice.
    #[error("reading the rules folder {path}: {cause}")]
    RulesDir {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// [`Engine::run_until_idle`](crate::Engine::run_until_idle) gave up: work was left.
    #[error("not idle after {waited:?}: the engine is at event {cursor}, the log at {durable}")]
    NotIdle {
        waited: std::time::Duration,
        cursor: u64,
        durable: u64,
    },
}

/// How the engine runs.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub rules_dir: PathBuf,
    pub limits: Limits,
    /// Events processed and committed together, at most.
    pub batch_size: usize,
    /// Each source's correlation keys, when known (from the daemon's config).
    pub source_keys: Option<BTreeMap<String, BTreeSet<String>>>,
    /// How long the store keeps events (`[store] retention`), when it deletes any: a window
    /// longer than it is logged, once per rule.
    pub retention_ms: Option<i64>,
    /// A timer or expectation already due when it is set fires no earlier than this after its
    /// event was received (`[engine] late_grace`).
    pub late_grace_ms: i64,
    /// How long traces are kept (`[engine] trace_retention`; `None`: for ever): a re-run's
    /// mark outlives the trace of the run it re-ran.
    pub trace_retention_ms: Option<i64>,
    /// Cluster mode: where timer firings and cron ticks go (the partition's stream, whence
    /// they come back into the log); `None`: appended to the log directly.
    pub own_events: Option<std::sync::Arc<dyn gancho_core::publish::BlockingPublisher>>,
    /// Cluster mode: the log is filled from the partition's stream, which loses nothing, and
    /// may be behind the state's cursor (a new owner's log catching up): the engine waits for
    /// it. Otherwise a cursor past the log's end means the log lost its newest events (fsync
    /// off, a power loss), and the engine resumes at the log's end.
    pub log_from_stream: bool,
    /// Whether rules of the global scope (`const SCOPE = "global";`, `EVERY`) run here: on a
    /// single node, yes. A partition's engine in cluster mode does not run them (they need the
    /// global lane, still to come): each is reported as not running, with why.
    pub runs_global_rules: bool,
}

/// The `[engine]` section of the config file.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineSection {
    /// A timer or expectation that is already due when it is set (its event is older than
    /// its window: webhooks delivered in a burst after an outage) fires no earlier than this
    /// after its event was received, so that the events queued behind it can still cancel it.
    /// Default: `"2m"`. Example: `"10m"`.
    #[serde(deserialize_with = "gancho_core::config::duration::deserialize")]
    pub late_grace: std::time::Duration,
    /// How long the traces of rule runs (`gancho explain`) are kept; `"0"` keeps them for
    /// ever. Default: `"7d"`. Example: `"30d"`.
    #[serde(deserialize_with = "gancho_core::config::duration::retention::deserialize")]
    pub trace_retention: Option<std::time::Duration>,
}

impl Default for EngineSection {
    fn default() -> EngineSection {
        EngineSection {
            late_grace: std::time::Duration::from_secs(120),
            trace_retention: Some(std::time::Duration::from_secs(7 * 24 * 3600)),
        }
    }
}

impl EngineConfig {
    pub fn new(rules_dir: impl Into<PathBuf>) -> EngineConfig {
        EngineConfig {
            rules_dir: rules_dir.into(),
            limits: Limits::default(),
            batch_size: 4096,
            source_keys: None,
            retention_ms: None,
            late_grace_ms: 120_000,
            trace_retention_ms: Some(7 * 24 * 3_600_000),
            own_events: None,
            log_from_stream: false,
            runs_global_rules: true,
        }
    }
}
