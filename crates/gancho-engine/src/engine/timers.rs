//! The engine's own events: every step appends the firings of due timers and due cron ticks
//! to the log (with provider ids, so appending one twice stores it once); when the walk reaches
//! a firing, its rule's callback runs. An event that fulfils an expectation cancels the one
//! timer its key values name.

use chrono::Utc;
use gancho_core::{Event, EventId, NewEvent, millis_to_time, time_to_millis};
use gancho_state::{Change, Timer, expectation_name};
use gancho_store::{Order, StoreError, Submission, Window};
use rhai::Dynamic;
use serde::Deserialize;
use tracing::warn;

use crate::dynamic;

use super::config::{CRON_SOURCE, EngineError, TIMER_SOURCE};
use super::walk::{Engine, event_map};

/// Cron ticks missed while the daemon was down that are caught up, at most (the newest).
const MAX_CATCH_UP: usize = 1000;

impl Engine {
    /// When the engine next has work of its own, by its clock (ms): the earliest due timer or
    /// cron tick. A cron rule not yet seen since the start counts as due now (its first step
    /// works out its schedule). `gancho test` moves its virtual clock from one to the next.
    pub fn next_due_ms(&self) -> Result<Option<i64>, EngineError> {
        let timer = self.state.next_due()?;
        let unseen = self
            .rules
            .iter()
            .any(|(name, rule)| rule.schedule.is_some() && !self.cron_next.contains_key(name));
        let cron = match unseen {
            true => Some(time_to_millis(self.clock.now())),
            false => self.cron_next.values().copied().min(),
        };
        Ok(match (timer, cron) {
            (Some(t), Some(c)) => Some(t.min(c)),
            (t, c) => t.or(c),
        })
    }

    /// Appends the firing of every due timer and every due cron tick to the log. Nothing is
    /// marked as fired unless the append succeeded, so a refused append (a busy store) is
    /// retried at the next step.
    pub(super) fn fire_due(&mut self) -> Result<usize, EngineError> {
        let now = self.clock.now();
        let now_ms = time_to_millis(now);
        let mut events = Vec::new();
        let mut fired = Vec::new();
        for timer in self.state.due_timers(now_ms, 1024)? {
            if self.fired.contains(&timer.uid) {
                continue;
            }
            let data = serde_json::json!({
                "rule": timer.rule, "name": timer.name, "uid": timer.uid, "due": timer.due_ms,
            });
            let id = format!("timer:{}", timer.uid);
            match new_event(
                TIMER_SOURCE,
                timer_kind(&timer.name),
                &id,
                timer.due_ms,
                now,
                &data,
            ) {
                Ok(event) => {
                    events.push(event);
                    fired.push(timer.uid);
                }
                // Cannot happen with the limits `after` and `expect` enforce; never let one
                // timer stop the others.
                Err(err) => warn!(uid = %timer.uid, error = %err, "a timer cannot fire"),
            }
        }
        let mut cron_moves = Vec::new();
        for (name, rule) in &self.rules {
            let Some(schedule) = &rule.schedule else {
                continue;
            };
            let next = match self.cron_next.get(name) {
                Some(&next) => next,
                None => {
                    // First sight since start: catch up the ticks missed while down (each, or
                    // the last only), else wait for the next.
                    let mark = self.state.cron_mark(name)?;
                    let last = mark.and_then(|mark| {
                        schedule
                            .last_at_or_before(now_ms)
                            .filter(|&last| last > mark)
                    });
                    // Every tick missed while the daemon was down, each with its own time
                    // (`CATCH_UP = "last"`: the last one only), the newest `MAX_CATCH_UP` at
                    // most, found from the last one back; all but the last here, the last
                    // below, as a tick due now. A rule loaded while the daemon runs (a new
                    // or re-added file) catches up nothing: it missed nothing while down.
                    let caught_up = rule.catch_up_all && self.loaded_at_start.contains(name);
                    let mut missed = Vec::new();
                    if let (Some(mark), Some(last), true) = (mark, last, caught_up) {
                        let mut at = last;
                        while let Some(tick) = schedule
                            .last_at_or_before(at.saturating_sub(1))
                            .filter(|&t| t > mark)
                        {
                            if missed.len() == MAX_CATCH_UP {
                                warn!(
                                    rule = %name,
                                    caught_up = MAX_CATCH_UP,
                                    "more cron ticks were missed than are caught up: the oldest are skipped"
                                );
                                break;
                            }
                            missed.push(tick);
                            at = tick;
                        }
                        missed.reverse();
                        for &tick in &missed {
                            let data = serde_json::json!({ "rule": name, "tick": tick });
                            events.push(new_event(
                                CRON_SOURCE,
                                name.clone(),
                                &format!("cron:{name}:{tick}"),
                                tick,
                                now,
                                &data,
                            )?);
                        }
                    }
                    // A schedule that never matches (31 February) waits for ever.
                    let next = last
                        .or_else(|| schedule.next_after(now_ms))
                        .unwrap_or(i64::MAX);
                    // With ticks to catch up, the rule stays unseen until their append
                    // succeeds (`cron_moves`): a refused append finds them again.
                    if missed.is_empty() {
                        self.cron_next.insert(name.clone(), next);
                    }
                    if mark.is_none() {
                        // Remember that the rule exists, so ticks missed from now on are
                        // caught up after a restart.
                        self.ctx.borrow_mut().batch.changes.push(Change::CronMark {
                            rule: name.clone(),
                            tick_ms: now_ms,
                        });
                    }
                    next
                }
            };
            if next > now_ms {
                continue;
            }
            let data = serde_json::json!({ "rule": name, "tick": next });
            events.push(new_event(
                CRON_SOURCE,
                name.clone(),
                &format!("cron:{name}:{next}"),
                next,
                now,
                &data,
            )?);
            let after = schedule.next_after(now_ms.max(next)).unwrap_or(i64::MAX);
            cron_moves.push((name.clone(), after));
        }
        if events.is_empty() {
            return Ok(0);
        }
        let n = events.len();
        match &self.config.own_events {
            Some(stream) => drop(stream.publish_blocking(events)?),
            None => drop(self.store.appender().append_blocking(Submission {
                events,
                rejected: Vec::new(),
            })?),
        }
        self.fired.extend(fired);
        self.cron_next.extend(cron_moves);
        Ok(n)
    }

    /// Cancels the expectations this event fulfils: for each shape waiting on its type, the
    /// one timer its key values name.
    pub(super) fn satisfy_expectations(&mut self, event: &Event) {
        let Some(shapes) = self.shapes.get(&event.source, &event.kind) else {
            return;
        };
        let time = time_to_millis(event.time);
        let mut ctx = self.ctx.borrow_mut();
        for shape in shapes {
            let Some(keys) = shape
                .names
                .iter()
                .map(|n| event.keys.get(n).map(|v| (n.as_str(), v.as_str())))
                .collect::<Option<Vec<_>>>()
            else {
                continue;
            };
            let name = expectation_name(&event.source, &event.kind, &keys, &shape.callback);
            let current = match ctx.timer(&shape.rule, &name) {
                Ok(found) => found,
                Err(err) => {
                    warn!(seq = event.seq, error = %err, "reading an expectation");
                    continue;
                }
            };
            let Some(current) = current else {
                continue;
            };
            if current
                .expect
                .as_ref()
                .is_some_and(|e| (e.from_ms..=e.to_ms).contains(&time))
            {
                ctx.set_timer(Some(current), None);
            }
        }
    }

    pub(super) fn process_timer(&mut self, event: &Event) {
        #[derive(Deserialize)]
        struct Firing {
            rule: String,
            name: String,
            uid: String,
        }
        let Ok(firing) = serde_json::from_str::<Firing>(event.data.get()) else {
            warn!(
                seq = event.seq,
                "a timer event without rule, name and uid: skipped"
            );
            return;
        };
        self.fired.remove(&firing.uid);
        let timer = {
            let ctx = self.ctx.borrow();
            match ctx.timer(&firing.rule, &firing.name) {
                Ok(t) => t,
                Err(err) => {
                    warn!(seq = event.seq, error = %err, "reading a timer");
                    return;
                }
            }
        };
        // Cancelled or set again since this firing was appended: nothing to do.
        let Some(timer) = timer.filter(|t| t.uid == firing.uid) else {
            return;
        };
        // Its rule or function gone (a rule renamed, a callback renamed, a file being
        // replaced): kept, not run, until a version of the rule that has it is loaded.
        let callable = self
            .rules
            .get(&timer.rule)
            .is_some_and(|r| r.callbacks.contains(&timer.callback));
        if !callable {
            warn!(
                rule = %timer.rule,
                timer = %timer.name,
                callback = %timer.callback,
                "a timer came due whose rule or function is missing: kept as orphaned until one is loaded (gancho timers --orphaned)"
            );
            let orphan = Timer {
                orphaned: true,
                ..timer.clone()
            };
            self.ctx.borrow_mut().set_timer(Some(timer), Some(orphan));
            return;
        }
        self.ctx.borrow_mut().set_timer(Some(timer.clone()), None);
        if let Some(expect) = &timer.expect {
            // The fulfilling event may be stored and not yet seen (the engine runs behind
            // the log): look again, up to this firing.
            let window = Window {
                source: expect.source.clone(),
                kind: expect.kind.clone(),
                keys: expect.keys.clone(),
                from_ms: expect.from_ms,
                to_ms: expect.to_ms,
                max_seq: event.seq,
            };
            match self.store.window(&window, Order::Oldest, 1) {
                Ok(found) if !found.is_empty() => return,
                Ok(_) => {}
                Err(err) => {
                    warn!(seq = event.seq, error = %err, "checking an expectation");
                    return;
                }
            }
        }
        self.run_callback(&timer, event);
        // A failed callback keeps its timer in the trace: `gancho rerun` can call it again.
        if let Some(trace) = self.traces.runs.last_mut()
            && trace.seq == event.seq
            && trace.error.is_some()
        {
            trace.timer = Some(timer);
        }
    }

    /// Calls a timer's or expectation's function for its firing `event`: with the timer's
    /// name, times and data, or with the event that set the expectation.
    pub(super) fn run_callback(&mut self, timer: &Timer, event: &Event) {
        let argument = match &timer.expect {
            Some(_) => {
                let origin = timer.data.get("seq").and_then(serde_json::Value::as_u64);
                match origin.map(|seq| self.store.event(seq)) {
                    Some(Ok(origin)) => match dynamic::event_map(&origin, None) {
                        Ok(map) => Dynamic::from_map(map),
                        Err(_) => Dynamic::UNIT,
                    },
                    _ => Dynamic::UNIT,
                }
            }
            None => {
                let mut map = rhai::Map::new();
                map.insert(
                    "name".into(),
                    Dynamic::from(
                        timer
                            .name
                            .strip_prefix("timer:")
                            .unwrap_or(&timer.name)
                            .to_owned(),
                    ),
                );
                map.insert("due".into(), Dynamic::from_int(timer.due_ms));
                map.insert(
                    "fired".into(),
                    Dynamic::from_int(time_to_millis(event.received)),
                );
                map.insert("data".into(), dynamic::from_json(&timer.data));
                Dynamic::from_map(map)
            }
        };
        let rule = timer.rule.clone();
        if let Some(map) = event_map(event, None) {
            self.run_rule(&rule, event, map, Some((&timer.callback, argument)));
        }
    }
}

fn timer_kind(name: &str) -> String {
    if name.starts_with("expect:") {
        "expect".to_owned()
    } else {
        name.strip_prefix("timer:").unwrap_or(name).to_owned()
    }
}

fn new_event(
    source: &str,
    kind: String,
    id: &str,
    time_ms: i64,
    received: chrono::DateTime<Utc>,
    data: &serde_json::Value,
) -> Result<NewEvent, EngineError> {
    let data = serde_json::value::to_raw_value(data).map_err(|err| {
        EngineError::Store(StoreError::Corrupt {
            key: id.to_owned(),
            reason: err.to_string(),
        })
    })?;
    Ok(NewEvent {
        id: EventId::from_provider(id),
        source: source.to_owned(),
        kind,
        time: millis_to_time(time_ms),
        received,
        keys: Default::default(),
        data,
    })
}
