//! What the engine's database keeps of each rule beside its decisions, written outside
//! commits (statistics and an operator's switch, not decisions):
//!
//! | key        | value                                                        |
//! |------------|--------------------------------------------------------------|
//! | `U` rule   | [`RuleControl`], JSON: disabled by an operator, paused by the engine |
//! | `V` rule   | [`RuleCounters`], JSON: runs, errors, actions, time, last error |
//!
//! A rule's control survives restarts (`gancho rules disable`), and so do its counters, so
//! `gancho rules` shows them with the daemon stopped too.

use std::collections::BTreeMap;

use gancho_store::StoreError;
use serde::{Deserialize, Serialize};

use crate::EngineState;
use crate::schema::{corrupt, to_json};

const CONTROL: u8 = b'U';
const COUNTERS: u8 = b'V';

/// Whether a rule runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleControl {
    /// Disabled by an operator (`gancho rules disable`).
    #[serde(default)]
    pub disabled: bool,
    /// Paused by the engine, with why (it failed too often); `enable` resumes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<String>,
}

impl RuleControl {
    /// Whether events wake it.
    pub fn runs(&self) -> bool {
        !self.disabled && self.paused.is_none()
    }
}

/// A rule's counters, across restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleCounters {
    pub runs: u64,
    pub errors: u64,
    pub actions: u64,
    /// Time spent in its runs, µs.
    #[serde(default)]
    pub time_us: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

fn key(prefix: u8, rule: &str) -> Vec<u8> {
    let mut key = vec![prefix];
    key.extend_from_slice(rule.as_bytes());
    key
}

fn read_all<T: serde::de::DeserializeOwned>(
    state: &EngineState,
    prefix: u8,
    what: &str,
) -> Result<BTreeMap<String, T>, StoreError> {
    let mut out = BTreeMap::new();
    for entry in state.tree.scan_prefix([prefix]) {
        let (k, v) = entry?;
        let name = String::from_utf8_lossy(&k[1..]).into_owned();
        match serde_json::from_slice(&v) {
            Ok(value) => {
                out.insert(name, value);
            }
            // One unreadable record does not hide the others.
            Err(err) => tracing::warn!(rule = %name, error = %err, "an unreadable {what}"),
        }
    }
    Ok(out)
}

impl EngineState {
    /// Every rule's control that is not the default.
    pub fn rule_controls(&self) -> Result<BTreeMap<String, RuleControl>, StoreError> {
        read_all(self, CONTROL, "rule control")
    }

    /// Sets a rule's control (the default removes it), durably against a crash of the process.
    pub fn set_rule_control(&self, rule: &str, control: &RuleControl) -> Result<(), StoreError> {
        match *control == RuleControl::default() {
            true => drop(self.tree.remove(key(CONTROL, rule))?),
            false => self.tree.insert(key(CONTROL, rule), to_json(control)?)?,
        }
        self.db.flush()
    }

    /// Every rule's stored counters.
    pub fn rule_counters(&self) -> Result<BTreeMap<String, RuleCounters>, StoreError> {
        read_all(self, COUNTERS, "rule's counters")
    }

    /// Stores a rule's counters (sled's own flush makes them durable shortly after; a crash
    /// loses at most the last moments of statistics).
    pub fn save_rule_counters(
        &self,
        rule: &str,
        counters: &RuleCounters,
    ) -> Result<(), StoreError> {
        if rule.is_empty() {
            return Err(corrupt("rule counters", "a rule without a name"));
        }
        self.tree.insert(key(COUNTERS, rule), to_json(counters)?)
    }
}
