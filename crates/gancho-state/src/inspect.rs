//! What an operator sees of the engine's rule state and timers (`gancho timers`, `gancho
//! state`), streamed as committed (applied or not), and the one change an operator may make
//! to them: clearing a rule's state.

use gancho_store::StoreError;
use gancho_store::keys::push_str;
use serde::{Deserialize, Serialize};

use crate::EngineState;
use crate::listing::committed_range;
use crate::overlay::lock;
use crate::schema::{Expectation, Fields, STATE, StateValue, TIMER, Timer, corrupt};

/// A pending timer or expectation, as `gancho timers` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimerView {
    pub rule: String,
    /// The timer's name (`after`), or the expectation's key in the store.
    pub name: String,
    /// When it fires (event time, ms).
    pub due_ms: i64,
    pub callback: String,
    /// The event that set it.
    pub origin_seq: u64,
    /// For an expectation: what would cancel it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<Expectation>,
    /// Its rule or function was missing when it came due: kept until one is loaded.
    #[serde(default)]
    pub orphaned: bool,
}

/// One value of a rule's state, as `gancho state` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateEntry {
    pub rule: String,
    pub key: String,
    #[serde(flatten)]
    pub value: StateValue,
}

/// The prefix of a rule's keys under `prefix`, or of every rule's.
fn rule_range(prefix: u8, rule: Option<&str>) -> (Vec<u8>, Vec<u8>) {
    let mut start = vec![prefix];
    if let Some(rule) = rule {
        push_str(&mut start, rule);
    }
    let mut end = start.clone();
    end.push(0xff);
    if rule.is_none() {
        end = vec![prefix + 1];
    }
    (start, end)
}

impl EngineState {
    /// Hands the pending timers and expectations (of `rule`, or all) to `f`, by rule and name.
    pub fn each_timer(
        &self,
        rule: Option<&str>,
        mut f: impl FnMut(TimerView) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.each_timer_after(rule, None, 0, |_, timer| f(timer))
    }

    /// [`EngineState::each_timer`] from after the timer whose key is `after`, at most `limit`
    /// (0: all), each handed with its key (the cursor of the page that ends there).
    pub fn each_timer_after(
        &self,
        rule: Option<&str>,
        after: Option<&[u8]>,
        limit: usize,
        mut f: impl FnMut(Vec<u8>, TimerView) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let limit = if limit == 0 { usize::MAX } else { limit };
        let mut handed = 0;
        let (mut start, end) = rule_range(TIMER, rule);
        if let Some(after) = after {
            let mut next = after.to_vec();
            next.push(0);
            start = start.max(next);
        }
        // A cursor past this rule's range (one of another filter, or made by hand): nothing.
        if start >= end {
            return Ok(());
        }
        let mut entries = committed_range(&self.shared.overlay, &self.tree, start, end)?;
        while handed < limit
            && let Some((key, value)) = entries.next()?
        {
            let timer: Timer = match serde_json::from_slice(&value) {
                Ok(timer) => timer,
                Err(err) => {
                    tracing::warn!(error = %err, "an unreadable timer");
                    continue;
                }
            };
            handed += 1;
            f(
                key,
                TimerView {
                    name: timer
                        .name
                        .strip_prefix("timer:")
                        .unwrap_or(&timer.name)
                        .to_owned(),
                    rule: timer.rule,
                    due_ms: timer.due_ms,
                    callback: timer.callback,
                    origin_seq: timer.origin_seq,
                    expect: timer.expect,
                    orphaned: timer.orphaned,
                },
            )?;
        }
        Ok(())
    }

    /// Hands a rule's state (or every rule's), `once` and `throttle` marks included, to `f`.
    pub fn each_state(
        &self,
        rule: Option<&str>,
        mut f: impl FnMut(StateEntry) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let (start, end) = rule_range(STATE, rule);
        let mut entries = committed_range(&self.shared.overlay, &self.tree, start, end)?;
        while let Some((key, value)) = entries.next()? {
            let mut fields = Fields::new(key.get(1..).unwrap_or_default());
            let (Some(rule), Some(key)) = (fields.string(), fields.string()) else {
                return Err(corrupt("state", "bad key"));
            };
            match serde_json::from_slice::<StateValue>(&value) {
                Ok(value) => f(StateEntry { rule, key, value })?,
                Err(err) => tracing::warn!(rule, key, error = %err, "an unreadable state value"),
            }
        }
        Ok(())
    }

    /// Discards an orphaned timer or expectation (`name` as `gancho timers` shows it);
    /// whether there was one. One that is not orphaned is left: it is the engine's.
    pub fn discard_orphan(&self, rule: &str, name: &str) -> Result<bool, StoreError> {
        for stored in [name.to_owned(), format!("timer:{name}")] {
            let key = crate::schema::timer_key(rule, &stored);
            let overlay = lock(&self.shared.overlay);
            if overlay.contains_key(&key) {
                continue;
            }
            let Some(value) = self.tree.get(&key)? else {
                continue;
            };
            let orphaned = serde_json::from_slice::<Timer>(&value).is_ok_and(|t| t.orphaned);
            if orphaned {
                self.tree.remove(&key)?;
                drop(overlay);
                self.db.flush()?;
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Clears a rule's state: `key`, or all of it. A value a commit has staged is left (the
    /// engine is writing it): the count says how many went.
    pub fn clear_state(&self, rule: &str, key: Option<&str>) -> Result<usize, StoreError> {
        let keys: Vec<Vec<u8>> = match key {
            Some(key) => vec![crate::schema::state_key(rule, key)],
            None => {
                let (start, end) = rule_range(STATE, Some(rule));
                self.tree
                    .range(start..end)
                    .keys()
                    .collect::<Result<Vec<_>, _>>()?
                    .into_iter()
                    .map(|k| k.to_vec())
                    .collect()
            }
        };
        let mut cleared = 0;
        for key in keys {
            // Under the overlay's lock, under which every commit is staged: a value staged
            // meanwhile is not removed.
            let overlay = lock(&self.shared.overlay);
            if overlay.contains_key(&key) {
                continue;
            }
            if self.tree.get(&key)?.is_some() {
                self.tree.remove(&key)?;
                cleared += 1;
            }
            drop(overlay);
        }
        self.db.flush()?;
        Ok(cleared)
    }
}

impl EngineState {
    /// The orphaned timers and expectations of `rule`, whole (to be armed again).
    pub fn orphaned_timers(&self, rule: &str) -> Result<Vec<Timer>, StoreError> {
        let (start, end) = rule_range(TIMER, Some(rule));
        let mut entries = committed_range(&self.shared.overlay, &self.tree, start, end)?;
        let mut out = Vec::new();
        while let Some((_, value)) = entries.next()? {
            if let Ok(timer) = serde_json::from_slice::<Timer>(&value)
                && timer.orphaned
            {
                out.push(timer);
            }
        }
        Ok(out)
    }
}
