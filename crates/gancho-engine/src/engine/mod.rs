//! The engine: walks the log from its cursor, runs the rules each event wakes, and commits
//! their decisions with the cursor; appends timer firings and cron ticks to the log.
//!
//! `config` (how it runs, its errors, the names of its own sources), `status` (what operators
//! see of it), `load` (the rules folder), `reload` (loading it into a running engine), `walk` (the [`Engine`]: batches, dispatch, rule runs), `operator` (operators' requests, re-runs,
//! rule controls and counters),
//! `timers` (timer firings, cron ticks, and the expectations events fulfil), `careful` (poison
//! events: runs that kill the engine are set aside).

mod careful;
mod config;
mod load;
mod operator;
mod reload;
mod status;
mod timers;
mod walk;

pub use config::{
    CRON_SOURCE, EngineConfig, EngineError, EngineSection, Lane, Placement, SourcePlacement,
    TIMER_SOURCE,
};
pub use load::{CheckResult, check_dir, check_file, lint_file, rule_callbacks, stopped_status};
pub use status::{EngineStatus, ReloadReport, RuleStatus, SharedStatus, StepReport};
pub use walk::Engine;
