//! What host functions see while a rule runs: the store, the rule and event being processed,
//! and the changes decided so far (this run's, then this batch's), which reads must see before
//! the store's committed state.

use std::collections::{BTreeMap, BTreeSet};

use foldhash::HashMap;

use gancho_core::ActionRequest;
use gancho_state::{Change, EngineState, ExpectShape, StateValue, Timer};
use gancho_store::{Store, StoreError};

/// Changes decided but not committed: a rule run's, merged into its batch's when the run
/// succeeds (a run that fails leaves nothing behind).
/// Keyed by (rule, key or timer name) with a fast hasher: looked up several times per event.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    pub(crate) changes: Vec<Change>,
    pub(crate) state: HashMap<(String, String), Option<StateValue>>,
    pub(crate) timers: HashMap<(String, String), Option<Timer>>,
    pub(crate) actions: usize,
}

impl Pending {
    pub(crate) fn merge(&mut self, run: Pending) {
        self.changes.extend(run.changes);
        self.state.extend(run.state);
        self.timers.extend(run.timers);
        self.actions += run.actions;
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

/// The rule run in progress.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) rule: String,
    pub(crate) seq: u64,
    pub(crate) time_ms: i64,
    /// When its event was received, ms.
    pub(crate) received_ms: i64,
    /// The engine's clock when the run began, ms (when its actions are decided).
    pub(crate) now_ms: i64,
    /// The next action's position (actions are numbered per rule and event).
    pub(crate) position: u32,
    /// A counter for timer uids and codes made in this run.
    pub(crate) serial: u32,
    pub(crate) queries: u32,
    pub(crate) callbacks: std::rc::Rc<std::collections::HashSet<String>>,
    /// The rule's top-level constants with literal values, which its functions see too.
    pub(crate) constants: std::rc::Rc<Vec<(String, rhai::Dynamic)>>,
    pub(crate) pending: Pending,
    /// The window queries it made, with their answers (its trace).
    pub(crate) traced: Vec<gancho_state::traces::QueryTrace>,
    /// When the run began (for `Limits::max_run_time`).
    pub(crate) started: std::time::Instant,
}

/// Shared between the engine and the host functions (through `Rc<RefCell<_>>`).
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) store: Store,
    /// The engine's committed state: rule state, timers, expectations.
    pub(crate) state: EngineState,
    /// The correlation keys each source has, where known: a query by any other key is an
    /// error rather than a window that is always empty.
    pub(crate) source_keys: Option<BTreeMap<String, BTreeSet<String>>>,
    /// Cluster mode, a partition's engine: queries must stay in the partition.
    pub(crate) placement: Option<crate::Placement>,
    pub(crate) max_queries: u32,
    /// The store's retention, and the rules already told that a window of theirs is longer.
    pub(crate) retention_ms: Option<i64>,
    pub(crate) told_retention: std::collections::HashSet<String>,
    /// `EngineConfig::late_grace_ms`.
    pub(crate) late_grace_ms: i64,
    pub(crate) run: Option<Run>,
    pub(crate) batch: Pending,
    /// Expectation shapes set by this batch's runs (new or not).
    pub(crate) new_shapes: Vec<ExpectShape>,
}

impl Ctx {
    pub(crate) fn run(&mut self) -> Result<&mut Run, String> {
        self.run
            .as_mut()
            .ok_or_else(|| "this function can only be called while a rule runs".to_owned())
    }

    pub(crate) fn state(&mut self, key: &str) -> Result<Option<StateValue>, String> {
        let state = self.state.clone();
        let run = self.run()?;
        let id = (run.rule.clone(), key.to_owned());
        let now = run.time_ms;
        let found = match run.pending.state.get(&id) {
            Some(v) => v.clone(),
            None => match self.batch.state.get(&id) {
                Some(v) => v.clone(),
                None => state.state(&id.0, &id.1).map_err(|e| e.to_string())?,
            },
        };
        Ok(found.filter(|v| v.expires_ms.is_none_or(|at| now < at)))
    }

    pub(crate) fn put_state(&mut self, key: &str, value: Option<StateValue>) -> Result<(), String> {
        let run = self.run()?;
        let id = (run.rule.clone(), key.to_owned());
        run.pending.changes.push(match &value {
            Some(value) => Change::PutState {
                rule: id.0.clone(),
                key: id.1.clone(),
                value: value.clone(),
            },
            None => Change::DeleteState {
                rule: id.0.clone(),
                key: id.1.clone(),
            },
        });
        run.pending.state.insert(id, value);
        Ok(())
    }

    /// A timer of the running rule, or of `rule` when given, as decided so far.
    pub(crate) fn timer(&self, rule: &str, name: &str) -> Result<Option<Timer>, StoreError> {
        let id = (rule.to_owned(), name.to_owned());
        let staged = self
            .run
            .as_ref()
            .and_then(|run| run.pending.timers.get(&id))
            .or_else(|| self.batch.timers.get(&id));
        match staged {
            Some(timer) => Ok(timer.clone()),
            None => self.state.timer(rule, name),
        }
    }

    /// Stages a change to a timer in the current run, or in the batch when no rule runs.
    pub(crate) fn set_timer(&mut self, old: Option<Timer>, new: Option<Timer>) {
        let pending = match &mut self.run {
            Some(run) => &mut run.pending,
            None => &mut self.batch,
        };
        let Some(id) = new
            .as_ref()
            .or(old.as_ref())
            .map(|t| (t.rule.clone(), t.name.clone()))
        else {
            return;
        };
        if let Some(old) = old {
            pending.changes.push(Change::DeleteTimer(old));
        }
        if let Some(new) = &new {
            pending.changes.push(Change::PutTimer(new.clone()));
        }
        pending.timers.insert(id, new);
    }

    pub(crate) fn push_action(&mut self, action: ActionRequest) -> Result<(), String> {
        let run = self.run()?;
        run.pending.changes.push(Change::PutAction(action));
        run.pending.actions += 1;
        Ok(())
    }
}
