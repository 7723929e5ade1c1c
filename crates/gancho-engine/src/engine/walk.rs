//! The [`Engine`]: walks the log from its cursor in batches, wakes the rules
//! each event's type names (dispatch, cached per type), runs them, and commits their decisions
//! with the cursor. Loading the rules is `reload.rs`'; its own events (timer firings, cron
//! ticks) are `timers.rs`'.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gancho_core::{Clock, Event, time_to_millis};
use gancho_state::rules::RuleControl;
use gancho_state::{Change, EngineState, ExpectShape};
use gancho_store::Store;
use rhai::{CallFnOptions, Dynamic, Scope};
use tracing::warn;

use crate::api;
use crate::ctx::{Ctx, Pending, Run};
use crate::dynamic;
use crate::prefetch::Reader;
use crate::rule::{Diagnostic, Rule};

use super::careful::{Careful, Verdict};
use super::config::{CRON_SOURCE, EngineConfig, EngineError, TIMER_SOURCE};
use super::status::{Counters, EngineStatus, RuleStatus, StepReport};

/// The shapes expectations wait on, by source and type: looked up for every event, by `&str`,
/// without building a key.
#[derive(Debug, Default)]
pub(super) struct Shapes(HashMap<String, HashMap<String, BTreeSet<ExpectShape>>>);

impl Shapes {
    /// Adds a shape; true if it is new.
    fn insert(&mut self, shape: ExpectShape) -> bool {
        self.0
            .entry(shape.source.clone())
            .or_default()
            .entry(shape.kind.clone())
            .or_default()
            .insert(shape)
    }

    pub(super) fn get(&self, source: &str, kind: &str) -> Option<&BTreeSet<ExpectShape>> {
        self.0.get(source)?.get(kind)
    }
}

/// A batch that decides nothing commits its cursor only if the last commit is this old.
const IDLE_COMMIT_EVERY: Duration = Duration::from_secs(1);

/// Failed runs `gancho rerun` runs again per step, at most (the rest in the next steps).
pub(super) const RERUNS_PER_STEP: usize = 200;

/// Event types whose rule lists are remembered, at most.
const MAX_DISPATCH_TYPES: usize = 10_000;

/// The rule engine. Single-threaded (rhai's engine and the host functions' context are not
/// shared): the daemon runs it on a thread of its own (see [`crate::spawn`]).
#[derive(Debug)]
pub struct Engine {
    pub(super) store: Store,
    pub(super) state: EngineState,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) config: EngineConfig,
    pub(super) rhai: rhai::Engine,
    pub(super) ctx: Rc<RefCell<Ctx>>,
    pub(super) rules: BTreeMap<String, Rule>,
    /// Files that failed to compile, by rule name, with their text's hash.
    pub(super) broken: BTreeMap<String, (u64, Diagnostic)>,
    pub(super) counters: HashMap<String, Counters>,
    /// Rules disabled by an operator or paused by the engine (read again at each reload).
    pub(super) controls: BTreeMap<String, RuleControl>,
    /// Qualified type → the rules it wakes; filled on first sight of a type, cleared on reload.
    dispatch: HashMap<String, Woken>,
    /// (source, type) → the key-name sets expectations wait on.
    pub(super) shapes: Shapes,
    pub(super) cursor: u64,
    /// Reads the next batch while this one runs.
    pub(super) reader: Reader,
    /// Timer uids appended to the log and not processed yet.
    pub(super) fired: HashSet<String>,
    /// When the cursor was last committed, and where it was.
    pub(super) cursor_committed: Instant,
    pub(super) committed_cursor: u64,
    /// Rule → its next cron tick.
    pub(super) cron_next: HashMap<String, i64>,
    pub(super) fire_error_logged: Option<Instant>,
    /// The rules folder has been read once (a missing folder is an error from then on).
    pub(super) loaded_once: bool,
    /// Poison events: careful mode after an unclean exit, runs set aside.
    pub(super) careful: Careful,
    /// The rules loaded when the engine started: only they catch up cron ticks missed while
    /// the daemon was down.
    pub(super) loaded_at_start: HashSet<String>,
    /// Operators' requests staged into the batch in progress, and those committed, with the
    /// cursor of their commit: each is removed once its commit is durable.
    pub(super) ops_staged: Vec<u64>,
    pub(super) ops_committed: Vec<(u64, u64)>,
    /// The runs of the batch in progress, for its trace (`gancho explain`).
    pub(super) traces: gancho_state::traces::BatchTrace,
    /// The runs of `gancho rerun` in the batch in progress (event seq, its arrival, the run),
    /// traced apart from the batch's own.
    pub(super) reruns: Vec<(u64, i64, gancho_state::traces::RunTrace)>,
}

impl Engine {
    /// Opens the engine on the log (`store`) and its state (`state`) and loads the rules.
    /// Broken rule files are reported in the status and the log; they do not stop the engine.
    pub fn new(
        store: Store,
        state: EngineState,
        clock: Arc<dyn Clock>,
        config: EngineConfig,
    ) -> Result<Engine, EngineError> {
        let ctx = Rc::new(RefCell::new(Ctx {
            store: store.clone(),
            state: state.clone(),
            source_keys: config.source_keys.clone(),
            placement: config.placement.clone(),
            max_queries: config.limits.max_queries,
            retention_ms: config.retention_ms,
            told_retention: HashSet::new(),
            late_grace_ms: config.late_grace_ms,
            run: None,
            batch: Pending::default(),
            new_shapes: Vec::new(),
        }));
        let rhai = api::build(&config.limits, &ctx);
        let mut shapes = Shapes::default();
        for shape in state.expectation_shapes()? {
            shapes.insert(shape);
        }
        let mut cursor = state.cursor()?;
        let last = store.last_seq()?;
        if cursor > last && !config.log_from_stream {
            // Only with fsync off, after a power loss: the log lost its newest events, and
            // their seqs will be reused by new events, which must be processed.
            warn!(
                cursor,
                last, "the engine is ahead of the log; resuming at its end"
            );
            cursor = last;
        }
        let reader = Reader::new(store.clone());
        let careful = Careful::begin(state.clone(), Arc::clone(&clock), cursor)?;
        let counters = state
            .rule_counters()?
            .into_iter()
            .map(|(name, stored)| (name, Counters::from_stored(stored)))
            .collect();
        let controls = state.rule_controls()?;
        let mut engine = Engine {
            store,
            state,
            clock,
            config,
            rhai,
            ctx,
            rules: BTreeMap::new(),
            broken: BTreeMap::new(),
            counters,
            controls,
            dispatch: HashMap::new(),
            shapes,
            cursor,
            reader,
            fired: HashSet::new(),
            cursor_committed: Instant::now(),
            committed_cursor: cursor,
            cron_next: HashMap::new(),
            fire_error_logged: None,
            loaded_once: false,
            careful,
            loaded_at_start: HashSet::new(),
            ops_staged: Vec::new(),
            ops_committed: Vec::new(),
            traces: Default::default(),
            reruns: Vec::new(),
        };
        engine.reload()?;
        engine.loaded_at_start = engine.rules.keys().cloned().collect();
        Ok(engine)
    }

    pub fn status(&self) -> EngineStatus {
        let mut names: BTreeSet<&String> = self.rules.keys().collect();
        names.extend(self.broken.keys());
        let rules = names
            .into_iter()
            .map(|name| {
                let rule = self.rules.get(name);
                let counters = self.counters.get(name);
                RuleStatus {
                    name: name.clone(),
                    file: rule
                        .map(|r| r.path.clone())
                        .or_else(|| self.broken.get(name).map(|(_, d)| d.file.clone()))
                        .unwrap_or_default(),
                    loaded: rule.is_some(),
                    error: self.broken.get(name).map(|(_, d)| d.clone()),
                    on: rule.map(|r| r.on_text.clone()).unwrap_or_default(),
                    every: rule.and_then(|r| r.schedule.as_ref().map(|s| s.text.clone())),
                    runs: counters.map_or(0, |c| c.stored.runs),
                    errors: counters.map_or(0, |c| c.stored.errors),
                    last_error: counters.and_then(|c| c.stored.last_error.clone()),
                    actions: counters.map_or(0, |c| c.stored.actions),
                    time_ms: counters.map_or(0, |c| c.stored.time_us / 1000),
                    disabled: self.controls.get(name.as_str()).is_some_and(|c| c.disabled),
                    paused: self
                        .controls
                        .get(name.as_str())
                        .and_then(|c| c.paused.clone()),
                }
            })
            .collect();
        EngineStatus {
            cursor: self.cursor,
            rules,
            stopped: false,
        }
    }

    /// The functions registered in the engine rules run in (not those of rhai's packages).
    pub fn functions(&self) -> std::collections::BTreeSet<String> {
        self.rhai
            .collect_fn_metadata(None, |info| Some(info.metadata.name.to_string()), false)
            .into_iter()
            .collect()
    }

    /// The last log seq processed.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Commits the cursor if batches that decided nothing moved it since the last commit (they
    /// commit it at most once a second): call it before stopping, so a restart does not
    /// process those events again (under rules that may have changed meanwhile).
    pub fn commit_cursor(&mut self) -> Result<(), EngineError> {
        if self.cursor > self.committed_cursor && self.ctx.borrow().batch.is_empty() {
            self.state.commit(Vec::new(), self.cursor)?;
            self.committed_cursor = self.cursor;
            self.cursor_committed = Instant::now();
            self.careful.committed(self.cursor)?;
            let traces = std::mem::take(&mut self.traces);
            self.save_traces(traces);
        }
        self.save_counters();
        Ok(())
    }

    /// Stores the traces of committed runs, keyed by the earliest event they hold.
    fn save_traces(&self, traces: gancho_state::traces::BatchTrace) {
        let Some(first) = traces.runs.iter().map(|r| r.seq).min() else {
            return;
        };
        if let Err(err) = self.state.save_traces(first, &traces) {
            warn!(error = %err, "storing a batch's traces");
        }
    }

    /// The engine stops cleanly (after [`Engine::commit_cursor`]): its next start processes
    /// as usual, not carefully.
    pub fn end_life(&self) -> Result<(), EngineError> {
        Ok(self.careful.end()?)
    }

    /// Commits the cursor once the engine is idle and its last commit is a second old, so that
    /// the durable cursor (which retention and the actions follow) catches up without waiting
    /// for the next event.
    pub fn commit_idle_cursor(&mut self) -> Result<(), EngineError> {
        if self.cursor_committed.elapsed() >= IDLE_COMMIT_EVERY {
            self.commit_cursor()?;
        }
        Ok(())
    }

    /// One round: append due timer firings and cron ticks, then process the next batch of
    /// indexed events and commit.
    pub fn step(&mut self) -> Result<StepReport, EngineError> {
        // A failure to fire (a busy store) must not hold up the processing of events.
        let appended = match self.fire_due() {
            Ok(n) => n,
            Err(err) => {
                if self
                    .fire_error_logged
                    .is_none_or(|at| at.elapsed() >= Duration::from_secs(10))
                {
                    warn!(error = %err, "could not append due timers and cron ticks; retrying");
                    self.fire_error_logged = Some(Instant::now());
                }
                0
            }
        };
        self.stage_operator_ops();
        let processed = self.process_batch()?;
        self.finish_operator_ops();
        Ok(StepReport {
            processed,
            appended,
        })
    }

    /// Steps until nothing is left to do now: every durable event processed, every due timer
    /// fired and processed; returns how many events that was. Waits up to `timeout` for the
    /// indexer between steps, and fails with [`EngineError::NotIdle`] if work is left then.
    pub fn run_until_idle(&mut self, timeout: Duration) -> Result<usize, EngineError> {
        let deadline = Instant::now() + timeout;
        let mut total = 0;
        loop {
            if Instant::now() > deadline {
                return Err(EngineError::NotIdle {
                    waited: timeout,
                    cursor: self.cursor,
                    durable: self.store.status().durable,
                });
            }
            let report = self.step()?;
            total += report.processed;
            let durable = self.store.status().durable;
            if report.processed == 0 && report.appended == 0 && self.cursor >= durable {
                return Ok(total);
            }
            if report.processed == 0 {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(EngineError::NotIdle {
                        waited: timeout,
                        cursor: self.cursor,
                        durable,
                    });
                }
                self.store
                    .wait_indexed(self.cursor + 1, left.min(Duration::from_millis(50)));
            }
        }
    }

    /// Processes the events after the cursor that the indexer has reached, and commits.
    fn process_batch(&mut self) -> Result<usize, EngineError> {
        let bound = self.store.status().indexed;
        let pending_marks = !self.ctx.borrow().batch.is_empty();
        if self.cursor >= bound && !pending_marks {
            return Ok(0);
        }
        let to = bound.min(self.cursor + self.config.batch_size as u64);
        // Should processing them kill the process, the next start knows where it was.
        self.careful.batch(self.cursor + 1, to)?;
        // With no rules and no expectations, only the engine's own events (timers whose rule
        // went away) need anything done.
        let own_only = self.rules.is_empty() && self.shapes.0.is_empty();
        let (events, read_to) = self.reader.read(self.cursor + 1, to, own_only)?;
        // The read may stop short of `to`, never of `self.cursor + 1`.
        let read_to = read_to.max(events.last().map_or(0, |e| e.seq));
        if read_to < bound {
            let next = read_to + 1;
            self.reader.read_ahead(
                next,
                bound.min(read_to + self.config.batch_size as u64),
                own_only,
            );
        }
        // Shapes of expectations set in this batch: known at once (a matching event later in
        // the batch cancels them), stored with the commit.
        let mut fresh = Vec::new();
        for event in &events {
            self.process(event);
            let shapes = std::mem::take(&mut self.ctx.borrow_mut().new_shapes);
            for shape in shapes {
                if self.shapes.insert(shape.clone()) {
                    fresh.push(shape);
                }
            }
        }
        let last = read_to.max(self.cursor);
        let mut batch = std::mem::take(&mut self.ctx.borrow_mut().batch);
        for shape in fresh {
            batch.changes.push(Change::PutShape(shape));
        }
        let processed = (last - self.cursor) as usize;
        if batch.changes.is_empty() && self.cursor_committed.elapsed() < IDLE_COMMIT_EVERY {
            // Nothing decided: the cursor alone is committed at most this often (each commit
            // is a flush and an fdatasync). A crash before then processes these events again,
            // which decides nothing again.
            self.cursor = last;
            return Ok(processed);
        }
        // The traces of this batch, and of the batches before it that decided nothing (their
        // cursor was not committed): stored once the commit is handed over.
        let traces = std::mem::take(&mut self.traces);
        if let Err(err) = self.state.commit(batch.changes, last) {
            // Nothing of the batch is committed: it is processed again on the next step; the
            // orphans it armed again are armed again too, and operators' requests staged.
            self.ops_staged.clear();
            self.reruns.clear();
            self.shapes_from_store()?;
            let names: Vec<String> = self.rules.keys().cloned().collect();
            for name in names {
                self.rearm_orphans(&name);
            }
            return Err(err.into());
        }
        self.cursor = last;
        self.cursor_committed = Instant::now();
        self.committed_cursor = last;
        self.careful.committed(last)?;
        self.save_counters();
        let staged = std::mem::take(&mut self.ops_staged);
        self.ops_committed
            .extend(staged.into_iter().map(|id| (last, id)));
        self.save_traces(traces);
        for (seq, received_ms, run) in std::mem::take(&mut self.reruns) {
            if let Err(err) = self.state.save_reruns(seq, received_ms, vec![run]) {
                warn!(error = %err, "storing a re-run's trace");
            }
        }
        Ok(processed)
    }

    fn shapes_from_store(&mut self) -> Result<(), EngineError> {
        self.shapes = Shapes::default();
        for shape in self.state.expectation_shapes()? {
            self.shapes.insert(shape);
        }
        Ok(())
    }

    /// Runs what one event wakes. Errors in rules are counted and logged, never propagated.
    fn process(&mut self, event: &Event) {
        match event.source.as_str() {
            TIMER_SOURCE => self.process_timer(event),
            CRON_SOURCE => {
                let rule = event.kind.clone();
                if self.rules.get(&rule).is_some_and(|r| r.schedule.is_some()) {
                    // Marked even for a disabled rule: the ticks it skipped are not missed.
                    self.ctx.borrow_mut().batch.changes.push(Change::CronMark {
                        rule: rule.clone(),
                        tick_ms: time_to_millis(event.time),
                    });
                    if self.runs(&rule)
                        && let Some(map) = event_map(event, None)
                    {
                        self.run_rule(&rule, event, map, None);
                    }
                }
            }
            _ => {
                self.satisfy_expectations(event);
                let qualified = event.qualified_type();
                let Woken {
                    rules: woken,
                    fields,
                } = self.woken(&qualified);
                if woken.is_empty() {
                    return;
                }
                let Some(map) = event_map(event, fields.as_deref()) else {
                    return;
                };
                // Each rule gets its own copy (a rule's changes to it stay its own); the last
                // gets the original.
                // Disabled or paused rules are not woken (their timers still fire).
                let woken: Vec<&String> = woken.iter().filter(|r| self.runs(r)).collect();
                let Some((last, others)) = woken.split_last() else {
                    return;
                };
                for rule in others {
                    self.run_rule(rule, event, map.clone(), None);
                }
                self.run_rule(last, event, map, None);
            }
        }
    }

    /// Forgets which rules each event type wakes (the rules changed).
    pub(super) fn clear_dispatch(&mut self) {
        self.dispatch.clear();
    }

    fn woken(&mut self, qualified: &str) -> Woken {
        if let Some(woken) = self.dispatch.get(qualified) {
            return woken.clone();
        }
        let matching: Vec<&Rule> = self
            .rules
            .values()
            .filter(|r| r.on.iter().any(|p| p.matches(qualified)))
            .collect();
        // The fields of `event` these rules read: all if one of them may read any.
        let mut fields = Some(HashSet::new());
        for rule in &matching {
            match (&mut fields, &rule.fields) {
                (Some(all), Some(its)) => all.extend(its.iter().cloned()),
                _ => fields = None,
            }
        }
        let woken = Woken {
            rules: matching.iter().map(|r| r.name.clone()).collect(),
            fields: fields.map(|f| Rc::new(dynamic::wanted_fields(f))),
        };
        // Senders of a json source choose its types: keep the table bounded.
        if self.dispatch.len() >= MAX_DISPATCH_TYPES {
            self.dispatch.clear();
        }
        self.dispatch.insert(qualified.to_owned(), woken.clone());
        woken
    }

    /// Runs a rule's body (or one of its functions) for an event; keeps its decisions if it
    /// succeeds, drops them and counts the error if it fails.
    pub(super) fn run_rule(
        &mut self,
        name: &str,
        event: &Event,
        map: Dynamic,
        callback: Option<(&str, Dynamic)>,
    ) {
        let Some(rule) = self.rules.get(name) else {
            return;
        };
        if let Verdict::SetAside(why) =
            self.careful
                .before_run(event.seq, name, &event.qualified_type())
        {
            let counters = self.counters.entry(name.to_owned()).or_default();
            counters.stored.runs += 1;
            counters.stored.errors += 1;
            counters.stored.last_error = Some(why);
            counters.dirty = true;
            return;
        }
        // Tests kill the engine here for one rule and type of event (`engine.run.RULE.TYPE`).
        gancho_core::fail_point!(dyn format!("engine.run.{name}.{}", event.qualified_type()));
        self.ctx.borrow_mut().run = Some(Run {
            rule: name.to_owned(),
            seq: event.seq,
            time_ms: time_to_millis(event.time),
            received_ms: time_to_millis(event.received),
            now_ms: time_to_millis(self.clock.now()),
            position: 0,
            serial: 0,
            queries: 0,
            callbacks: Rc::clone(&rule.callbacks),
            constants: Rc::clone(&rule.constants),
            pending: Pending::default(),
            traced: Vec::new(),
            started: Instant::now(),
        });
        let mut scope = Scope::new();
        scope.push_constant_dynamic("event", map);
        // A panic in a host function or in rhai (a bug) fails this run, not the engine.
        let rhai = &self.rhai;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match callback {
            None => rhai.run_ast_with_scope(&mut scope, &rule.ast),
            Some((function, argument)) => rhai
                .call_fn_with_options::<Dynamic>(
                    CallFnOptions::new().eval_ast(false),
                    &mut scope,
                    &rule.ast,
                    function,
                    (argument,),
                )
                .map(drop),
        }))
        .unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(format!("internal error (a bug in gancho): {what}").into())
        });
        self.careful.after_run();
        let mut run = self.ctx.borrow_mut().run.take();
        let took = run.as_ref().map_or(Duration::ZERO, |r| r.started.elapsed());
        let mut trace = gancho_state::traces::RunTrace {
            seq: event.seq,
            rule: name.to_owned(),
            error: None,
            actions: Vec::new(),
            queries: run
                .as_mut()
                .map(|r| std::mem::take(&mut r.traced))
                .unwrap_or_default(),
            changes: Vec::new(),
            rerun: false,
            timer: None,
        };
        if let (Some(run), true) = (&run, result.is_ok()) {
            for change in &run.pending.changes {
                match change {
                    Change::PutAction(action) => trace.actions.push(action.id.clone()),
                    Change::PutState { key, .. } => trace.changes.push(format!("set state {key}")),
                    Change::DeleteState { key, .. } => {
                        trace.changes.push(format!("cleared state {key}"))
                    }
                    Change::PutTimer(t) => trace
                        .changes
                        .push(format!("set timer {} due {}", t.name, t.due_ms)),
                    Change::DeleteTimer(t) => {
                        trace.changes.push(format!("removed timer {}", t.name))
                    }
                    _ => {}
                }
            }
        }
        let counters = self.counters.entry(name.to_owned()).or_default();
        let pause = counters.record(name, result.is_err(), took);
        match result {
            Ok(()) => {
                if let Some(run) = run {
                    counters.stored.actions += run.pending.actions as u64;
                    self.ctx.borrow_mut().batch.merge(run.pending);
                }
            }
            Err(error) => {
                let error = match *error {
                    // Stopped by the engine (`Limits::max_run_time`): say why, not only that.
                    rhai::EvalAltResult::ErrorTerminated(ref why, pos) => {
                        format!("stopped: {why} ({pos})")
                    }
                    ref other => other.to_string(),
                };
                let message = format!("{}: event {}: {error}", rule.path.display(), event.seq);
                let quiet = counters
                    .logged_at
                    .is_some_and(|at| at.elapsed() < Duration::from_secs(10));
                if !quiet {
                    warn!(rule = name, seq = event.seq, "rule failed: {message}");
                    counters.logged_at = Some(Instant::now());
                }
                trace.error = Some(message.clone());
                counters.stored.last_error = Some(message);
            }
        }
        self.traces.received_ms = self.traces.received_ms.max(time_to_millis(event.received));
        self.traces.runs.push(trace);
        if let Some(why) = pause
            && self.runs(name)
        {
            self.pause(name, why);
        }
    }
}

/// The rules an event type wakes, and the fields of `event` they read (`None`: any).
#[derive(Debug, Clone)]
struct Woken {
    rules: Rc<[String]>,
    fields: Option<Rc<HashSet<String>>>,
}

/// The map rules see as `event`, built once per event.
pub(super) fn event_map(event: &Event, wanted: Option<&HashSet<String>>) -> Option<Dynamic> {
    match dynamic::event_map(event, wanted) {
        Ok(map) => Some(Dynamic::from_map(map)),
        Err(err) => {
            warn!(seq = event.seq, error = %err, "event payload is not JSON: skipped");
            None
        }
    }
}
