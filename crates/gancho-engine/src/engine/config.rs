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
}

impl EngineConfig {
    pub fn new(rules_dir: impl Into<PathBuf>) -> EngineConfig {
        EngineConfig {
            rules_dir: rules_dir.into(),
            limits: Limits::default(),
            batch_size: 4096,
            source_keys: None,
            retention_ms: None,
        }
    }
}
