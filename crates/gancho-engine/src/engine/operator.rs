//! What operators ask of the running engine, carried out between batches: requests staged into
//! a batch so that they commit with it (`gancho state --clear`, `gancho timers discard`), re-runs
//! of failed runs (`gancho rerun`), rules disabled, enabled or paused, and the rules' counters.

use gancho_core::{Event, time_to_millis};
use gancho_state::Change;
use gancho_state::ops::OperatorOp;
use gancho_state::rules::RuleControl;
use tracing::{error, info, warn};

use super::config::{CRON_SOURCE, EngineError, TIMER_SOURCE};
use super::walk::{Engine, RERUNS_PER_STEP, event_map};

impl Engine {
    /// Stages operators' requests (`gancho state --clear`, `gancho timers discard`) into the
    /// batch, so that they commit with it: never undone by a value the engine was writing.
    pub(super) fn stage_operator_ops(&mut self) {
        if !self.ops_staged.is_empty() {
            return;
        }
        let ops = match self.state.pending_ops() {
            Ok(ops) => ops,
            Err(err) => {
                warn!(error = %err, "reading operators' requests");
                return;
            }
        };
        for (id, op) in ops {
            if self.ops_committed.iter().any(|&(_, done)| done == id) {
                continue;
            }
            let staged_before = self.ctx.borrow().batch.changes.len();
            match op {
                OperatorOp::ClearState { rule, key } => {
                    let mut keys = Vec::new();
                    match key {
                        Some(key) => keys.push(key),
                        None => {
                            let listed = self.state.each_state(Some(&rule), |entry| {
                                keys.push(entry.key);
                                Ok(())
                            });
                            if let Err(err) = listed {
                                warn!(rule, error = %err, "reading a rule's state to clear it");
                                continue;
                            }
                        }
                    }
                    info!(rule, values = keys.len(), "an operator clears rule state");
                    let mut ctx = self.ctx.borrow_mut();
                    for key in keys {
                        ctx.batch.changes.push(Change::DeleteState {
                            rule: rule.clone(),
                            key: key.clone(),
                        });
                        ctx.batch.state.insert((rule.clone(), key), None);
                    }
                }
                OperatorOp::Rerun { rule, since_ms } => {
                    // Left pending (not staged) while failed runs remain: the next steps go on.
                    if !self.rerun_failed(&rule, since_ms, id) {
                        continue;
                    }
                }
                OperatorOp::DiscardOrphan { rule, name } => {
                    let mut ctx = self.ctx.borrow_mut();
                    for stored in [name.clone(), format!("timer:{name}")] {
                        if let Ok(Some(timer)) = ctx.timer(&rule, &stored)
                            && timer.orphaned
                        {
                            info!(rule, timer = %name, "an operator discards an orphaned timer");
                            ctx.set_timer(Some(timer), None);
                            break;
                        }
                    }
                }
            }
            if self.ctx.borrow().batch.changes.len() == staged_before {
                // Nothing to commit (nothing to clear, nothing failed): done now, or the
                // operator would wait for a commit that an idle engine never makes.
                if let Err(err) = self.state.op_done(id) {
                    warn!(error = %err, "removing a done operator request");
                }
                continue;
            }
            self.ops_staged.push(id);
        }
    }

    /// Runs the current version of `rule` once on each event it failed on (traced in the
    /// batches since `since_ms`), oldest first, at most [`RERUNS_PER_STEP`] per step; true
    /// when none is left. Each re-run's decisions, and its mark `rerun:SEQ` in the rule's
    /// state (what it did, and for which request), go into the batch being committed.
    pub(super) fn rerun_failed(&mut self, rule: &str, since_ms: i64, op: u64) -> bool {
        if !self.rules.contains_key(rule) {
            warn!(
                rule,
                "gancho rerun: no rule of this name is loaded; nothing re-run"
            );
            return true;
        }
        let failed = match self.state.failed_runs(rule, since_ms) {
            Ok(failed) => failed,
            Err(err) => {
                warn!(rule, error = %err, "gancho rerun: reading the rule's failed runs");
                return false;
            }
        };
        let now_ms = time_to_millis(self.clock.now());
        let mut done = 0;
        for seq in failed {
            let mark = format!("rerun:{seq}");
            let id = (rule.to_owned(), mark.clone());
            if self.ctx.borrow().batch.state.contains_key(&id) {
                continue;
            }
            match self.state.state(rule, &mark) {
                Ok(Some(_)) => continue,
                Ok(None) => {}
                Err(err) => {
                    warn!(rule, error = %err, "gancho rerun: reading a mark");
                    return false;
                }
            }
            if done == RERUNS_PER_STEP {
                return false;
            }
            done += 1;
            let (outcome, received_ms) = match self.store.event(seq) {
                Ok(event) => (self.rerun_one(rule, &event), time_to_millis(event.received)),
                Err(err) => (format!("not re-run: {err}"), now_ms),
            };
            info!(rule, seq, outcome = %outcome, "gancho rerun");
            // Kept as long as the failed run's trace may be (a day more for clocks that
            // differ): the same event is not re-run again.
            let expires_ms = self.config.trace_retention_ms.map(|keep| {
                now_ms
                    .max(received_ms)
                    .saturating_add(keep)
                    .saturating_add(24 * 3_600_000)
            });
            let value = gancho_state::StateValue {
                value: serde_json::json!({
                    "op": op.to_string(),
                    "at": now_ms,
                    "outcome": outcome,
                }),
                expires_ms,
            };
            let mut ctx = self.ctx.borrow_mut();
            ctx.batch.changes.push(Change::PutState {
                rule: rule.to_owned(),
                key: mark,
                value: value.clone(),
            });
            ctx.batch.state.insert(id, Some(value));
        }
        true
    }

    /// Runs `rule` on `event` again; says what came of it.
    pub(super) fn rerun_one(&mut self, rule: &str, event: &Event) -> String {
        match event.source.as_str() {
            // A callback: its timer, used up when it fired, is kept in the failed run's trace.
            TIMER_SOURCE => {
                let failed = match self.state.traces_of(event.seq) {
                    Ok(runs) => runs
                        .into_iter()
                        .rev()
                        .find(|r| r.rule == rule && r.error.is_some())
                        .and_then(|r| r.timer),
                    Err(err) => return format!("not re-run: reading its trace: {err}"),
                };
                let Some(timer) = failed else {
                    return "not re-run: its trace does not hold the timer it called back"
                        .to_owned();
                };
                let callable = self
                    .rules
                    .get(rule)
                    .is_some_and(|r| r.callbacks.contains(&timer.callback));
                if !callable {
                    return format!(
                        "not re-run: the rule defines no function {}(x) now",
                        timer.callback
                    );
                }
                self.run_callback(&timer, event);
            }
            CRON_SOURCE if event.kind != rule => {
                return "not re-run: a cron tick of another rule".to_owned();
            }
            _ => {
                let Some(map) = event_map(event, None) else {
                    return "not re-run: its payload is not JSON".to_owned();
                };
                self.run_rule(rule, event, map, None);
            }
        }
        let ours = self
            .traces
            .runs
            .last()
            .is_some_and(|t| t.seq == event.seq && t.rule == rule);
        if !ours {
            return "not re-run: set aside (it took the engine down before)".to_owned();
        }
        let Some(mut trace) = self.traces.runs.pop() else {
            return String::new();
        };
        trace.rerun = true;
        let outcome = match &trace.error {
            Some(error) => format!("failed again: {error}"),
            None => format!("decided {} action(s)", trace.actions.len()),
        };
        self.reruns
            .push((event.seq, time_to_millis(event.received), trace));
        outcome
    }

    /// Removes the requests whose commit is durable: the operator waiting for them is told.
    pub(super) fn finish_operator_ops(&mut self) {
        let durable = self.state.durable_cursor();
        self.ops_committed.retain(|&(cursor, id)| {
            if cursor > durable {
                return true;
            }
            if let Err(err) = self.state.op_done(id) {
                warn!(error = %err, "removing a done operator request");
            }
            false
        });
    }

    /// Whether events wake `rule` (it is neither disabled nor paused).
    pub(super) fn runs(&self, rule: &str) -> bool {
        self.controls.get(rule).is_none_or(RuleControl::runs)
    }

    /// Pauses a rule that fails too often; `gancho rules enable` resumes it.
    pub(super) fn pause(&mut self, rule: &str, why: String) {
        error!(rule, reason = %why, "rule paused: events no longer wake it until `gancho rules enable {rule}`");
        if let Some(counters) = self.counters.get_mut(rule) {
            counters.resume();
        }
        // The stored control, not the one read at the last reload: an operator may have
        // changed it since.
        let mut control = match self.state.rule_controls() {
            Ok(controls) => controls.get(rule).cloned().unwrap_or_default(),
            Err(err) => {
                warn!(rule, error = %err, "reading a rule's control");
                self.controls.get(rule).cloned().unwrap_or_default()
            }
        };
        control.paused = Some(why);
        if let Err(err) = self.state.set_rule_control(rule, &control) {
            warn!(rule, error = %err, "recording a paused rule");
        }
        self.controls.insert(rule.to_owned(), control);
    }

    /// Reads the rules' controls again (an operator may have changed them); a rule that runs
    /// again starts its count of failures afresh.
    pub(super) fn refresh_controls(&mut self) -> Result<(), EngineError> {
        let controls = self.state.rule_controls()?;
        for (name, counters) in &mut self.counters {
            let was = self.controls.get(name).is_none_or(RuleControl::runs);
            let is = controls.get(name).is_none_or(RuleControl::runs);
            if is && !was {
                counters.resume();
                info!(rule = %name, "rule resumed");
            }
        }
        self.controls = controls;
        Ok(())
    }

    /// Stores the counters that changed (statistics: written outside commits).
    pub(super) fn save_counters(&mut self) {
        for (name, counters) in &mut self.counters {
            if counters.dirty {
                match self.state.save_rule_counters(name, &counters.stored) {
                    Ok(()) => counters.dirty = false,
                    Err(err) => warn!(rule = %name, error = %err, "storing a rule's counters"),
                }
            }
        }
    }
}
