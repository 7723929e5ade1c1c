//! The rule engine of gancho: loads the `.rhai` rules of a folder (and reloads them when they
//! change), walks the event log in order from a durable cursor, runs the rules each event wakes
//! in a sandbox, and commits their decisions (state, timers, expectations, action requests)
//! together with the cursor, so that after a crash an event is processed again from the same
//! history and no decision is made twice. Timer firings and cron ticks are appended to the log
//! as events, so they take the same path.
//!
//! Only this crate knows rhai. It must not deliver anything: actions go to the outbox, which
//! another crate executes; it knows no HTTP server, no SMTP, and never reads the wall clock
//! except through the injected [`gancho_core::Clock`]. Scripts see event time only.

mod api;
mod cluster_check;
mod ctx;
mod diagnostic;
mod dynamic;
mod engine;
mod prefetch;
mod rule;
mod rule_text;
mod sandbox;
mod schedule;
mod strict;
mod thread;

pub use api::{FUNCTIONS, MAX_LIST};
pub use engine::{
    CRON_SOURCE, CheckResult, Engine, EngineConfig, EngineError, EngineSection, EngineStatus, Lane,
    Placement, ReloadReport, RuleStatus, SharedStatus, SourcePlacement, StepReport, TIMER_SOURCE,
    check_dir, check_file, lint_file, rule_callbacks, stopped_status,
};
pub use rule::{Diagnostic, SourceFacts};
pub use sandbox::Limits;

/// Every function a rule may call without defining it (rhai's, its keywords', gancho's): what
/// `gancho check` holds calls to.
pub fn known_functions() -> std::collections::BTreeSet<String> {
    strict::known_functions(&sandbox::sandbox(&Limits::default()))
        .into_iter()
        .collect()
}
pub use thread::{ENGINE_STACK, EngineHandle, spawn};
