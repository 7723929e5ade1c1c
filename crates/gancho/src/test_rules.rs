//! `gancho test`: rules run over events from a file, before they go live. A temporary store
//! and a virtual clock; no daemon, no data folder touched, nothing sent. The clock jumps to
//! each event's arrival (its `received`, else its event time), firing on the way, in time
//! order, the timers, expectations and cron ticks that fall due; then on to `--until`.
//! Each decided action is printed as a JSON line; `--expect` compares them with a file of
//! such lines (fields left out are not compared).

use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use gancho_core::{Action, ManualClock, time_to_millis};
use gancho_store::{StoreConfig, Submission};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::Config;
use crate::data::Data;

/// One line of `--events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventLine {
    source: String,
    /// The body the provider posts: an object, or an array of them.
    payload: Box<serde_json::value::RawValue>,
    received: Option<DateTime<Utc>>,
}

/// What `gancho test` is given.
#[derive(Debug)]
pub struct TestRun {
    pub rules: Vec<PathBuf>,
    pub events: PathBuf,
    pub expect: Option<PathBuf>,
    /// An RFC 3339 time, or `+DURATION` after the last event.
    pub until: Option<String>,
}

/// Waits for the engine to be done with what is due now, at most this long.
const IDLE: Duration = Duration::from_secs(30);

/// Runs the test; true when it passed (no rule error, and the actions expected, if any).
pub fn run(config: &Config, test: &TestRun) -> anyhow::Result<bool> {
    let batches = read_events(config, &test.events)?;
    // With no event at all, the clock starts now (only `--until` then moves it).
    let first = batches.first().map_or_else(
        || gancho_core::Clock::now(&gancho_core::SystemClock),
        |(at, _)| *at,
    );
    let Some(mut harness) = Harness::new(config, &test.rules, first, Vec::new())? else {
        return Ok(false);
    };
    let mut last = first;
    for (at, submission) in batches {
        last = harness.feed(at, submission)?;
    }
    if let Some(until) = &test.until {
        let until = parse_until(until, last)?;
        harness.advance_to(until)?;
    }
    let out = std::io::stdout();
    let mut out = out.lock();
    for line in &harness.decided {
        writeln!(out, "{line}")?;
    }
    let mut passed = !harness.failed;
    if let Some(expect) = &test.expect {
        let expected = read_lines(expect)?;
        if let Some(diff) = compare(&expected, &harness.decided) {
            eprintln!("the actions decided are not those expected:\n{diff}");
            passed = false;
        }
    }
    harness.close()?;
    Ok(passed)
}

fn clock_now(clock: &ManualClock) -> DateTime<Utc> {
    gancho_core::Clock::now(clock)
}

/// Rules run on a temporary store with a virtual clock, sending nothing: what `gancho test`
/// and `gancho replay` feed events to. Each action decided is noted as a JSON line
/// (`{"at", "rule", "channel", "action"}`).
pub(crate) struct Harness {
    /// Holds the temporary folder until the harness is dropped.
    _dir: tempfile::TempDir,
    data: Data,
    clock: Arc<ManualClock>,
    engine: gancho_engine::Engine,
    /// Action ids noted already.
    seen: std::collections::HashSet<String>,
    pub(crate) decided: Vec<Value>,
    /// Errors counted per rule so far.
    errors: std::collections::HashMap<String, u64>,
    /// A rule failed on an event.
    pub(crate) failed: bool,
}

impl Harness {
    /// Copies the rules into a temporary folder and loads them, on a temporary store holding
    /// `history` (events queries see but the rules are not run on), with the clock at
    /// `start`. `None` when a rule does not compile (its error printed).
    pub(crate) fn new(
        config: &Config,
        rules: &[PathBuf],
        start: DateTime<Utc>,
        history: Vec<gancho_core::NewEvent>,
    ) -> anyhow::Result<Option<Harness>> {
        let dir = tempfile::Builder::new()
            .prefix("gancho-test-")
            .tempdir()
            .context("making a temporary folder")?;
        let rules_dir = dir.path().join("rules");
        std::fs::create_dir_all(&rules_dir)?;
        for rule in rules {
            let name = rule
                .file_name()
                .with_context(|| format!("{} is not a file", rule.display()))?;
            std::fs::copy(rule, rules_dir.join(name))
                .with_context(|| format!("reading {}", rule.display()))?;
        }
        let clock = Arc::new(ManualClock::new(start));
        let store_config = StoreConfig {
            fsync: false,
            retention: None,
            quarantine_retention: None,
            ..StoreConfig::default()
        };
        let data = Data::open(&dir.path().join("store"), &store_config)
            .context("opening the temporary store")?;
        if !history.is_empty() {
            let mut history = history.into_iter().peekable();
            while history.peek().is_some() {
                let events: Vec<_> = history.by_ref().take(1000).collect();
                data.store
                    .appender()
                    .append_blocking(Submission {
                        events,
                        rejected: Vec::new(),
                    })
                    .context("storing the history")?;
            }
            // The rules start after it.
            data.state.commit(Vec::new(), data.store.status().durable)?;
        }
        let mut engine_config = config.engine();
        engine_config.rules_dir = rules_dir;
        engine_config.retention_ms = None;
        let engine = gancho_engine::Engine::new(
            data.store.clone(),
            data.state.clone(),
            clock.clone(),
            engine_config,
        )
        .context("loading the rules")?;
        let mut broken = false;
        for rule in engine.status().rules {
            if let Some(diag) = rule.error {
                eprintln!("error  {diag}");
                broken = true;
            }
        }
        if broken {
            data.shutdown()?;
            return Ok(None);
        }
        Ok(Some(Harness {
            _dir: dir,
            data,
            clock,
            engine,
            seen: Default::default(),
            decided: Vec::new(),
            errors: Default::default(),
            failed: false,
        }))
    }

    /// Moves the clock to `at` (firing what falls due on the way), stores the events and
    /// runs the rules on them; returns the clock's time.
    pub(crate) fn feed(
        &mut self,
        at: DateTime<Utc>,
        submission: Submission,
    ) -> anyhow::Result<DateTime<Utc>> {
        let at = at.max(clock_now(&self.clock));
        self.advance_to(at)?;
        self.data
            .store
            .appender()
            .append_blocking(submission)
            .context("storing an event")?;
        self.settle()?;
        Ok(at)
    }

    pub(crate) fn close(self) -> anyhow::Result<()> {
        self.data.shutdown()?;
        Ok(())
    }

    /// Moves the clock to `to`, through each due time on the way (timers, expectations, cron
    /// ticks), processing what each brings.
    pub(crate) fn advance_to(&mut self, to: DateTime<Utc>) -> anyhow::Result<()> {
        let to_ms = time_to_millis(to);
        loop {
            self.settle()?;
            let now_ms = time_to_millis(clock_now(&self.clock));
            match self.engine.next_due_ms()? {
                Some(due) if due <= to_ms && due > now_ms => {
                    let due = DateTime::from_timestamp_millis(due).unwrap_or(to);
                    self.clock.set(due);
                }
                _ => break,
            }
        }
        if to > clock_now(&self.clock) {
            self.clock.set(to);
        }
        self.settle()
    }

    /// Runs the engine until nothing is due now, and takes note of what it decided.
    fn settle(&mut self) -> anyhow::Result<()> {
        self.engine.run_until_idle(IDLE)?;
        self.engine.commit_cursor()?;
        let at = clock_now(&self.clock).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        for item in self.data.state.outbox().pending_actions(0)? {
            if !self.seen.insert(item.action.id.clone()) {
                continue;
            }
            let (channel, action) = match &item.action.action {
                Action::Email(e) => ("email", serde_json::to_value(e)?),
                Action::Sms(s) => ("sms", serde_json::to_value(s)?),
                Action::Http(h) => ("http", serde_json::to_value(h)?),
            };
            self.decided.push(json!({
                "at": at, "rule": item.action.rule, "channel": channel, "action": action,
            }));
            // Noted: out of the outbox, so that each settle reads only the new ones.
            let now_ms = time_to_millis(clock_now(&self.clock));
            self.data
                .state
                .outbox()
                .action_delivered(&item, now_ms, "noted by the test")?;
        }
        for rule in self.engine.status().rules {
            let before = self
                .errors
                .insert(rule.name.clone(), rule.errors)
                .unwrap_or(0);
            if rule.errors > before {
                self.failed = true;
                eprintln!(
                    "error  {}",
                    rule.last_error.unwrap_or_else(|| rule.name.clone())
                );
            }
        }
        Ok(())
    }
}

/// The events of the file, each line's as one submission, with the time the clock moves to
/// for it.
fn read_events(config: &Config, path: &Path) -> anyhow::Result<Vec<(DateTime<Utc>, Submission)>> {
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let at = |what: String| anyhow::anyhow!("{}:{}: {what}", path.display(), i + 1);
        let event: EventLine = serde_json::from_str(&line).map_err(|e| at(e.to_string()))?;
        let source = config
            .ingress
            .sources
            .iter()
            .find(|s| s.name == event.source)
            .ok_or_else(|| at(format!("no source {:?} in the config", event.source)))?;
        let placeholder = DateTime::<Utc>::UNIX_EPOCH;
        let received = event.received.unwrap_or(placeholder);
        // Without a receipt time the event's own time stands for it: no future to bound.
        let time = gancho_ingress::TimePolicy {
            max_future: match event.received {
                Some(_) => source.time.max_future,
                None => std::time::Duration::MAX,
            },
            ..source.time
        };
        let mut submission = gancho_ingress::submission_from(
            &source.name,
            &source.kind,
            &time,
            event.payload.get(),
            received,
        )
        .map_err(|e| at(e.to_string()))?;
        if let Some(rejected) = submission.rejected.first() {
            return Err(at(format!("not an event: {}", rejected.reason)));
        }
        let Some(first) = submission.events.first() else {
            continue;
        };
        // Without `received`, an event arrives at its own time.
        let arrives = event.received.unwrap_or(first.time);
        for e in &mut submission.events {
            e.received = event.received.unwrap_or(e.time);
        }
        out.push((arrives, submission));
    }
    Ok(out)
}

fn parse_until(text: &str, last: DateTime<Utc>) -> anyhow::Result<DateTime<Utc>> {
    if let Some(after) = text.strip_prefix('+') {
        let d = humantime::parse_duration(after).with_context(|| format!("--until {text}"))?;
        let d = chrono::Duration::from_std(d).context("--until: too long")?;
        return last.checked_add_signed(d).context("--until: too far");
    }
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .with_context(|| format!("--until {text}: an RFC 3339 time or +DURATION"))
}

fn read_lines(path: &Path) -> anyhow::Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}:{}: not JSON", path.display(), i + 1))
        })
        .collect()
}

/// Whether `actual` has every field `expected` has, with the same value (objects compared
/// field by field, recursively; anything else whole).
fn covers(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => e
            .iter()
            .all(|(k, v)| a.get(k).is_some_and(|av| covers(v, av))),
        _ => expected == actual,
    }
}

/// A readable diff when the actions decided are not those expected, in order.
fn compare(expected: &[Value], actual: &[Value]) -> Option<String> {
    let mut diff = String::new();
    for i in 0..expected.len().max(actual.len()) {
        match (expected.get(i), actual.get(i)) {
            (Some(e), Some(a)) if covers(e, a) => {}
            (e, a) => {
                diff.push_str(&format!("action {}:\n", i + 1));
                if let Some(e) = e {
                    diff.push_str(&format!("  - expected {e}\n"));
                }
                if let Some(a) = a {
                    diff.push_str(&format!("  + decided  {a}\n"));
                }
            }
        }
    }
    (!diff.is_empty()).then_some(diff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_fields_are_compared_and_the_rest_ignored() {
        let actual = json!({"at": "t", "rule": "r", "action": {"to": "a", "text": "hi"}});
        assert!(covers(
            &json!({"rule": "r", "action": {"to": "a"}}),
            &actual
        ));
        assert!(!covers(&json!({"action": {"to": "b"}}), &actual));
        assert!(compare(&[json!({"rule": "r"})], std::slice::from_ref(&actual)).is_none());
        let diff = compare(&[], &[actual]).unwrap_or_default();
        assert!(diff.contains("+ decided"), "{diff}");
    }

    #[test]
    fn until_is_a_time_or_a_duration_after_the_last_event() {
        let last = DateTime::parse_from_rfc3339("2026-11-30T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            parse_until("+25h", last).unwrap().to_rfc3339(),
            "2026-12-01T11:00:00+00:00"
        );
        assert_eq!(
            parse_until("2026-12-24T00:00:00Z", last)
                .unwrap()
                .to_rfc3339(),
            "2026-12-24T00:00:00+00:00"
        );
        assert!(parse_until("tomorrow", last).is_err());
    }
}
