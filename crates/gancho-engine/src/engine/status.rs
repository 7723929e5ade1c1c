//! The engine as operators see it, and what a step or a reload did.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::rule::Diagnostic;

/// A rule as operators see it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleStatus {
    pub name: String,
    pub file: PathBuf,
    /// A version of the rule is running.
    pub loaded: bool,
    /// The file on disk does not compile (the previous version, if any, keeps running).
    pub error: Option<Diagnostic>,
    pub on: Vec<String>,
    pub every: Option<String>,
    pub runs: u64,
    pub errors: u64,
    pub last_error: Option<String>,
    pub actions: u64,
}

/// The engine as operators see it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineStatus {
    /// The last log seq processed.
    pub cursor: u64,
    pub rules: Vec<RuleStatus>,
}

/// What one [`Engine::step`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepReport {
    pub processed: usize,
    /// Timer firings and cron ticks appended to the log.
    pub appended: usize,
}

/// What [`Engine::reload`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    pub loaded: Vec<String>,
    pub removed: Vec<String>,
    pub failed: Vec<Diagnostic>,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) runs: u64,
    pub(crate) errors: u64,
    pub(crate) last_error: Option<String>,
    pub(crate) actions: u64,
    pub(crate) logged_at: Option<Instant>,
}

/// The engine's status, shared with the thread that answers operators.
pub type SharedStatus = Arc<Mutex<EngineStatus>>;
