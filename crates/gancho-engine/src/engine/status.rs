//! The engine as operators see it, and what a step or a reload did.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use gancho_state::rules::RuleCounters;

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
    /// Time spent in its runs, ms.
    #[serde(default)]
    pub time_ms: u64,
    /// Disabled by an operator: events do not wake it.
    #[serde(default)]
    pub disabled: bool,
    /// Paused by the engine, with why: it failed too often. `gancho rules enable` resumes it.
    #[serde(default)]
    pub paused: Option<String>,
}

/// The engine as operators see it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineStatus {
    /// The last log seq processed.
    pub cursor: u64,
    pub rules: Vec<RuleStatus>,
    /// Read from the store with the daemon stopped: `loaded` says a rule compiles, and the
    /// counters are those stored.
    #[serde(default)]
    pub stopped: bool,
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

/// A rule's counters (kept in the engine's database across restarts) and its recent outcomes.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) stored: RuleCounters,
    /// Changed since they were last stored.
    pub(crate) dirty: bool,
    pub(crate) logged_at: Option<Instant>,
    /// Failed runs in a row.
    pub(crate) failing: u64,
    /// The outcomes of the last [`RECENT_RUNS`] runs (true: it failed), oldest first.
    recent: std::collections::VecDeque<bool>,
    recent_failures: usize,
    /// Its Prometheus series, registered at its first run.
    metrics: Option<RuleMetrics>,
}

/// A rule's series: `gancho_rule_runs_total`, `gancho_rule_errors_total`,
/// `gancho_rule_seconds` (no-ops unless the daemon installed a metrics recorder).
struct RuleMetrics {
    runs: metrics::Counter,
    errors: metrics::Counter,
    seconds: metrics::Histogram,
}

impl std::fmt::Debug for RuleMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RuleMetrics")
    }
}

impl RuleMetrics {
    fn new(rule: &str) -> RuleMetrics {
        let label = [("rule", rule.to_owned())];
        RuleMetrics {
            runs: metrics::counter!("gancho_rule_runs_total", &label),
            errors: metrics::counter!("gancho_rule_errors_total", &label),
            seconds: metrics::histogram!("gancho_rule_seconds", &label),
        }
    }
}

/// A rule that fails this many runs in a row is paused ...
pub(crate) const PAUSE_AFTER_FAILURES: u64 = 100;
/// ... or more than half of its last this many runs.
pub(crate) const RECENT_RUNS: usize = 1000;

impl Counters {
    pub(crate) fn from_stored(stored: RuleCounters) -> Counters {
        Counters {
            stored,
            ..Counters::default()
        }
    }

    /// Records a run's outcome and time; returns why the rule should be paused, if it should.
    pub(crate) fn record(
        &mut self,
        rule: &str,
        failed: bool,
        took: std::time::Duration,
    ) -> Option<String> {
        let series = self.metrics.get_or_insert_with(|| RuleMetrics::new(rule));
        series.runs.increment(1);
        if failed {
            series.errors.increment(1);
        }
        series.seconds.record(took.as_secs_f64());
        self.dirty = true;
        self.stored.runs += 1;
        self.stored.time_us = self
            .stored
            .time_us
            .saturating_add(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
        if failed {
            self.stored.errors += 1;
            self.failing += 1;
        } else {
            self.failing = 0;
        }
        self.recent.push_back(failed);
        self.recent_failures += usize::from(failed);
        if self.recent.len() > RECENT_RUNS && self.recent.pop_front() == Some(true) {
            self.recent_failures -= 1;
        }
        if self.failing >= PAUSE_AFTER_FAILURES {
            return Some(format!("it failed {} runs in a row", self.failing));
        }
        if self.recent.len() >= RECENT_RUNS && self.recent_failures * 2 > RECENT_RUNS {
            return Some(format!(
                "it failed {} of its last {RECENT_RUNS} runs",
                self.recent_failures
            ));
        }
        None
    }

    /// Forgets the run of failures (an operator resumed the rule).
    pub(crate) fn resume(&mut self) {
        self.failing = 0;
        self.recent.clear();
        self.recent_failures = 0;
    }
}

/// The engine's status, shared with the thread that answers operators.
pub type SharedStatus = Arc<Mutex<EngineStatus>>;
